"""A train stage killed mid-run continues from its runs' latest checkpoints when it runs again with the
same definition; a changed definition, a finished run or --fresh starts from step 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gm.core.layout import Layout
from gm.training.driver import RUN_RECORD, mark_completed, start_or_resume
from gm.chaos import recorded_step, settled
from tests.helpers import env_for, kill_when, tiny_params, write_params


def test_start_or_resume_follows_the_definition_and_completion(tmp_path):
    storage, name = str(tmp_path), "train-x-seed0"
    assert start_or_resume(storage, name, "a") is False  # nothing there: a fresh run, recorded
    (tmp_path / name / "checkpoint_00000100").mkdir()
    assert start_or_resume(storage, name, "a") is True  # same definition, unfinished: resume, files kept
    assert (tmp_path / name / "checkpoint_00000100").is_dir()
    assert start_or_resume(storage, name, "b") is False  # changed definition: cleared, recorded afresh
    assert not (tmp_path / name / "checkpoint_00000100").exists()
    assert json.loads((tmp_path / name / RUN_RECORD).read_text()) == {"definition": "b", "completed": False}
    mark_completed(storage, name)
    assert start_or_resume(storage, name, "b") is False  # finished: running the stage again trains afresh
    (tmp_path / name / "checkpoint_00000100").mkdir()
    assert start_or_resume(storage, name, "b", fresh=True) is False  # --fresh: unfinished, yet cleared
    assert not (tmp_path / name / "checkpoint_00000100").exists()


def test_the_definition_changes_with_params_data_and_code(tmp_repo, prepared):
    from gm.params import parse_params
    from gm.stages.train import definition

    params = parse_params(tiny_params())
    exp = params.experiment("wgan_gp-ring8")
    data_dir = Layout(prepared).prepared("ring8")
    base = definition(exp, data_dir, tmp_repo)
    assert definition(exp, data_dir, tmp_repo) == base
    other = parse_params(tiny_params(train={**tiny_params()["train"], "steps": 90})).experiment("wgan_gp-ring8")
    assert definition(other, data_dir, tmp_repo) != base
    assert definition(exp, Layout(prepared).prepared("digits"), tmp_repo) != base
    (tmp_repo / "gm" / "models" / "gan.py").write_text((tmp_repo / "gm" / "models" / "gan.py").read_text() + "\n# edit\n")
    assert definition(exp, data_dir, tmp_repo) != base


def checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in run.glob("checkpoint_*") if p.is_dir()) if run.is_dir() else []


@pytest.mark.integration
@pytest.mark.chaos  # a fault scenario, a minute (test_chaos kills a driver too): make test-chaos
def test_a_killed_train_stage_continues_from_its_latest_checkpoint(tmp_repo):
    from gm.params import parse_params
    from gm.stages.prepare import prepare

    raw = tiny_params(experiments={"gan-ring8": {
        "family": "gan", "dataset": "ring8", "model": {"z_dim": 2, "hidden": 32, "depth": 2},
        "train": {"steps": 1500, "eval_every": 50, "seeds": 1}}})
    raw["data"]["datasets"] = {"ring8": raw["data"]["datasets"]["ring8"]}
    raw["tune"] = {"sweeps": {}}
    write_params(tmp_repo, raw)
    params = parse_params(raw, tmp_repo / "params.yaml")
    prepare("ring8", params.datasets["ring8"], tmp_repo, Layout(tmp_repo).prepared_root, params.data_seed,
            params.val_fraction, params.test_fraction)
    cmd = [sys.executable, "-m", "pipelines.train", "gan-ring8"]
    run = tmp_repo / "artifacts" / "ray" / "train-gan-ring8-seed0"
    # killed a couple of checkpoints in, well before the last step
    kill_when(cmd, tmp_repo, env_for(tmp_repo), lambda: len(checkpoints(run)) >= 2, 300, "two checkpoints")
    # what the run records once its workers, which outlive the driver by a second or two, are gone
    latest = settled(lambda: recorded_step(run.parent, run.name))
    assert 50 <= latest < 1500

    r = subprocess.run(cmd, cwd=tmp_repo, env=env_for(tmp_repo), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = Layout(tmp_repo).train("gan-ring8")
    seed = json.loads(out.metrics.read_text())["per_seed"]["0"]
    assert seed["resumed_from_step"] >= latest  # not step 0: at least where the killed attempt had got to
    steps = [h["step"] for h in json.loads(out.history.read_text())]
    assert steps == list(range(50, 1501, 50))  # one curve: the killed attempt's part came with the checkpoint
    assert json.loads((run / RUN_RECORD).read_text())["completed"] is True


WHERE = """
import sys
import ray
from gm.training.cluster import init_ray, RayParams
init_ray(RayParams(num_cpus=1))
print(ray.get(ray.remote(lambda: __import__("gm").__file__).remote()))
"""


@pytest.mark.integration
def test_ray_workers_run_the_drivers_copy_of_gm(tmp_repo):
    # a profile's workspace or a test's copy: its workers must not import the checkout the environment's
    # editable install points at (what the digest of a resumable run describes is the copy's code)
    r = subprocess.run([sys.executable, "-c", WHERE], cwd=tmp_repo, env=env_for(tmp_repo), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == str(tmp_repo / "gm" / "__init__.py")
