"""DVC's own habits: `dvc exp run -S <param>=<value>` of the pipeline, in place and queued (`--queue`, then
`dvc queue start`, which runs it in a temporary copy of the repository under .dvc/tmp/exps that DVC deletes
afterwards), `dvc exp show` listing each experiment's metrics beside its baseline, and MLflow runs and
registered versions that carry the DVC experiment's name and land in the repository's own store.

The integration part runs one tiny experiment (a VAE on a 2-D toy, one seed, 40 steps) in a copy of the
repository: a baseline `gm repro`, a value the params reject, an experiment in place, one queued.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from gm import tracking
from gm.core.layout import Layout
from tests.helpers import BIN, copy_repo, env_for, tiny_params, write_params

LAYOUT = Layout(Path())  # paths relative to a pipeline root
EXP = "vae-ring8"
BETA = f"experiments.{EXP}.model.beta"
TARGET = f"evaluate@{EXP}"  # prepare, featurize, train and evaluate of one experiment (no baselines or report)
IN_PLACE, QUEUED, BAD = "beta-2", "beta-half", "bad-beta"  # the DVC experiments' names
VALUES = {IN_PLACE: 2.0, QUEUED: 0.5}
SLOW = [pytest.mark.integration, pytest.mark.chaos]  # minutes: the slower tier (make test-chaos)


# --------------------------------------------------------------------------- where a stage's store is


def test_a_queued_experiments_copy_logs_to_the_repositorys_store(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    assert tracking.dvc_temp_parent(copy) == repo.resolve()
    assert tracking.dvc_temp_parent(copy / "artifacts") == repo.resolve()
    assert tracking.dvc_temp_parent(repo) is None
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tracking.MlflowParams()
    assert tracking.tracking_uri(params, copy) == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    assert tracking.tracking_uri(params, repo) == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    relative = tracking.MlflowParams(tracking_uri="sqlite:///stores/gm.db")
    assert tracking.tracking_uri(relative, copy) == f"sqlite:///{repo.resolve() / 'stores' / 'gm.db'}"


def test_in_a_queued_experiments_copy_the_root_is_the_copy_not_gm_root(tmp_path, monkeypatch):
    # the shell that ran `dvc queue start` may export GM_ROOT (the user's workspace): the copy's params win
    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    monkeypatch.setenv("GM_ROOT", str(repo))
    monkeypatch.chdir(copy)
    assert tracking.repo_root() == copy.resolve()
    monkeypatch.chdir(repo)
    other = tmp_path / "elsewhere"
    monkeypatch.setenv("GM_ROOT", str(other))
    assert tracking.repo_root() == other.resolve()  # outside DVC's copies GM_ROOT still names the root


def test_stage_runs_carry_the_dvc_experiments_name_and_baseline(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    plain = tracking.stage_tags("train", EXP, tmp_path, "ring8")
    assert "gm.dvc_experiment" not in plain and "gm.dvc_baseline_rev" not in plain
    monkeypatch.setenv("DVC_EXP_NAME", "beta-2")  # what `dvc exp run` hands every stage command
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    tags = tracking.stage_tags("train", EXP, tmp_path, "ring8")
    assert tags["gm.dvc_experiment"] == "beta-2" and tags["gm.dvc_baseline_rev"] == "a" * 40
    assert tags["gm.experiment"] == EXP


# --------------------------------------------------------------------------- dvc exp run, end to end


def exp_params() -> dict:
    return tiny_params(
        data={"seed": 0, "val_fraction": 0.1, "test_fraction": 0.2,
              "datasets": {"ring8": {"source": "ring8", "n": 2000}}},
        train={"steps": 40, "batch_size": 64, "eval_every": 20, "val_samples": 200, "seeds": 1,
               "scaling": {"num_workers": 1}},
        experiments={EXP: {"family": "vae", "dataset": "ring8",
                           "model": {"z_dim": 2, "hidden": 16, "depth": 1, "beta": 1.0}}},
        tune={"sweeps": {}},
        evaluate={"n_samples": 300, "iwae_k": 8, "baseline_seeds": 1},
    )


def tail(r) -> str:
    return f"{(r.stdout or '')[-3000:]}\n{(r.stderr or '')[-3000:]}"


def run(cmd: list[str], root: Path, timeout: float = 1200, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=root, env=env_for(root), capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{' '.join(cmd)} failed (exit {r.returncode}):\n{tail(r)}"
    return r


def dvc(root: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], root, **kw)


def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["git", "-c", "user.name=gm", "-c", "user.email=gm@localhost", *args], root)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A copy of the repository with the tiny experiment reproduced and committed: the DVC baseline."""
    root = copy_repo(tmp_path_factory.mktemp("dvc-exp") / "repo")
    write_params(root, exp_params())
    run([sys.executable, "-m", "gm.cli", "data", "init"], root)
    run([sys.executable, "-m", "gm.cli", "repro", TARGET], root)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "baseline")
    return root


