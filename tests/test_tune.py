"""Real Ray Tune sweeps on tiny data (marked integration): export of the better trial, divergence, PBT's
exploit, a killed driver restored; and without Ray: the trial log kept on restart, the resume rule, PBT's
shape check and the registry's champion rule with a real MLflow store."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import textwrap
from pathlib import Path

import pytest

from gm.core.layout import Layout
from gm.core.config import ConfigError
from gm.params import parse_params
from tests.helpers import REPO, env_for, kill_when, tiny_params, write_params


def sweep_params(**sweep) -> dict:
    return {**tiny_params(), "tune": {"sweeps": {"s": {"experiment": "vae-digits", **sweep}}}}


def sweep_of(raw: dict):
    params = parse_params(raw)
    return params.sweeps["s"], params.experiments[params.sweeps["s"].experiment]


@pytest.fixture
def sweep_root(prepared, tmp_path) -> Path:
    """A repository root with the prepared tiny datasets, for pipelines.tune."""
    root = tmp_path / "root"
    Layout(root).artifacts.mkdir(parents=True)
    Layout(root).prepared_root.symlink_to(Layout(prepared).prepared_root)
    return root


@pytest.mark.integration
def test_two_trials_the_better_is_registered_and_the_diverged_fails_with_its_reason(local_ray, sweep_root):
    """A two-trial sweep end to end through the tune stage: one trial diverges, the other is registered."""
    import mlflow

    from gm.stages.tune import tune_sweep

    write_params(sweep_root, sweep_params(num_samples=1, scheduler="fifo",
                                          space={"model.lr": {"grid": [1e-3, 1e12]}}))
    best = tune_sweep("s", sweep_root)
    assert best["overrides"]["model.lr"] == 1e-3
    assert best["concurrency"] == 2  # two 1-CPU trials on 2 CPUs, drivers taking no CPU
    client = mlflow.MlflowClient()
    runs = client.search_runs([mlflow.get_experiment_by_name("gm-test").experiment_id])
    trials = {r.data.params["config.model.lr"]: r for r in runs if r.info.run_name.startswith("trial/")}
    bad, good = trials["1000000000000.0"], trials["0.001"]
    assert bad.data.tags["gm.trial_status"] == "error"
    assert bad.data.tags["gm.failure_reason"].startswith("diverged: step ")
    assert good.data.tags["gm.trial_status"] == "ok" and "gm.failure_reason" not in good.data.tags
    # the final checkpoint of every trial that reached one is an artifact of its run
    arts = [a.path for a in client.list_artifacts(good.info.run_id, "final_checkpoint")]
    assert "final_checkpoint/model" in arts
    versions = client.search_model_versions("name='gm-vae-digits'")
    assert [v.tags["gm.trial_id"] for v in versions] == [best["trial_id"]]  # the diverged trial is not there
    assert float(versions[0].tags["gm.val_score"]) == pytest.approx(best["val_score"])
    curve = client.get_metric_history(good.info.run_id, "val_score")
    assert best["val_score"] == pytest.approx(min(m.value for m in curve))  # the best checkpoint was exported


@pytest.mark.integration
def test_pbt_exploits_a_stronger_trials_checkpoint_and_perturbs_its_knobs(local_ray, prepared, tmp_path):
    from tune.driver import run_sweep

    # two members; every second report (step 60) the weaker copies the stronger (quantile 0.5) and scales its
    # lr. In step: asynchronous PBT compares only members still running, and on a busy machine one member's
    # 90 steps can end before the other's workers have started (then no exploit happens at all)
    sweep, exp = sweep_of(sweep_params(num_samples=2, scheduler="pbt", perturbation_interval=2, synch=True,
                                       quantile_fraction=0.5, resample_probability=0.0,
                                       space={"model.lr": {"loguniform": [1e-5, 1e-1]}}))
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, steps=90))
    result = run_sweep(sweep, exp, Layout(prepared).prepared("digits"), str(tmp_path / "ray"), "tune-pbt")
    trials = list(result.grid)
    assert len(trials) == 2 and all(t.error is None for t in trials)
    log = Path(result.grid.experiment_path) / "pbt_global.txt"
    # each line: [target tag, clone tag, target iteration, clone iteration, clone config, new config]
    exploits = [json.loads(line) for line in log.read_text().splitlines()]
    assert exploits, "PBT recorded no exploit"
    assert all(e[2] >= 1 for e in exploits)  # a member decides at a report of its own (the clone's checkpoint
    # is its latest report's: a member that started from it has resumed_from_step set, checked below)
    assert any(e[4]["model.lr"] != e[5]["model.lr"] for e in exploits)  # explored: lr scaled by 0.8 or 1.2
    assert all(1e-5 <= e[5]["model.lr"] <= 1e-1 for e in exploits)  # and kept inside the sweep's domain
    resumed = []
    for t in trials:
        df = t.metrics_dataframe
        steps = list(df["step"])
        # the whole history survives the exploit, and no member started again from scratch
        assert steps[0] == 30 and 30 not in steps[1:] and steps[-1] == 90
        if "resumed_from_step" in df:
            resumed += [int(s) for s in df["resumed_from_step"].dropna()]
    # the exploited member's Train run started from the clone's checkpoint (weights, optimizer, step);
    # a clone already at its last step hands over a finished model, reported as the member's own
    assert resumed and set(resumed) <= {30, 60, 90}


def test_a_trial_restarted_in_a_running_sweep_keeps_its_local_log(tmp_path):
    """Tune copies a restarted trial's log back from storage, which lags the driver's copy by minutes:
    ours keeps the local log when there is one and fetches the stored one only when there is none."""
    import pyarrow.fs
    from types import SimpleNamespace

    from tune.driver import TrialCsvLog, TrialJsonLog

    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir(), remote.mkdir()
    trial = SimpleNamespace(checkpoint=object(), local_path=str(local),
                            storage=SimpleNamespace(trial_fs_path=str(remote),
                                                    storage_filesystem=pyarrow.fs.LocalFileSystem()))
    for logger, name in ((TrialJsonLog(), "result.json"), (TrialCsvLog(), "progress.csv")):
        (remote / name).write_text("stale\n")
        (local / name).write_text("first\nsecond\n")
        logger._restore_from_remote(name, trial)
        assert (local / name).read_text() == "first\nsecond\n"
        (local / name).unlink()  # a new driver (restored sweep) has no local copy: the stored one is fetched
        logger._restore_from_remote(name, trial)
        assert (local / name).read_text() == "stale\n"


def test_a_checkpoint_at_the_last_step_is_reported_not_retrained(tmp_path):
    from ray.train import Checkpoint

    from tune.driver import finished_checkpoint_metrics

    (tmp_path / "metrics.json").write_text(json.dumps({"step": 120, "val_score": 1.5}))
    checkpoint = Checkpoint.from_directory(tmp_path)
    assert finished_checkpoint_metrics(checkpoint, 120) == {"step": 120, "val_score": 1.5}
    assert finished_checkpoint_metrics(checkpoint, 150) is None


def test_pbt_rejects_a_knob_that_changes_parameter_shapes(prepared):
    from gm.data.io import data_spec
    from tune.sweep import check_pbt_space

    sweep, exp = sweep_of(sweep_params(scheduler="pbt", space={"model.hidden": {"choice": [16, 64]}}))
    with pytest.raises(ConfigError, match=r"tune.sweeps.s.space.model.hidden: value 16 changes the model's "
                                          r"parameter shapes"):
        check_pbt_space(sweep, exp, data_spec(Layout(prepared).prepared("digits")), "tune.sweeps.s")
    sweep, exp = sweep_of(sweep_params(scheduler="pbt", space={"model.beta": {"loguniform": [0.1, 4.0]}}))
    check_pbt_space(sweep, exp, data_spec(Layout(prepared).prepared("digits")), "tune.sweeps.s")


RESUMABLE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from gm.core.layout import Layout
    from gm.params import parse_params
    from gm.training.cluster import init_ray
    from tests.test_tune import resumable_params
    from tune.driver import run_sweep

    root = Path(sys.argv[1])
    params = parse_params(resumable_params())
    init_ray(params.ray)
    sweep = params.sweeps["s"]
    run_sweep(sweep, params.experiments[sweep.experiment], Layout(root).prepared("digits"),
              sys.argv[2], "tune-s")
""")


