"""The team's tracking server failing under the pipeline, and two clones writing to it at once.

Each scenario runs against a real PostgreSQL and `mlflow server` (gm.server), its own unless given one:
    server: down when a train stage starts; SIGKILLed while one trains (the stage fails in one line after
            a bounded retry, the rerun resumes and registers once, the dead attempt's runs are reaped)
    clones: two clones' train stages on one server at the same moment (no lost metric points, one
            version per seed, every champion decision recorded, the champion the best of all)
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

from gm.chaos import (GAN_RING8, Row, checkpoints, client, last_line, metric_points_lost, registry_faults, run_stage,
                      runs, scenario, stage_cmd, stage_env, tiny_params, versions, workspace)
from gm.core.layout import Layout
from gm.server import Team, start_team
from gm.training.cluster import free_ports


def start_server(workdir: Path) -> Team:
    """A PostgreSQL and an MLflow server of their own, on free loopback ports, state in workdir/server."""
    port, pg_port = free_ports(2)
    return start_team(Path(workdir) / "server", port=port, pg_port=pg_port, throwaway=True)


def one_error_line(stderr: str) -> bool:
    """A stage's failure as the user sees it: one `error: ` line and no traceback."""
    return "Traceback" not in stderr and sum(line.startswith("error: ") for line in stderr.splitlines()) == 1


def experiment_params(name: str, dataset: str, seed: int = 0, seeds: int = 1, steps: int = 300) -> dict:
    return tiny_params({name: {**GAN_RING8, "dataset": dataset,
                               "train": {"steps": steps, "eval_every": 50, "seed": seed, "seeds": seeds}}},
                       datasets={dataset: {"source": "ring8", "n": 3000}})


def down_at_start(workdir: Path, team: Team) -> Row:
    """The server is stopped; a train stage starts: one line naming the server, nothing trained or written."""
    name, dataset = "gan-down", "ring8s"
    root = workspace(Path(workdir) / "down", experiment_params(name, dataset))
    uri = team.server.uri
    team.server.stop()
    try:
        t0 = time.perf_counter()
        r = run_stage(root, "train", name, env=stage_env(root, MLFLOW_TRACKING_URI=uri), timeout=300)
        seconds = time.perf_counter() - t0
    finally:
        team.server.start()
    trained = (Layout(root).ray_storage).exists()
    registered = len(versions(uri, f"gm-gan-{dataset}"))
    line = last_line(r.stderr)
    ok = (r.returncode == 2 and one_error_line(r.stderr) and "is not answering" in line and not trained
          and registered == 0)
    return Row("tracking server down when a stage starts", f"{line[:150]} (exit {r.returncode} after {seconds:.0f} s"
               f"{'; Ray had started training' if trained else ''})", survived=ok, seconds=seconds,
               details={"exit": r.returncode, "stderr": r.stderr[-2000:]})


