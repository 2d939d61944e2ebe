"""The throughput benchmark's pure parts: the configurations it times, its arithmetic and its table
(no Ray, no timing)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from gm.bench import main
from gm.bench_throughput import (
    Measurement, configurations, format_table, load_models, parse_bools, parse_names, ray_figures, skip_reason,
    table_rows, timed_iterations, warmup_excess,
)
from tests.helpers import REPO


@pytest.fixture(scope="module")
def exps():
    return [e for e, _ in load_models(REPO, ["dcgan", "glow", "pixelcnnpp"]).values()]


def test_the_default_models_are_the_profiles_experiments(exps):
    assert [(e.name, e.family) for e in exps] == [
        ("dcgan-digits", "gan"), ("glow-digits", "glow"), ("pixelcnnpp-digits", "pixelcnnpp")]
    assert (exps[0].model.arch, exps[0].model.z_dim, exps[0].model.hidden) == ("dcgan", 32, 32)
    assert [e.train.batch_size for e in exps] == [64, 128, 64]


def test_every_configuration_is_built_as_asked_with_one_batch_per_model(exps):
    configs = configurations(exps, workers=2, steps=7, warmup=3, batch_size=None, precisions=["fp32", "bf16"],
                             compiles=[False, True], use_gpu=False, cpus_per_worker=1.0)
    assert len(configs) == 3 * 3 * 2 * 2
    seen = {(c.model, c.runner, c.precision, c.compiled) for c in configs}
    assert len(seen) == len(configs)
    for c in configs:
        t = c.exp.train
        assert (t.precision, t.compile) == (c.precision, c.compiled)
        assert c.runner in ("bare", "ray-1", "ray-2")
        assert t.scaling.num_workers == c.workers == (2 if c.runner == "ray-2" else 1)
        assert (t.scaling.use_gpu, t.scaling.cpus_per_worker) == (False, 1.0)
        if c.runner == "bare":  # 3 warm-up then 7 timed iterations
            assert (c.warmup, c.steps, t.steps, t.eval_every) == (3, 7, 10, 3)
        else:  # the first validation interval warms up: max(3, 7) steps, then 7 timed ones
            assert (c.warmup, c.steps, t.steps, t.eval_every) == (7, 7, 14, 7)
        assert t.max_failures == 0
        original = next(e for e in exps if e.name == c.model)
        assert (c.exp.family, c.exp.dataset, c.exp.model) == (original.family, original.dataset, original.model)
        assert t.batch_size == original.train.batch_size  # the experiment's own, everywhere
        assert (t.lr_schedule, t.seed) == (original.train.lr_schedule, original.train.seed)


def test_a_batch_size_override_and_one_worker(exps):
    configs = configurations(exps[:1], workers=1, steps=4, warmup=6, batch_size=32, precisions=["bf16"],
                             compiles=[True], use_gpu=True, cpus_per_worker=2.0)
    assert [(c.runner, c.precision, c.compiled, c.exp.train.batch_size) for c in configs] == [
        ("bare", "bf16", True, 32), ("ray-1", "bf16", True, 32)]
    assert all(c.exp.train.scaling.use_gpu and c.exp.train.scaling.cpus_per_worker == 2.0 for c in configs)
    assert [(c.warmup, c.exp.train.steps) for c in configs] == [(6, 10), (6, 10)]


def test_ratios_are_against_the_same_models_bare_fp32_eager_figure(exps):
    configs = configurations(exps[:2], workers=2, steps=5, warmup=2, batch_size=None, precisions=["fp32", "bf16"],
                             compiles=[False], use_gpu=False, cpus_per_worker=1.0)
    rates = {("dcgan-digits", "bare", "fp32"): 1000.0, ("dcgan-digits", "bare", "bf16"): 1500.0,
             ("dcgan-digits", "ray-1", "fp32"): 800.0, ("dcgan-digits", "ray-2", "fp32"): 1200.0,
             ("glow-digits", "ray-1", "fp32"): 300.0}  # glow's bare loop did not run: no ratio
    ms = [Measurement(c, samples_per_s=rates.get((c.model, c.runner, c.precision)), warmup_s=0.5)
          if (c.model, c.runner, c.precision) in rates else Measurement(c, skipped="not here")
          for c in configs]
    rows = {(r["model"], r["config"], r["precision"]): r for r in table_rows(ms)}
    assert rows[("dcgan-digits", "bare", "fp32")]["ratio"] == 1.0
    assert rows[("dcgan-digits", "bare", "bf16")]["ratio"] == 1.5
    assert rows[("dcgan-digits", "ray-1", "fp32")]["ratio"] == 0.8
    assert rows[("dcgan-digits", "ray-2", "fp32")]["ratio"] == pytest.approx(1.2)
    assert rows[("dcgan-digits", "ray-1", "bf16")]["ratio"] is None  # skipped
    assert rows[("glow-digits", "ray-1", "fp32")]["ratio"] is None
    text = format_table(table_rows(ms))
    assert "dcgan-digits         ray-2   fp32  no          64     5     1200.0    1.20       0.5" in text
    assert "glow-digits          bare    fp32  no         128     5          -       -         -  skipped: not here" in text


def test_ray_figures_take_the_timed_interval_from_rank_0s_curve(exps):
    c = configurations(exps[:1], workers=2, steps=7, warmup=3, batch_size=None, precisions=["fp32"],
                       compiles=[False], use_gpu=False, cpus_per_worker=1.0)[2]
    assert (c.runner, c.warmup, c.steps) == ("ray-2", 7, 7)
    history = [{"step": 7, "train_seconds": 3.0, "val_score": 1.0}, {"step": 14, "train_seconds": 4.0}]
    sps, warm = ray_figures(history, c)
    assert sps == 7 * 64 * 2 / 1.0  # timed iterations x batch x workers / timed seconds
    assert warm == 3.0 - 7 * 1.0 / 7  # the warm-up interval beyond 7 steps at the timed rate
    with pytest.raises(RuntimeError, match="not 7 and 14"):
        ray_figures(history[:1], c)
    assert warmup_excess(1.0, 10, 2.0, 5) == 0.0  # faster than the steady rate: no excess


def test_a_fast_model_is_timed_over_the_asked_seconds():
    assert timed_iterations(50.0, 20, 2.0) == 100  # 50 iterations/s for 2 s
    assert timed_iterations(4.0, 20, 2.0) == 20  # a slow model: --steps
    assert timed_iterations(33.3, 20, 1.0) == 34
    assert timed_iterations(None, 20, 2.0) == timed_iterations(50.0, 20, 0.0) == 20


def test_configurations_that_cannot_run_here_say_why(exps):
    configs = configurations(exps[:1], workers=3, steps=2, warmup=1, batch_size=None, precisions=["fp32"],
                             compiles=[False], use_gpu=False, cpus_per_worker=1.0)
    assert [skip_reason(c, "cpu", 2.0, 0) for c in configs] == [
        None, None, "3 workers x 1 CPUs exceed Ray's 2 CPUs"]
    gpu = [dataclasses.replace(c, exp=dataclasses.replace(c.exp, train=dataclasses.replace(
        c.exp.train, scaling=dataclasses.replace(c.exp.train.scaling, use_gpu=True)))) for c in configs]
    assert skip_reason(gpu[0], "cuda", 2.0, 0).startswith("cuda absent")
    assert skip_reason(gpu[2], "cuda", 8.0, 2) == "3 workers need 3 GPUs, 2 here"


def test_list_arguments():
    assert parse_bools("false,TRUE") == [False, True]
    assert parse_names("fp32, bf16", ("fp32", "bf16")) == ["fp32", "bf16"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown precision 'fp16'"):
        parse_names("fp16", ("fp32", "bf16"), "precision")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown boolean 'maybe'"):
        parse_bools("maybe")


def test_gm_bench_hands_throughput_its_own_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["throughput", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "python -m gm.bench throughput" in out and "--precisions" in out and "--workers" in out
