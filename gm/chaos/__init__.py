"""Faults injected into real runs, and what each cost: `make chaos` (python -m gm.chaos).

Every scenario builds a workspace of its own (a copy of this checkout with a tiny params.yaml and
its prepared data), runs real stages in their own processes against real Ray, MLflow and files,
injects one fault, and returns Rows: the fault, what happened, and what was lost or duplicated.
The tests run the same scenarios and assert on the same rows (tests/test_chaos*.py).

    python -m gm.chaos                 # every scenario, then the table
    python -m gm.chaos corrupt node    # the scenarios whose names start with these words
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from gm.core.layout import Layout
from gm.data.bootstrap import materialise_default_data
from gm.params import parse_params
from gm.profiles import copy_checkout
from gm.stages.prepare import prepare as prepare_dataset
from gm.training.driver import latest_checkpoint


@dataclass
class Row:
    """One injected fault and its outcome, as `make chaos` prints it."""

    fault: str
    happened: str  # one line: how the pipeline reacted (the error it printed, where it resumed)
    survived: bool  # finished, or stopped with a clear error, with nothing written before it lost
    # optimizer steps that a checkpoint held before the fault and that were trained again after it (the
    # steps after the last checkpoint are always redone: at most train.eval_every, named in `happened`)
    steps_lost: int = 0
    lost: int = 0  # runs, registered versions or metric points that should exist and do not
    duplicated: int = 0  # runs or registered versions written twice
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return self.survived and self.lost == 0 and self.duplicated == 0


# ------------------------------------------------------------------------------ workspaces


def tiny_params(experiments: dict, datasets: dict | None = None, **sections) -> dict:
    """A params.yaml for seconds-long stages: ring8 points, a 1-worker local Ray, an sqlite store."""
    params = {
        "ray": {"address": "local", "num_cpus": 2},
        "mlflow": {"experiment": "gm-chaos"},
        "data": {"seed": 0, "val_fraction": 0.1, "test_fraction": 0.2,
                 "datasets": datasets or {"ring8": {"source": "ring8", "n": 3000}}},
        "train": {"steps": 60, "batch_size": 64, "eval_every": 30, "val_samples": 300,
                  "scaling": {"num_workers": 1}},
        "experiments": experiments,
        "tune": {"sweeps": {}},
        "evaluate": {"n_samples": 500, "iwae_k": 16, "baseline_seeds": 1, "kid_subsets": 10,
                     "kid_subset_size": 200},
    }
    params.update(sections)
    return params


GAN_RING8 = {"family": "gan", "dataset": "ring8", "model": {"z_dim": 2, "hidden": 32, "depth": 2}}


def workspace(dest: Path, params: dict, prepare: bool = True) -> Path:
    """A copy of this checkout's tracked files in `dest` with `params` as its params.yaml, its raw data,
    and (when `prepare`) every dataset of the params prepared, as `dvc repro` would have left them."""
    root = copy_checkout(CHECKOUT, Path(dest))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    materialise_default_data(root)
    if prepare:
        parsed = parse_params(params, root / "params.yaml")
        for name, src in parsed.datasets.items():
            prepare_dataset(name, src, root, Layout(root).prepared_root, parsed.data_seed, parsed.val_fraction,
                            parsed.test_fraction)
    return root


CHECKOUT = Path(__file__).resolve().parents[2]  # the checkout holding this gm package


def stage_env(root: Path, **extra: str) -> dict:
    """The environment of a stage process run in workspace `root`: this interpreter's tools first on PATH,
    GM_ROOT, and none of this process's MLflow or Ray pointers (a scenario names its own in `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "GM_SHARED_RAY"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["GM_ROOT"] = str(root)
    env.update(extra)
    return env


def stage_cmd(stage: str, *args: str) -> list[str]:
    """The command of a pipeline stage, as dvc.yaml runs it: python -m pipelines.<stage> <args>."""
    return [sys.executable, "-m", f"pipelines.{stage}", *args]