@pytest.fixture(scope="module")
def in_place(workspace) -> subprocess.CompletedProcess:
    return dvc(workspace, "exp", "run", "-n", IN_PLACE, "-S", f"{BETA}={VALUES[IN_PLACE]}", TARGET)


def queue_state(root: Path, name: str) -> str | None:
    """The experiment's row of `dvc queue status`: Queued, Running, Success, Failed ... (None: not listed)."""
    for line in dvc(root, "queue", "status", timeout=120).stdout.splitlines():
        cells = line.split()
        if len(cells) >= 2 and cells[1] == name:
            return cells[-1]
    return None


@pytest.fixture(scope="module")
def queued(workspace, in_place) -> str:
    """Queued after the in-place experiment and run by `dvc queue start`'s worker; its final state."""
    dvc(workspace, "exp", "run", "--queue", "-n", QUEUED, "-S", f"{BETA}={VALUES[QUEUED]}", TARGET)
    # the worker is a daemon that inherits the command's stdout: a pipe would stay open until it exits
    with open(workspace.parent / "queue-start.log", "w") as log:
        subprocess.run([str(BIN / "dvc"), "queue", "start"], cwd=workspace, env=env_for(workspace),
                       stdout=log, stderr=subprocess.STDOUT, timeout=300, check=True)
    deadline = time.monotonic() + 1500  # a bound on the wait, not an assertion on the time it takes
    state = queue_state(workspace, QUEUED)
    while state in ("Queued", "Running") and time.monotonic() < deadline:
        time.sleep(5)
        state = queue_state(workspace, QUEUED)
    if state != "Success":
        logs = dvc(workspace, "queue", "logs", QUEUED, check=False)
        pytest.fail(f"queued experiment {QUEUED}: {state}\n{tail(logs)}", pytrace=False)
    return state


@pytest.fixture(scope="module")
def shown(workspace, in_place, queued) -> dict:
    """`dvc exp show --json`: the baseline commit's row and its experiments', by name."""
    rows = json.loads(dvc(workspace, "exp", "show", "--json", timeout=300).stdout)
    head = git(workspace, "rev-parse", "HEAD").stdout.strip()
    (baseline,) = [row for row in rows if row["rev"] == head]
    out = {"baseline": baseline["data"]}
    for exp in baseline.get("experiments") or []:
        out[exp["name"]] = exp["revs"][0]["data"]
    return out


def beta(data: dict) -> float:
    return data["params"]["params.yaml"]["data"]["experiments"][EXP]["model"]["beta"]


def metrics(data: dict, path: Path) -> dict:
    return data["metrics"][str(path)]["data"]


# MLflow, read from a fresh process in the copy: the stage runs with their DVC tags, the registered
# versions and the run each came from; the queued experiment's version loads and samples
READ_TRACKING = textwrap.dedent("""
    import json, sys, mlflow, numpy as np
    from mlflow import MlflowClient
    mlflow.set_tracking_uri("sqlite:///mlflow.db")  # the embedded default, in this copy of the repo
    c = MlflowClient()
    runs = c.search_runs([c.get_experiment_by_name("gm-test").experiment_id], max_results=500)
    out = {"runs": [{"name": r.info.run_name, "id": r.info.run_id, "artifacts": r.info.artifact_uri,
                     "dvc": r.data.tags.get("gm.dvc_experiment"), "base": r.data.tags.get("gm.dvc_baseline_rev")}
                    for r in runs],
           "versions": {v.version: v.run_id for v in c.search_model_versions("name = 'gm-vae-ring8'")}}
    x = mlflow.pyfunc.load_model(f"models:/gm-vae-ring8/{sys.argv[1]}").predict([{"n": 5, "seed": 0}])
    out["sample"] = [list(x.shape), bool(np.isfinite(x).all())]
    print(json.dumps(out))
""")


