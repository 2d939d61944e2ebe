"""Progress lines of training runs (gm.training.progress): the renderer (plain lines per evaluation off a
terminal, live lines on one, the ETA's arithmetic), and a real Ray Train fit drawing its plain lines;
and the quiet side: registering a model warns nothing, the one Ray line filtered (gm.core.quiet) is dropped."""

from __future__ import annotations

import dataclasses
import io
import re
import warnings

import pytest

from gm.training import progress
from gm.training.progress import CountingBatches, Display, Reporter, eta_seconds, format_eta


def record(step: int, t: float, kind: str = "eval", total: int = 3000, val: float | None = 1.234,
           rate: float | None = 41.2, run: str = "train-vae-digits-seed0", seed: int = 0) -> dict:
    return {"run": run, "experiment": "vae-digits", "seed": seed, "total": total, "kind": kind, "step": step,
            "t": t, "steps_per_s": rate, "val_score": val}


def test_plain_lines_come_one_per_evaluation_with_the_pace_so_far():
    out = io.StringIO()
    display = Display(progress.train_label, "plain", out)
    display.update(record(100, 1000.0, kind="tick", val=None))  # the run's first record starts the clock
    display.update(record(300, 1004.0, kind="tick", val=None))  # no line between evaluations
    display.update(record(500, 1010.0))
    display.update(record(500, 1001.0, run="train-vae-digits-seed1", seed=1, kind="tick", val=None))
    display.update(record(1000, 1020.0))
    display.update(record(3000, 1060.0, val=0.5))
    display.close()
    # 400 steps in 10 s: 2500 left at 40 steps/s; then 900 in 20 s: 2000 left at 45/s
    assert out.getvalue().splitlines() == [
        "train vae-digits seed 0: step 500/3000, 41.2 steps/s, val 1.234, ETA 62 s",
        "train vae-digits seed 0: step 1000/3000, 41.2 steps/s, val 1.234, ETA 44 s",
        "train vae-digits seed 0: step 3000/3000, 41.2 steps/s, val 0.5, ETA 0 s",
    ]


def test_a_divergence_is_a_line_and_a_restart_starts_the_pace_over():
    out = io.StringIO()
    display = Display(progress.trial_label("vae-digits"), "plain", out)
    run = "train-85bc9_00001"
    display.update(record(0, 100.0, kind="tick", run=run))
    display.update(record(200, 110.0, run=run))
    display.update({**record(250, 111.0, run=run), "kind": "diverged", "reason": "loss is nan"})
    state = display.runs[run]
    assert state.done
    # a restart from the checkpoint at step 200 (a worker failure, PBT's exploit): the clock restarts there
    state.update(record(200, 500.0, kind="tick", run=run))
    state.update(record(300, 505.0, kind="tick", run=run))
    assert state.first == (500.0, 200)
    assert state.eta() == pytest.approx((3000 - 300) * 5.0 / 100)
    assert out.getvalue().splitlines() == [
        "tune vae-digits trial 85bc9_00001: step 200/3000, 41.2 steps/s, val 1.234, ETA 2 min 20 s",
        "tune vae-digits trial 85bc9_00001: diverged at step 250",
    ]


def test_eta_arithmetic():
    assert eta_seconds(500, 3000, (100.0, 100), 110.0) == pytest.approx(2500 * 10 / 400)
    assert eta_seconds(3000, 3000, None, None) == 0.0
    assert eta_seconds(100, 3000, (100.0, 100), 110.0, steps_per_s=29.0) == pytest.approx(100.0)  # no pace yet
    assert eta_seconds(100, 3000, None, None) is None
    assert [format_eta(s) for s in (None, float("inf"), 0.4, 61, 99.6, 245, 3725)] == [
        "?", "?", "0 s", "61 s", "1 min 40 s", "4 min 05 s", "1 h 02 min"]