def run_stage(root: Path, stage: str, *args: str, env: dict | None = None, timeout: float = 600,
              prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run a stage to its end in workspace `root` (optionally under a `prefix` such as `ip netns exec h0`)."""
    # a session of its own: a fail point that kills the stage takes the Ray it started with it
    return subprocess.run((prefix or []) + stage_cmd(stage, *args), cwd=root, env=env or stage_env(root),
                          capture_output=True, text=True, timeout=timeout, start_new_session=True)


def kill_when(cmd: list[str], cwd: Path, env: dict, ready: Callable[[], bool], timeout: float,
              waiting_for: str) -> None:
    """Start `cmd` in its own session, wait (bounded) until `ready()`, then SIGKILL its whole process group
    (a stage's driver and the Ray it started, at once), as a killed `dvc repro` would leave things."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd)} ended (exit {proc.returncode}) before {waiting_for}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {waiting_for} within {timeout:.0f} s of {' '.join(cmd)}")
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def checkpoints(run: Path) -> list[Path]:
    """A Ray Train run folder's checkpoints, oldest first."""
    return sorted(p for p in run.glob("checkpoint_*") if p.is_dir()) if run.is_dir() else []


def recorded_step(storage: Path, run: str) -> int:
    """The step of a Train run's latest checkpoint as the run records it (Ray Train's snapshot: what a
    resumed run starts from), 0 when it has none. A checkpoint folder the snapshot does not name (uploaded
    by a worker as its driver died, never recorded) is not one: no run resumes from it."""
    try:
        latest = latest_checkpoint(str(storage), run)
    except (ValueError, OSError):  # the snapshot is being rewritten this instant
        return 0
    return int(Path(latest).name.split("_")[1]) if latest else 0  # the loop names them checkpoint_<step>


def settled(read: Callable, quiet: float = 3.0, timeout: float = 60.0):
    """`read()` once it has returned the same value for `quiet` seconds (bounded by `timeout`): what a killed
    stage's workers, which outlive their driver by a second or two, have left behind."""
    value, since, deadline = read(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def last_line(text: str) -> str:
    """The last non-empty line of a process's output (where a stage prints `error: ...`)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------ what a store holds


def client(uri: str):
    """An MLflow client of store `uri` (a workspace's sqlite:///.../mlflow.db, a server's http://...)."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def versions(uri: str, name: str) -> list:
    """Every registered version of model `name` in store `uri` (none when the model does not exist)."""
    return list(client(uri).search_model_versions(f"name = '{name}'"))


def champion_version(uri: str, name: str) -> str | None:
    """The version the `champion` alias of `name` points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client(uri).get_model_version_by_alias(name, "champion").version
    except MlflowException:
        return None


def runs(uri: str, experiment: str) -> list:
    """Every run (any status) of MLflow experiment `experiment` in store `uri`."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    return list(c.search_runs([exp.experiment_id], max_results=5000)) if exp is not None else []


def registry_faults(uri: str, name: str, seeds: dict[int, int]) -> tuple[int, int, list[str]]:
    """(lost, duplicated, problems) of registered model `name` when `seeds` maps each seed to the number of
    versions it should have: versions missing or doubled per seed (gm.seed tag), a version without its
    champion decision, a champion alias that points at no version."""
    got = versions(uri, name)
    lost = duplicated = 0
    problems = []
    for seed, want in seeds.items():
        have = sum(v.tags.get("gm.seed") == str(seed) for v in got)
        lost += max(0, want - have)
        duplicated += max(0, have - want)
    undecided = [v.version for v in got if "gm.champion_decision" not in v.tags]
    if undecided:
        problems.append(f"versions {', '.join(undecided)} without a champion decision")
    champ = champion_version(uri, name)
    if got and (champ is None or champ not in {v.version for v in got}):
        problems.append(f"champion points at {champ}, not at a registered version")
    return lost, duplicated, problems


def metric_points_lost(uri: str, root: Path, name: str) -> int:
    """Points of a finished train stage's curves (val_score per step and seed, its history.json) that the
    store lacks."""
    history = json.loads(Layout(root).train(name).history.read_text())
    c = client(uri)
    lost = 0
    for seed in sorted({h["seed"] for h in history}):
        seed_runs = [r for r in runs(uri, "gm-chaos") if r.data.tags.get("gm.experiment") == name
                     and r.data.tags.get("gm.seed") == str(seed) and r.info.status == "FINISHED"
                     and r.data.tags.get("gm.workspace", "").endswith(str(root.resolve()))]
        want = {int(h["step"]) for h in history if h["seed"] == seed and h.get("val_score") is not None}
        have = {m.step for r in seed_runs for m in c.get_metric_history(r.info.run_id, "val_score")}
        lost += len(want - have)
    return lost


# ------------------------------------------------------------------------------ the table


SCENARIOS: dict[str, Callable[[Path], list[Row]]] = {}


def scenario(name: str):
    """Register a scenario: fn(workdir) -> rows (each scenario gets a fresh folder of its own)."""

    def decorate(fn):
        SCENARIOS[name] = fn
        return fn

    return decorate


def table(rows: list[Row]) -> str:
    head = ("fault", "what happened", "steps lost", "lost", "duplicated", "survived", "s")
    body = [(r.fault, r.happened, str(r.steps_lost), str(r.lost), str(r.duplicated),
             "yes" if r.clean else "NO", f"{r.seconds:.0f}") for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
    return "\n".join(lines)