def stops_mid_stage(workdir: Path, team: Team) -> Row:
    """The server is SIGKILLed while a train stage trains: the stage ends in one line after its bounded
    retries; with the server back, the rerun resumes the finished runs (no step trained twice), registers
    one version per seed, and marks the dead attempt's runs KILLED."""
    name, dataset = "gan-mid", "ring8m"
    seeds = (0, 1)
    root = workspace(Path(workdir) / "mid", experiment_params(name, dataset, seeds=len(seeds), steps=600))
    uri = team.server.uri
    env = stage_env(root, MLFLOW_TRACKING_URI=uri)
    storage = Layout(root).ray_storage
    proc = subprocess.Popen(stage_cmd("train", name), cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not all(checkpoints(storage / f"train-{name}-seed{s}") for s in seeds):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            return Row("tracking server killed mid-stage", f"the stage never checkpointed: {last_line(err)}",
                       survived=False)
        time.sleep(0.2)
    team.server.kill()
    t_kill = time.perf_counter()
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    waited = time.perf_counter() - t_kill
    team.server.start()
    first_line_ok = proc.returncode == 2 and one_error_line(err) and "stopped answering" in last_line(err)
    done_before = {s: int(checkpoints(storage / f"train-{name}-seed{s}")[-1].name.split("_")[1]) for s in seeds}
    r = run_stage(root, "train", name, env=env)
    finished = r.returncode == 0
    per_seed = json.loads(Layout(root).train(name).metrics.read_text())["per_seed"] if finished else {}
    steps_lost = sum(max(0, done_before[s] - int(per_seed[str(s)]["resumed_from_step"])) for s in seeds) \
        if finished else 0
    lost, duplicated, problems = registry_faults(uri, f"gm-gan-{dataset}", {s: 1 for s in seeds})
    ours = [x for x in runs(uri, "gm-chaos") if x.data.tags.get("gm.experiment") == name]
    running = sum(x.info.status == "RUNNING" for x in ours)
    killed = sum(x.info.status == "KILLED" for x in ours)
    if running:
        problems.append(f"{running} runs left RUNNING")
    if not first_line_ok:
        problems.append(f"the stage did not end in one line (exit {proc.returncode}): {last_line(err)[:200]}")
    points = metric_points_lost(uri, root, name) if finished else 0
    happened = (f"{last_line(err)[:110]}... ({waited:.0f} s after the kill); rerun "
                + (f"resumed at steps {[per_seed[str(s)]['resumed_from_step'] for s in seeds]}, "
                   f"{len(versions(uri, f'gm-gan-{dataset}'))} versions, {killed} runs marked KILLED"
                   if finished else f"failed: {last_line(r.stderr)}")
                + (f"; {'; '.join(problems)}" if problems else ""))
    return Row("tracking server killed mid-stage", happened, survived=finished and not problems,
               steps_lost=steps_lost, lost=lost + points, duplicated=duplicated,
               details={"first_stderr": err[-2000:], "rerun_stderr": r.stderr[-2000:], "waited": waited})


@scenario("server")
def server_faults(workdir: Path, team: Team | None = None) -> list[Row]:
    own = team is None
    team = team or start_server(workdir)
    try:
        return [down_at_start(workdir, team), stops_mid_stage(workdir, team)]
    finally:
        if own:
            team.stop()


@scenario("clones")
def two_clones(workdir: Path, team: Team | None = None) -> list[Row]:
    """Two clones train the same experiment (different seeds) against one server at the same moment."""
    own = team is None
    team = team or start_server(workdir)
    name, dataset = "gan-clones", "ring8c"
    model = f"gm-gan-{dataset}"
    try:
        roots = [workspace(Path(workdir) / f"clone{i}", experiment_params(name, dataset, seed=10 * i))
                 for i in range(2)]
        uri = team.server.uri
        procs = [subprocess.Popen(stage_cmd("train", name), cwd=root, env=stage_env(root, MLFLOW_TRACKING_URI=uri),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True) for root in roots]
        errors = []
        for p in procs:
            try:
                errors.append(p.communicate(timeout=600)[1])
            except subprocess.TimeoutExpired:
                p.kill()
                errors.append(p.communicate()[1])
        ok = all(p.returncode == 0 for p in procs)
        lost, duplicated, problems = registry_faults(uri, model, {0: 1, 10: 1})
        points = sum(metric_points_lost(uri, root, name) for root in roots) if ok else 0
        got = versions(uri, model)
        scores = {v.version: float(v.tags.get("gm.val_score", "nan")) for v in got}
        finite = {v: s for v, s in scores.items() if math.isfinite(s)}
        best = min(finite, key=lambda v: (finite[v], int(v))) if finite else None
        champ = client(uri).get_model_version_by_alias(model, "champion").version if got else None
        if champ != best:
            problems.append(f"champion v{champ}, but the best validation score is v{best}'s")
        if not ok:
            problems += [f"clone {i} failed: {last_line(e)}" for i, (p, e) in enumerate(zip(procs, errors))
                         if p.returncode != 0]
        decisions = "; ".join(f"v{v.version} {v.tags.get('gm.champion_decision', 'undecided')}" for v in got)
        return [Row("two clones train and register on one server at once",
                    f"{len(got)} versions ({decisions}); champion v{champ}"
                    + (f"; {'; '.join(problems)}" if problems else ""),
                    survived=ok and not problems, lost=lost + points, duplicated=duplicated,
                    details={"scores": scores, "champion": champ})]
    finally:
        if own:
            team.stop()