def registered(data: dict) -> str:
    """The registry version that an experiment's (only) seed registered, as its train metrics record it."""
    return str(metrics(data, LAYOUT.train(EXP).metrics)["per_seed"]["0"]["registered_version"])


@pytest.fixture(scope="module")
def tracked(workspace, shown) -> dict:
    r = run([sys.executable, "-c", READ_TRACKING, registered(shown[QUEUED])], workspace, timeout=600)
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.integration
@pytest.mark.chaos
def test_a_value_the_params_reject_fails_naming_the_field_and_keeps_the_baseline(workspace):
    evaluation = workspace / LAYOUT.eval(EXP).metrics
    before = evaluation.read_bytes()
    r = dvc(workspace, "exp", "run", "-n", BAD, "-S", f"{BETA}=-1", TARGET, check=False)
    try:
        assert r.returncode != 0
        assert f"error: {BETA}: expected a value >= 0, got -1.0" in r.stdout + r.stderr, tail(r)
        assert evaluation.read_bytes() == before
        assert BAD not in dvc(workspace, "exp", "list", "--name-only", timeout=300).stdout.split()
    finally:  # -S wrote the value into the workspace's params.yaml: back to the baseline's
        git(workspace, "checkout", "--", "params.yaml")


@pytest.mark.integration
@pytest.mark.chaos
def test_exp_show_lists_each_experiments_metrics_beside_the_baseline(workspace, shown):
    assert beta(shown["baseline"]) == 1.0
    for name, value in VALUES.items():
        assert name in shown, f"dvc exp show lacks {name}: {sorted(shown)}"
        assert beta(shown[name]) == value
    for data in (shown["baseline"], shown[IN_PLACE], shown[QUEUED]):
        evaluation = metrics(data, LAYOUT.eval(EXP).metrics)
        assert math.isfinite(evaluation["test_bits_per_dim"]) and evaluation["experiment"] == EXP
        assert math.isfinite(metrics(data, LAYOUT.train(EXP).metrics)["val_score"])
    # each experiment trained and registered its own model
    assert len({registered(d) for d in (shown["baseline"], shown[IN_PLACE], shown[QUEUED])}) == 3
    # the in-place experiment's results are the workspace's; the queued one left it alone
    assert yaml.safe_load((workspace / "params.yaml").read_text())["experiments"][EXP]["model"]["beta"] == 2.0


@pytest.mark.integration
@pytest.mark.chaos
def test_the_queued_experiment_ran_in_a_copy_that_dvc_removed(workspace, queued):
    temp = workspace / ".dvc" / "tmp" / "exps"
    assert not [p for p in temp.glob("tmp*") if p.is_dir()]  # DVC deleted its copy of the repository...
    assert not (temp / "mlflow.db").exists() and not list(temp.rglob("mlflow.db"))  # ...which had no store


@pytest.mark.integration
@pytest.mark.chaos
def test_each_experiments_runs_and_versions_are_in_the_repositorys_store(workspace, shown, tracked):
    head = git(workspace, "rev-parse", "HEAD").stdout.strip()
    store = (workspace / "mlartifacts").resolve().as_uri()
    for name in VALUES:
        runs = [r for r in tracked["runs"] if r["dvc"] == name]
        assert sorted(r["name"] for r in runs) == [f"evaluate/{EXP}", f"train/{EXP}", f"train/{EXP}/seed0"], name
        assert all(r["base"] == head and r["artifacts"].startswith(store) for r in runs), runs
        # the version the experiment's metrics name came from one of its own runs
        assert tracked["versions"][registered(shown[name])] in {r["id"] for r in runs}
    assert not [r for r in tracked["runs"] if r["dvc"] == BAD]  # the rejected value logged nothing
    baseline = [r for r in tracked["runs"] if r["dvc"] is None]
    assert {f"train/{EXP}", f"evaluate/{EXP}"} <= {r["name"] for r in baseline}  # `gm repro`: untagged
    assert tracked["sample"] == [[5, 2], True]  # the queued experiment's model outlived DVC's copy