def resumable_params() -> dict:
    """Two Optuna trials one after the other, the second slow enough to kill the driver during it."""
    raw = sweep_params(num_samples=2, scheduler="fifo", search="optuna", max_concurrent_trials=1,
                       space={"model.beta": {"loguniform": [0.1, 4.0]}})
    raw["experiments"]["vae-digits"]["train"] = {"steps": 150, "eval_every": 30}
    return raw


def finished_trials(path: Path) -> int:
    states = sorted(path.glob("experiment_state-*.json"))
    if not states:
        return 0
    try:
        state = json.loads(states[-1].read_text())
    except (json.JSONDecodeError, OSError):
        return 0
    return sum("TERMINATED" in json.dumps(t) for t in state.get("trial_data", []))


@pytest.mark.integration
@pytest.mark.chaos  # a fault scenario, a minute: the slower tier (make test-chaos)
def test_a_sweep_killed_after_its_first_trial_resumes_without_repeating_it(local_ray, prepared, tmp_path):
    from tune.driver import read_sweep_record, run_sweep

    storage = tmp_path / "ray"
    kill_when([sys.executable, "-c", RESUMABLE, str(prepared), str(storage)], REPO,
              {**env_for(prepared), "PYTHONPATH": str(REPO)}, lambda: finished_trials(storage / "tune-s") >= 1,
              600, "a finished first trial")
    first = {p.name for p in (storage / "tune-s").iterdir() if p.is_dir()}
    params = parse_params(resumable_params())
    sweep = params.sweeps["s"]
    # the same sweep run again (as a second `dvc repro` would) continues the interrupted one
    result = run_sweep(sweep, params.experiments["vae-digits"], Layout(prepared).prepared("digits"),
                       str(storage), "tune-s")
    trials = list(result.grid)
    assert len(trials) == 2 and all(t.error is None for t in trials)
    assert first <= {Path(t.path).name for t in trials}  # the trials of the killed run, and no third one
    for t in trials:  # every step reported once: the finished trial was not rerun
        steps = list(t.metrics_dataframe["step"])
        assert steps == sorted(set(steps)) and steps[-1] == 150
    betas = [t.config["model.beta"] for t in trials]
    assert len(set(betas)) == 2 and all(0.1 <= b <= 4.0 for b in betas)
    assert math.isfinite(result.best_score)
    assert read_sweep_record(str(storage / "tune-s"))["finished"] is True