def test_live_lines_show_every_run_with_its_step_and_eta():
    out = io.StringIO()
    display = Display(progress.train_label, "live", out)
    display.update(record(100, 1000.0, kind="tick"))
    display.update(record(500, 1010.0))
    display.update(record(250, 1005.0, run="train-vae-digits-seed1", seed=1, kind="tick", rate=None))
    display.close()
    text = out.getvalue()
    assert re.search(r"train vae-digits seed 0 .*500/3000 .*41\.2 steps/s .*val 1\.234 .*ETA 62 s", text), text
    assert re.search(r"train vae-digits seed 1 .*250/3000 .*\? steps/s .*ETA \?", text), text


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_gm_progress_chooses_the_display(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.display_mode(TTY()) == "live"
    assert progress.display_mode(io.StringIO()) == "plain"  # CI, `dvc repro > log`
    monkeypatch.setenv(progress.ENV, "plain")
    assert progress.display_mode(TTY()) == "plain"
    monkeypatch.setenv(progress.ENV, "off")
    with progress.watching(stream=TTY()) as display:  # no board, no thread: Ray is not even needed
        assert display is None
    monkeypatch.setenv(progress.ENV, "loud")
    from gm.core.config import ConfigError

    with pytest.raises(ConfigError, match="GM_PROGRESS: expected one of auto, live, plain, off, got 'loud'"):
        progress.display_mode()


class Ticks(Reporter):
    """The reporter, keeping the steps it is told of instead of pushing them anywhere."""

    def __init__(self):
        super().__init__(None, "r", "e", 0, 10)
        self.steps = []

    def tick(self, step: int) -> None:
        self.steps.append(step)


def test_the_batch_counter_marks_each_step_of_a_multi_batch_schedule():
    ticks = Ticks()
    batches = CountingBatches(iter(range(100)), per_step=3, reporter=ticks)  # e.g. a critic stepped twice
    batches.segment(40)
    drawn = [next(batches) for _ in range(7)]  # two whole steps and the first batch of a third
    assert drawn == list(range(7))
    assert ticks.steps == [40, 41, 42]
    batches.segment(60)
    next(batches)
    assert ticks.steps[-1] == 60


def test_a_reporter_without_a_board_does_nothing_and_never_raises():
    r = Reporter(None, "r", "e", 0, 10, every_s=0.0)
    r.tick(3)
    r.evaluated(5, {"val_score": 1.0})
    r.diverged(6, "nan")
    r.close()
    assert r.val_score == 1.0 and r.pending is None


# ------------------------------------------------------------------------------ quiet logs


def test_registering_a_model_warns_nothing(tmp_path):
    """The pyfunc logged as code: MLflow infers its signature from `predict`'s hints, and warned at every
    registration while the answer was hinted `list[Any]` (gm.serving)."""
    import mlflow
    import torch

    from gm import tracking
    from gm.data.dataspec import DataSpec
    from gm.models.base import build_model, save_model
    from gm.params import parse_params
    from tests.helpers import tiny_params

    tracking.setup(tracking.MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"), tmp_path)
    exp = parse_params(tiny_params()).experiments["wgan_gp-ring8"]
    torch.manual_seed(0)
    model = save_model(build_model(exp.family, exp.model, DataSpec(shape=(2,), kind="toy")), tmp_path / "m")
    try:
        with warnings.catch_warnings(record=True) as caught, tracking.run("r", tracking.stage_tags("train", "x", tmp_path)):
            warnings.simplefilter("always")
            tracking.register_version(model, "wgan_gp", "toy", 1.0, "val_w1", None)
    finally:
        while mlflow.active_run():
            mlflow.end_run()
    assert [str(w.message) for w in caught if "mlflow" in w.filename] == []
    x = mlflow.pyfunc.load_model("models:/gm-wgan_gp-toy@champion").predict([{"n": 3, "seed": 1}])
    assert x.shape == (3, 2)


def test_the_raylet_worker_count_line_is_dropped_and_other_raylet_lines_printed(capsys):
    import ray._private.worker as worker

    from gm.core.quiet import quiet_ray

    installed = worker.print_to_stdstream  # a Ray started earlier in this process has the wrapper already
    original = getattr(installed, "gm_original", installed)
    worker.print_to_stdstream = original
    try:
        quiet_ray()
        quiet_ray()  # idempotent: one wrapper
        assert worker.print_to_stdstream.gm_quiet and worker.print_to_stdstream is not original
        count = ("WARNING: 8 PYTHON worker processes have been started on node: 18b3 with address: 192.0.2.2, "
                 "which is 4x the maximum expected startup concurrency (2).")
        worker.print_to_stdstream({"lines": [count], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        worker.print_to_stdstream({"lines": [count, "The node ran out of memory"], "pid": "raylet",
                                   "is_err": False}, ignore_prefix=False)
    finally:
        worker.print_to_stdstream = installed
    out = capsys.readouterr().out
    assert "worker processes" not in out
    assert "The node ran out of memory" in out


# ---------------------------------------------------------------------- a real fit, drawn


@pytest.mark.integration
def test_a_real_fit_prints_a_plain_line_per_evaluation(local_ray, prepared, tmp_path, monkeypatch, capsys):
    from gm.core.layout import Layout
    from gm.params import parse_params
    from gm.training.driver import fit_many
    from tests.helpers import tiny_params

    monkeypatch.delenv(progress.ENV, raising=False)  # captured output is not a terminal: plain lines
    exp = parse_params(tiny_params()).experiments["wgan_gp-ring8"]
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, steps=60, eval_every=20))
    (out,) = fit_many([(exp, "progress-run")], Layout(prepared).prepared("ring8"), str(tmp_path / "ray"))
    assert [h["step"] for h in out.history] == [20, 40, 60]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("train wgan_gp-ring8")]
    pattern = r"train wgan_gp-ring8 seed 0: step (\d+)/60, [\d.]+ steps/s, val ([-\d.e]+), ETA (.+)"
    parsed = [re.fullmatch(pattern, ln) for ln in lines]
    assert all(parsed), lines
    assert [int(m.group(1)) for m in parsed] == [20, 40, 60]
    assert [float(m.group(2)) for m in parsed] == pytest.approx([h["val_score"] for h in out.history], rel=1e-3)
    assert parsed[-1].group(3) == "0 s"
