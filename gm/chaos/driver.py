"""A train stage whose driver is SIGKILLed: mid-training, and between registering a version and promoting it.

What must hold after the next attempt: it continues from the latest checkpoints (not from step 0),
registers exactly one version per seed (none twice, none half-tagged), every version carries its
champion decision, the champion is a registered version, no run is left RUNNING (the killed
attempts' runs are marked KILLED), and each seed's curve is complete in MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

from gm.chaos import (GAN_RING8, Row, kill_when, metric_points_lost, recorded_step, registry_faults, run_stage,
                      runs, scenario, settled, stage_cmd, stage_env, tiny_params, versions, workspace)
from gm.core.faults import ENV as FAILPOINT
from gm.core.layout import Layout

EXPERIMENT = "gan-driver"
DATASET = "ring8d"  # a dataset name of its own: the registered model (gm-gan-ring8d) is this scenario's alone
MODEL = f"gm-gan-{DATASET}"
SEEDS = (0, 1)


def latest_steps(root: Path) -> dict[int, int]:
    """Each seed's latest checkpoint step as its run records it (0 when none; see `recorded_step`)."""
    return {seed: recorded_step(Layout(root).ray_storage, f"train-{EXPERIMENT}-seed{seed}") for seed in SEEDS}


def resumed_from(root: Path) -> dict[int, int]:
    """Where each seed's first resumed attempt started: the first `resumed_from_step` in its curve."""
    history = json.loads(Layout(root).train(EXPERIMENT).history.read_text())
    out = {}
    for h in history:
        if h.get("resumed_from_step") is not None and int(h["seed"]) not in out:
            out[int(h["seed"])] = int(h["resumed_from_step"])
    return out


@scenario("driver")
def driver_killed(workdir: Path, uri: str | None = None) -> list[Row]:
    """Kill the train stage's driver mid-training (SIGKILL of its process group, Ray included); kill the next
    attempt as soon as it has created its first model version, before that version's champion decision
    (fail point register:version-created); let the third attempt finish."""
    params = tiny_params({EXPERIMENT: {**GAN_RING8, "dataset": DATASET,
                                       "train": {"steps": 900, "eval_every": 50, "seeds": len(SEEDS)}}},
                         datasets={DATASET: {"source": "ring8", "n": 3000}})
    root = workspace(Path(workdir) / "ws", params)
    store = uri or f"sqlite:///{root / 'mlflow.db'}"
    env = stage_env(root, **({"MLFLOW_TRACKING_URI": uri} if uri else {}))
    cmd = stage_cmd("train", EXPERIMENT)

    # 1. mid-training: each seed has two checkpoints, far from its last step
    kill_when(cmd, root, env, lambda: min(latest_steps(root).values()) >= 100, 300, "two checkpoints of each seed")
    first_seen = latest_steps(root)
    at_kill = settled(lambda: latest_steps(root))  # the workers outlive their driver by a second or so
    # 2. the next attempt resumes, finishes training, and dies right after creating its first version
    second = run_stage(root, "train", EXPERIMENT, env={**env, FAILPOINT: "register:version-created"})
    half = versions(store, MODEL)
    undecided_at_kill = sum("gm.champion_decision" not in v.tags for v in half)
    # 3. the next attempt runs to its end
    r = run_stage(root, "train", EXPERIMENT, env=env)
    finished = r.returncode == 0
    resumed = resumed_from(root) if finished else {}
    lost, duplicated, problems = registry_faults(store, MODEL, {s: 1 for s in SEEDS})
    ours = [x for x in runs(store, "gm-chaos") if x.data.tags.get("gm.experiment") == EXPERIMENT]
    running = sum(x.info.status == "RUNNING" for x in ours)
    killed = sum(x.info.status == "KILLED" for x in ours)
    if running:
        problems.append(f"{running} runs left RUNNING")
    if second.returncode != -9:
        problems.append(f"the fail point did not kill the second attempt (exit {second.returncode})")
    points = metric_points_lost(store, root, EXPERIMENT) if finished else 0
    steps_lost = sum(max(0, at_kill[s] - resumed.get(s, 0)) for s in SEEDS) if finished else 0
    error = "" if finished else f"; rerun failed: {r.stderr.strip().splitlines()[-1:]}"
    return [
        Row("train driver SIGKILLed mid-training",
            f"killed at checkpoints {first_seen} (recorded by the time its workers died: {at_kill}); the next "
            f"attempt resumed from {resumed or '?'}" + error,
            survived=finished and all(resumed.get(s, -1) >= at_kill[s] for s in SEEDS),
            steps_lost=steps_lost, details={"at_kill": at_kill, "resumed": resumed}),
        Row("train driver SIGKILLed between registering a version and promoting it",
            f"killed with {len(half)} version(s), {undecided_at_kill} undecided; the rerun left "
            f"{len(versions(store, MODEL))} versions for {len(SEEDS)} seeds, every one decided; {killed} runs "
            f"marked KILLED, {running} RUNNING" + (f"; {'; '.join(problems)}" if problems else "") + error,
            survived=finished and not problems, lost=lost + points, duplicated=duplicated,
            details={"versions_at_kill": len(half), "undecided_at_kill": undecided_at_kill, "killed_runs": killed,
                     "metric_points_lost": points}),
    ]
