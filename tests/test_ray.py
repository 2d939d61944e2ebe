"""Real Ray Train on tiny data: workers on two nodes, recovery, checkpoints, divergence (sweeps:
test_tune.py).

One Ray (two 1-CPU nodes on this machine) serves the module, and two fits cover it: a two-worker run
killed once and recovered, which every checkpoint test reads, and a diverging run."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest

from gm.params import parse_params
from gm.models.base import load_model
from gm.training import driver
from gm.core.layout import Layout
from gm.training.driver import export_checkpoint, fit, select_checkpoint
from gm.training.validate import validation_scores
from tests.helpers import tiny_params

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


@pytest.fixture(scope="module")
def two_nodes():
    """Ray on two 1-CPU nodes of this machine, started once for the module."""
    import ray
    from ray.cluster_utils import Cluster

    from gm.training.cluster import RayParams, init_ray

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        init_ray(RayParams(address=cluster.address))  # the pipeline's way of joining a cluster
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_ADDRESS", None)  # init_ray pinned the state API to this cluster


@pytest.fixture(scope="module")
def recovered(two_nodes, prepared, tmp_path_factory):
    """One two-worker run of 120 steps, one worker per node, whose workers fail once at step 75 (after
    the checkpoint at 60): (the fit's outcome, the live Result fit() read it from, a scratch folder)."""
    tmp = tmp_path_factory.mktemp("recovered")
    exp = experiment("wgan_gp-ring8", steps=120, eval_every=30, fail_once_at_step=75,
                     scaling={"num_workers": 2})
    live = {}
    real = driver.outcome_from_result

    def keep_live(result, *args, **kwargs):
        live["result"] = result
        return real(result, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(driver, "outcome_from_result", keep_live)
        out = fit(exp, Layout(prepared).prepared("ring8"), str(tmp / "ray"), "two-workers")
    return exp, out, live["result"], tmp


def revalidated(model_dir, exp, prepared) -> float:
    """The val_score of an exported model, computed again from the prepared validation split."""
    from gm.data.io import read_split

    model = load_model(model_dir)
    val_x, _ = read_split(Layout(prepared).prepared("ring8"), "val")
    return validation_scores(model, model.data, val_x, exp.train.val_samples, seed=exp.train.seed)["val_score"]


def test_two_workers_on_two_nodes_recover_from_a_failure(recovered):
    exp, out, _, tmp = recovered
    assert len(out.nodes) == 2  # two ranks took part
    assert len(set(out.nodes)) == 2  # one worker on each node
    steps = [h["step"] for h in out.history]
    assert steps == [30, 60, 90, 120]  # the whole curve: the first attempt's part came back with the checkpoint
    # the restarted attempt resumed after the checkpoint at 60
    assert [h.get("resumed_from_step") for h in out.history] == [None, None, 60, 60]
    assert math.isfinite(out.metrics["val_score"])
    assert np.isfinite(load_model(out.export(tmp / "any")).sample(10).detach().numpy()).all()


def test_the_exported_model_is_the_best_on_validation_not_the_last(recovered, prepared):
    exp, out, _, tmp = recovered
    best = out.export(tmp / "best")
    ref = min(out.metrics["val_score"], *(h["val_score"] for h in out.history))
    assert out.metrics["val_score"] == pytest.approx(ref)
    assert revalidated(best, exp, prepared) == pytest.approx(out.metrics["val_score"], rel=1e-4)


def test_select_last_exports_the_final_checkpoint_of_a_live_run(recovered, prepared):
    # what fit() returns under train.select: last, from the same live Result (which lists only the best
    # checkpoints; the latest comes as result.checkpoint)
    exp, out, live, tmp = recovered
    last = driver.outcome_from_result(live, out.wall_seconds, "last")
    assert [h["step"] for h in last.history] == [30, 60, 90, 120]
    assert last.metrics["step"] == 120
    assert last.metrics["val_score"] == pytest.approx(out.history[-1]["val_score"])
    assert revalidated(last.export(tmp / "last-live"), exp, prepared) == \
        pytest.approx(out.history[-1]["val_score"], rel=1e-4)


def test_select_last_exports_the_final_checkpoint_of_a_stored_run(recovered, prepared):
    # train.select: last, from the run read back from storage, whatever its score
    from ray.train import Result

    exp, out, _, tmp = recovered
    last, metrics = select_checkpoint(Result.from_path(out.run_path), "last")
    assert metrics["step"] == 120
    final = export_checkpoint(last, tmp / "last")
    assert revalidated(final, exp, prepared) == pytest.approx(out.history[-1]["val_score"], rel=1e-4)


def test_a_diverging_run_stops_with_its_reason_and_no_checkpoint(two_nodes, prepared, tmp_path):
    exp = experiment("vae-digits", model={"lr": 1e12}, steps=60, eval_every=30)
    out = fit(exp, Layout(prepared).prepared("digits"), str(tmp_path / "ray"), "diverge")
    assert out.diverged and ("nan" in out.diverged or "inf" in out.diverged)
    assert out.checkpoint is None and out.export(tmp_path / "best") is None
