"""Real Ray Train on tiny data: workers, recovery, checkpoints, two nodes (sweeps: test_tune.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from gm.params import parse_params
from gm.models.base import load_model
from gm.training.driver import export_checkpoint, fit, select_checkpoint
from gm.training.validate import validation_scores
from tests.conftest import tiny_params

pytestmark = pytest.mark.integration


def experiment(name: str, model: dict | None = None, **train):
    exp = parse_params(tiny_params()).experiments[name]
    if model:
        exp = dataclasses.replace(exp, model=dataclasses.replace(exp.model, **model))
    scaling = train.pop("scaling", None)
    t = dataclasses.replace(exp.train, **train)
    if scaling:
        t = dataclasses.replace(t, scaling=dataclasses.replace(t.scaling, **scaling))
    return dataclasses.replace(exp, train=t)


def test_two_workers_recover_from_a_failure_and_export_the_best_checkpoint(local_ray, prepared, tmp_path):
    exp = experiment("wgan_gp-ring8", steps=120, eval_every=30, fail_once_at_step=75,
                     scaling={"num_workers": 2})
    out = fit(exp, prepared / "artifacts/prepared/ring8", str(tmp_path / "ray"), "two-workers")
    assert len(out.nodes) == 2  # two ranks took part
    steps = [h["step"] for h in out.history]
    assert steps == [90, 120]  # the restarted attempt resumed after the checkpoint at 60
    assert all(h["resumed_from_step"] == 60 for h in out.history)
    # the exported model is the best on validation, not simply the last
    model = load_model(out.export(tmp_path / "best"))
    ref = min(out.metrics["val_score"], *(h["val_score"] for h in out.history))
    assert out.metrics["val_score"] == pytest.approx(ref)
    from gm.data.io import read_split

    val_x, _ = read_split(prepared / "artifacts/prepared/ring8", "val")
    again = validation_scores(model, model.data, val_x, exp.train.val_samples, seed=exp.train.seed)
    assert again["val_score"] == pytest.approx(out.metrics["val_score"], rel=1e-4)
    # train.select: last exports the final checkpoint from the same run, whatever its score
    from ray.train import Result

    last, metrics = select_checkpoint(Result.from_path(out.run_path), "last")
    assert metrics["step"] == 120
    final = load_model(export_checkpoint(last, tmp_path / "last"))
    again = validation_scores(final, final.data, val_x, exp.train.val_samples, seed=exp.train.seed)
    assert again["val_score"] == pytest.approx(out.history[-1]["val_score"], rel=1e-4)


def test_select_last_exports_the_final_checkpoint_of_a_live_run(local_ray, prepared, tmp_path):
    exp = experiment("wgan_gp-ring8", steps=90, eval_every=30, select="last")
    out = fit(exp, prepared / "artifacts/prepared/ring8", str(tmp_path / "ray"), "select-last")
    assert [h["step"] for h in out.history] == [30, 60, 90]
    assert out.metrics["step"] == 90 and out.metrics["val_score"] == pytest.approx(out.history[-1]["val_score"])
    from gm.data.io import read_split

    model = load_model(out.export(tmp_path / "last"))
    val_x, _ = read_split(prepared / "artifacts/prepared/ring8", "val")
    again = validation_scores(model, model.data, val_x, exp.train.val_samples, seed=exp.train.seed)
    assert again["val_score"] == pytest.approx(out.history[-1]["val_score"], rel=1e-4)


def test_a_diverging_run_stops_with_its_reason_and_no_checkpoint(local_ray, prepared, tmp_path):
    exp = experiment("vae-digits", model={"lr": 1e12}, steps=60, eval_every=30)
    out = fit(exp, prepared / "artifacts/prepared/digits", str(tmp_path / "ray"), "diverge")
    assert out.diverged and ("nan" in out.diverged or "inf" in out.diverged)
    assert out.checkpoint is None and out.export(tmp_path / "best") is None


def test_two_nodes_on_one_machine(prepared, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        exp = experiment("wgan_gp-ring8", steps=30, eval_every=30, scaling={"num_workers": 2})
        out = fit(exp, prepared / "artifacts/prepared/ring8", str(tmp_path / "shared"), "two-nodes")
        assert len(set(out.nodes)) == 2  # one worker on each node
        assert math.isfinite(out.metrics["val_score"])
        assert np.isfinite(load_model(out.export(tmp_path / "best")).sample(10).detach().numpy()).all()
    finally:
        ray.shutdown()
        cluster.shutdown()