def test_only_an_interrupted_sweep_of_the_same_definition_is_resumed(tmp_path):
    from tune.driver import read_sweep_record, should_resume, sweep_fingerprint, write_sweep_record

    path = str(tmp_path / "tune-s")
    sweep, exp = sweep_of(sweep_params(num_samples=2))
    same = sweep_fingerprint(sweep, exp, tmp_path)
    other = sweep_fingerprint(dataclasses.replace(sweep, num_samples=3), exp, tmp_path)
    assert not should_resume(path, same, None)  # nothing stored
    write_sweep_record(path, {"fingerprint": same, "finished": False})
    assert not should_resume(path, same, None)  # no Tune state to restore
    (tmp_path / "tune-s" / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    assert should_resume(path, same, None)
    assert not should_resume(path, other, None) and should_resume(path, other, True)  # --resume forces it
    assert not should_resume(path, same, False)  # --fresh
    write_sweep_record(path, {"fingerprint": same, "finished": True})
    assert read_sweep_record(path)["finished"] is True and not should_resume(path, same, None)
    (tmp_path / "tune-s" / "gm_sweep.json").write_text("{not json")
    assert read_sweep_record(path) is None and not should_resume(path, same, None)


def test_the_champion_moves_only_for_a_better_finite_score(tmp_path):
    import mlflow

    from gm import tracking

    tracking.use_store(f"sqlite:///{tmp_path}/mlflow.db")
    client = mlflow.MlflowClient()
    client.create_registered_model("gm-x")

    def version(score: float) -> int:
        v = int(client.create_model_version("gm-x", str(tmp_path)).version)
        client.set_model_version_tag("gm-x", str(v), "gm.val_score", repr(score))
        return v

    def champ() -> int:
        return int(client.get_model_version_by_alias("gm-x", "champion").version)

    v_nan = version(math.nan)
    assert not tracking.promote_if_better("gm-x", v_nan, math.nan)
    assert tracking.champion("gm-x") is None  # not even the first model, when it diverged
    v1 = version(1.0)
    assert tracking.promote_if_better("gm-x", v1, 1.0) and champ() == v1
    v2 = version(2.0)
    assert not tracking.promote_if_better("gm-x", v2, 2.0) and champ() == v1
    assert client.get_model_version("gm-x", str(v2)).tags["gm.champion_decision"].startswith(f"kept v{v1}")
    v3 = version(0.5)
    assert tracking.promote_if_better("gm-x", v3, 0.5) and champ() == v3
    assert client.get_model_version("gm-x", str(v3)).tags["gm.champion_decision"].startswith("promoted: 0.5 < 1")
