"""Training throughput: samples/s of one model and one dataset under every way we can run its step loop.

    python -m gm.bench throughput [--models dcgan,glow,pixelcnnpp] [--workers 2] [--steps 20] [--seconds 2]
                                  [--warmup 5] [--batch-size B] [--device auto|cpu|cuda]
                                  [--precisions fp32,bf16] [--compile false,true] [--cpus-per-worker 1]

For each model (an experiment of a profile, on its prepared dataset) it times, with the same
model config, data and per-worker batch size everywhere:

- bare: the step loop (`Stepper` over an in-memory shard) in this process, no Ray;
- ray-1: `gm.training.driver.fit` under Ray Train with one worker;
- ray-N: the same with N data-parallel workers (N x the samples per iteration);

each in fp32 and bf16 (`train.precision`), eager and compiled (`train.compile`). Samples/s is
timed optimizer iterations x batch size x workers over the seconds spent stepping (rank 0's
`train_seconds`: no start-up, data loading, validation or checkpoints). The timed iterations are
the same for all of a model's configurations: at least --steps, and as many as its bare fp32 eager
loop runs in --seconds (measured first), so a fast model is not timed over milliseconds. Warm-up
iterations (compilation, first-touch allocations) run first and are left out of the rate; the
table prints what they cost beyond the steady rate. Under Ray the warm-up is the run's first
validation interval (`eval_every`), as many iterations as are timed (at least --warmup), so a run
reports twice and its second interval is the timed one. The ratio column is against the bare fp32
eager figure of the same model. A configuration that cannot run here (no GPU, bf16 unsupported,
more workers than CPUs or GPUs, an error while compiling) is printed as skipped, with the reason.

    python -m gm.bench throughput --generation 2048,8000 [--generation-batch 1] [--wavenet k=v,...]
                                  [--device auto|cpu|cuda] [--cpus-per-worker 1]

instead times WaveNet's sampling on synthetic (1, T) μ-law audio, untrained weights (the rate does not
depend on them): samples/s = batch x T / seconds with the queue generator (Paine et al. 2016, O(layers)
per step) and with the naive one (a forward pass over the receptive field per step), side by side with
their ratio. No prepared data, no Ray; on CPU it runs on --cpus-per-worker threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from gm import stage
from gm.core.config import ConfigError, build
from gm.data.audio import MU_LAW_LEVELS
from gm.data.dataspec import DataSpec
from gm.data.io import data_spec, read_split
from gm.models.base import build_model
from gm.models.wavenet import WaveNetConfig
from gm.params import load_params
from gm.training.cluster import init_ray
from gm.training.driver import fit
from gm.training.engine import Stepper, run_steps
from gm.training.experiment import ExperimentConfig, ScalingParams, experiment_from_dict
from gm.training.loop import BatchStream, InMemory

# short name -> (profile, experiment): the experiments the benchmark names by default
MODELS = {
    "dcgan": ("profiles/adversarial.yaml", "dcgan-digits"),
    "glow": ("profiles/likelihood.yaml", "glow-digits"),
    "pixelcnnpp": ("profiles/likelihood.yaml", "pixelcnnpp-digits"),
}
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Config:
    """One timed configuration: `exp` carries the precision, compile flag, steps and scaling it runs with."""

    model: str  # the experiment's name
    runner: str  # "bare", "ray-1" or "ray-<N>"
    workers: int
    precision: str
    compiled: bool
    exp: ExperimentConfig
    warmup: int  # steps run before the timed ones
    steps: int  # timed steps


@dataclass
class Measurement:
    config: Config
    samples_per_s: float | None = None
    warmup_s: float | None = None  # seconds the warm-up steps took beyond the steady rate
    skipped: str | None = None
    note: str = ""  # e.g. the graph breaks of a compiled bare run


# ------------------------------------------------------------------------------ arguments


def parse_names(text: str, allowed=None, what: str = "value") -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}s")
    if allowed is not None:
        bad = [n for n in names if n not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {what} {bad[0]!r}; expected some of: {', '.join(allowed)}")
    return names


def parse_bools(text: str) -> list[bool]:
    table = {"false": False, "no": False, "0": False, "eager": False, "true": True, "yes": True, "1": True}
    names = [n.lower() for n in parse_names(text, what="boolean")]
    bad = [n for n in names if n not in table]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown boolean {bad[0]!r}; expected false or true")
    return [table[n] for n in names]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gm.bench throughput",
                                description="training samples/s: bare loop, Ray Train 1 and N workers, "
                                            "fp32/bf16, eager/compiled")
    p.add_argument("--models", type=str, default="dcgan,glow,pixelcnnpp",
                   help=f"comma-separated: {', '.join(MODELS)}, or PROFILE.yaml:EXPERIMENT")
    p.add_argument("--workers", type=int, default=2, help="N of the ray-N configuration (1: ray-1 only)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer iterations per configuration, at least")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="more timed iterations for a fast model: as many as its bare fp32 eager loop runs in "
                        "this many seconds (measured first; 0: exactly --steps)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (Ray: as many as are timed, at least this)")
    p.add_argument("--batch-size", type=int, default=None, help="per worker; default: each experiment's own")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when present")
    p.add_argument("--precisions", type=lambda s: parse_names(s, PRECISIONS, "precision"), default=list(PRECISIONS))
    p.add_argument("--compile", type=parse_bools, default=[False, True], help="e.g. false,true")
    p.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="CPUs a Ray worker reserves; also the bare loop's torch threads on CPU")
    p.add_argument("--generation", type=lambda s: [int(t) for t in parse_names(s, what="length")], default=None,
                   help="instead: WaveNet sampling, cached vs naive, on (1, T) audio for these T, e.g. 2048,8000")
    p.add_argument("--generation-batch", type=int, default=1, help="sequences drawn at once (--generation)")
    p.add_argument("--wavenet", type=parse_overrides, default={},
                   help="WaveNet config fields for --generation, e.g. layers_per_stack=10,stacks=3")
    return p


def parse_overrides(text: str) -> dict:
    """"a=1,b=2.5" -> {"a": 1, "b": 2.5} (ints, floats and booleans as such; checked by the config)."""
    out = {}
    for item in parse_names(text, what="field=value"):
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected field=value, got {item!r}")
        low = value.lower()
        if low in ("true", "false"):
            out[name.strip()] = low == "true"
            continue
        try:
            out[name.strip()] = int(value)
        except ValueError:
            try:
                out[name.strip()] = float(value)
            except ValueError:
                out[name.strip()] = value
    return out


# ------------------------------------------------------------------------ configurations


def load_models(root: Path, names: list[str]) -> dict[str, tuple[ExperimentConfig, Path]]:
    """{experiment name: (experiment, params file)} for short names or PROFILE.yaml:EXPERIMENT."""
    out = {}
    for n in names:
        if n in MODELS:
            profile, exp_name = MODELS[n]
        elif ":" in n:
            profile, exp_name = n.rsplit(":", 1)
        else:
            raise ValueError(f"--models: unknown model {n!r}; expected one of {', '.join(MODELS)} "
                             f"or PROFILE.yaml:EXPERIMENT")
        path = root / profile
        out[exp_name] = (load_params(path).experiment(exp_name), path)
    return out


def configurations(exps: list[ExperimentConfig], *, workers: int, steps: int, warmup: int, batch_size: int | None,
                   precisions: list[str], compiles: list[bool], use_gpu: bool,
                   cpus_per_worker: float) -> list[Config]:
    """Every (model, runner, precision, compiled) to time, in print order, with its experiment set up.

    One model's configurations share its model config, data and per-worker batch size. The bare
    loop runs `warmup` then `steps` iterations; a Ray run runs max(warmup, steps) + steps with
    `eval_every` at the first interval's end, which both warms up and leaves one timed interval.
    """
    ray_warmup = max(warmup, steps)
    runners = [("bare", 1), ("ray-1", 1)] + ([(f"ray-{workers}", workers)] if workers > 1 else [])
    out = []
    for exp in exps:
        batch = batch_size or exp.train.batch_size
        for runner, n in runners:
            bare = runner == "bare"
            w = warmup if bare else ray_warmup
            for precision in precisions:
                for compiled in compiles:
                    train = dataclasses.replace(
                        exp.train, precision=precision, compile=compiled, batch_size=batch,
                        steps=w + steps, eval_every=w, seeds=1, max_failures=0, fail_once_at_step=None,
                        scaling=ScalingParams(num_workers=n, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker,
                                              gpus_per_worker=1.0))
                    # through the workers' own parser: a config they would refuse fails here, named
                    run = experiment_from_dict(dataclasses.replace(exp, train=train).to_dict())
                    out.append(Config(exp.name, runner, n, precision, compiled, run, w, steps))
    return out


def skip_reason(c: Config, device: str, cpus: float, gpus: int) -> str | None:
    """Why configuration `c` cannot run on this machine, or None."""
    if device == "cuda" and gpus == 0:
        return "cuda absent (torch.cuda.is_available() is False)"
    if device == "cuda" and c.precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "bf16 unsupported by this GPU"
    if c.runner != "bare":
        s = c.exp.train.scaling
        if s.use_gpu and c.workers * s.gpus_per_worker > gpus:
            return f"{c.workers} workers need {c.workers * s.gpus_per_worker:g} GPUs, {gpus} here"
        if c.workers * s.cpus_per_worker > cpus:
            return f"{c.workers} workers x {s.cpus_per_worker:g} CPUs exceed Ray's {cpus:g} CPUs"
    return None


# ---------------------------------------------------------------------------- arithmetic


def warmup_excess(warm_seconds: float, warm_steps: int, timed_seconds: float, timed_steps: int) -> float:
    """Seconds the warm-up steps took beyond what as many steps take at the timed rate (compilation,
    first-touch allocations); never negative."""
    return max(0.0, warm_seconds - warm_steps * timed_seconds / timed_steps)


def ray_figures(history: list[dict], c: Config) -> tuple[float, float]:
    """(samples/s, warm-up excess s) of a Ray run from rank 0's curve: the report at the end of the
    warm-up interval and the final one carry the cumulative stepping seconds."""
    at = {int(h["step"]): float(h["train_seconds"]) for h in history if "train_seconds" in h}
    end = c.warmup + c.steps
    if c.warmup not in at or end not in at:
        raise RuntimeError(f"the run reported steps {sorted(at)}, not {c.warmup} and {end}")
    timed = at[end] - at[c.warmup]
    return c.steps * c.exp.train.batch_size * c.workers / timed, warmup_excess(at[c.warmup], c.warmup, timed, c.steps)


def timed_iterations(rate: float | None, steps: int, seconds: float) -> int:
    """At least `steps`, and as many as `seconds` of stepping at `rate` iterations/s take: a fast
    model's few steps would otherwise be timed in milliseconds, at the mercy of a busy machine."""
    if not rate or not math.isfinite(rate) or seconds <= 0:
        return steps
    return max(steps, math.ceil(seconds * rate))


def table_rows(measurements: list[Measurement]) -> list[dict]:
    """One row per measurement, with its ratio to the same model's bare fp32 eager samples/s (None
    when that baseline or this figure is missing)."""
    base = {m.config.model: m.samples_per_s for m in measurements
            if m.config.runner == "bare" and m.config.precision == "fp32" and not m.config.compiled
            and m.samples_per_s}
    rows = []
    for m in measurements:
        c, b = m.config, base.get(m.config.model)
        rows.append({"model": c.model, "config": c.runner, "precision": c.precision,
                     "compiled": c.compiled, "batch": c.exp.train.batch_size, "iters": c.steps, "samples_per_s": m.samples_per_s,
                     "ratio": m.samples_per_s / b if b and m.samples_per_s else None,
                     "warmup_s": m.warmup_s, "skipped": m.skipped, "note": m.note})
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"  {'model':<20} {'config':<7} {'prec':<5} {'compiled':<8} {'batch':>5} {'iters':>5} {'samples/s':>10} "
            f"{'x bare':>7} {'warm-up s':>9}")
    lines = [head, "  " + "-" * (len(head) - 2)]
    for r in rows:
        sps = f"{r['samples_per_s']:>10.1f}" if r["samples_per_s"] is not None else f"{'-':>10}"
        ratio = f"{r['ratio']:>7.2f}" if r["ratio"] is not None else f"{'-':>7}"
        warm = f"{r['warmup_s']:>9.1f}" if r["warmup_s"] is not None else f"{'-':>9}"
        line = (f"  {r['model']:<20} {r['config']:<7} {r['precision']:<5} {'yes' if r['compiled'] else 'no':<8} "
                f"{r['batch']:>5} {r['iters']:>5} {sps} {ratio} {warm}")
        if r["skipped"]:
            line += f"  skipped: {r['skipped']}"
        elif r.get("note"):
            line += f"  {r['note']}"
        lines.append(line)
    return "\n".join(lines)


def machine_lines(device: str) -> list[str]:
    if device == "cuda" and torch.cuda.is_available():
        what = f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()} (CUDA {torch.version.cuda})"
    else:
        what = cpu_name()
    return [f"device: {device}: {what}",
            f"CPUs: {os.cpu_count()} (torch threads {torch.get_num_threads()}), torch {torch.__version__}, "
            f"ray {ray.__version__}, python {platform.python_version()}"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------- runs


def bare_run(c: Config, data_dir: Path, device: torch.device) -> tuple[float, float, str]:
    """(samples/s, warm-up excess s, note) of the step loop in this process."""
    tp = c.exp.train
    spec = data_spec(data_dir)
    x, y = read_split(data_dir, "train")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(tp.scaling.cpus_per_worker)))  # what one Ray worker gets
    torch.compiler.reset()  # no graphs of an earlier configuration's model
    try:
        torch.manual_seed(tp.seed)
        model = build_model(c.exp.family, c.exp.model, spec).to(device)
        stepper = Stepper(model, spec, device, torch.Generator(device=device).manual_seed(tp.seed),
                          tp.lr_schedule, tp.steps, precision=tp.precision, compile=tp.compile)
        batches = iter(BatchStream(InMemory(x, y), spec.shape, tp.batch_size, True, tp.seed))
        warm = timed_steps(stepper, batches, 0, c.warmup, device)
        timed = timed_steps(stepper, batches, c.warmup, c.warmup + c.steps, device)
    finally:
        torch.set_num_threads(threads)
    note = f"{stepper.graph_breaks} graph breaks" if tp.compile else ""
    return c.steps * tp.batch_size / timed, warmup_excess(warm, c.warmup, timed, c.steps), note


def timed_steps(stepper: Stepper, batches, start: int, stop: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    run_steps(stepper, batches, start, stop)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def ray_run(c: Config, data_dir: Path) -> tuple[float, float, str]:
    """(samples/s, warm-up excess s, note) of one Ray Train run, from rank 0's stepping seconds."""
    with tempfile.TemporaryDirectory() as storage:
        out = fit(c.exp, data_dir, storage, f"throughput-{c.model}")
    if out.diverged:
        raise RuntimeError(f"diverged: {out.diverged}")
    breaks = out.history[-1].get("graph_breaks") if out.history else None
    return (*ray_figures(out.history, c), f"{breaks:.0f} graph breaks" if breaks is not None else "")


def measure(c: Config, data_dir: Path, device: torch.device) -> Measurement:
    try:
        sps, warm, note = bare_run(c, data_dir, device) if c.runner == "bare" else ray_run(c, data_dir)
    except Exception as e:  # a configuration that fails here is reported, the others still run
        first = (str(e).strip().splitlines() or [""])[0]
        return Measurement(c, skipped=f"{type(e).__name__}: {first[:160]}")
    if not math.isfinite(sps):
        return Measurement(c, skipped="no finite rate")
    return Measurement(c, samples_per_s=sps, warmup_s=warm, note=note)


def bench_throughput(root: Path, args: argparse.Namespace) -> list[dict]:
    device_name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device("cuda" if device_name == "cuda" else "cpu")
    models = load_models(root, parse_names(args.models, what="model"))
    gpus = torch.cuda.device_count() if device_name == "cuda" else 0
    setup = dict(workers=args.workers, warmup=args.warmup, batch_size=args.batch_size,
                 use_gpu=device_name == "cuda", cpus_per_worker=args.cpus_per_worker)
    print("training throughput (samples/s = timed iterations x batch x workers / stepping seconds)")
    for line in machine_lines(device_name):
        print("  " + line)
    init_ray(load_params(next(iter(models.values()))[1]).ray)
    cpus = ray.cluster_resources().get("CPU", 0.0)
    print(f"  Ray: {cpus:g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs")
    print(f"  timed iterations (iters): at least {args.steps}, and as many as the bare fp32 eager loop runs in "
          f"{args.seconds:g} s; warm-up: {args.warmup} iterations (Ray: as many as it times, at least "
          f"{args.warmup}); warm-up s = the warm-up's cost beyond the steady rate\n", flush=True)
    measurements: list[Measurement] = []
    for exp, _ in models.values():
        data_dir = stage.prepared_dir(exp.dataset, root)
        steps = args.steps
        probe = configurations([exp], **{**setup, "workers": 1}, steps=args.steps, precisions=["fp32"],
                               compiles=[False])[0]  # the bare fp32 eager loop
        if args.seconds > 0 and skip_reason(probe, device_name, cpus, gpus) is None:
            m = measure(probe, data_dir, device)
            if m.samples_per_s:
                steps = timed_iterations(m.samples_per_s / probe.exp.train.batch_size, args.steps, args.seconds)
        for c in configurations([exp], **setup, steps=steps, precisions=args.precisions, compiles=args.compile):
            why = skip_reason(c, device_name, cpus, gpus)
            measurements.append(Measurement(c, skipped=why) if why else measure(c, data_dir, device))
            print(format_table(table_rows(measurements)).splitlines()[-1], flush=True)  # progress, one per run
    rows = table_rows(measurements)
    print("\n" + format_table(rows))
    return rows


# ------------------------------------------------------------------------ WaveNet generation


def generation_rate(model, n: int, cached: bool, device: torch.device) -> float:
    """Samples/s (n x T / seconds) of one `model.sample(n, cached=...)` call."""
    g = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    model.sample(n, generator=g, cached=cached)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n * model.data.dim / (time.perf_counter() - t0)


def bench_generation(lengths: list[int], batch: int, overrides: dict, device: torch.device,
                     threads: int) -> list[dict]:
    """WaveNet's cached and naive sampling rates on (1, T) μ-law audio, one row per T."""
    config = build(WaveNetConfig, overrides, "--wavenet")
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    rows = []
    try:
        for length in lengths:
            torch.manual_seed(0)
            spec = DataSpec(shape=(1, length), kind="audio", levels=MU_LAW_LEVELS)
            model = build_model("wavenet", config, spec).to(device).eval()
            model.sample(batch, generator=torch.Generator().manual_seed(0), cached=True)  # warm-up: first-touch
            row = {"length": length, "batch": batch, "cached_per_s": generation_rate(model, batch, True, device)}
            print(f"  T={length}: cached {row['cached_per_s']:.1f} samples/s; naive ...", flush=True)
            row["naive_per_s"] = generation_rate(model, batch, False, device)
            rows.append(row)
    finally:
        torch.set_num_threads(before)
    return rows


def format_generation_table(rows: list[dict]) -> str:
    head = f"  {'T':>6} {'batch':>5} {'cached/s':>10} {'naive/s':>10} {'x naive':>8}"
    lines = [head, "  " + "-" * (len(head) - 2)]
    for r in rows:
        cached, naive = r["cached_per_s"], r["naive_per_s"]
        ratio = f"{cached / naive:>8.1f}" if cached and naive else f"{'-':>8}"
        naive_text = f"{naive:>10.1f}" if naive else f"{'-':>10}"
        lines.append(f"  {r['length']:>6} {r['batch']:>5} {cached:>10.1f} {naive_text} {ratio}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.generation is not None:
        if min(args.generation) < 1 or args.generation_batch < 1:
            p.error("--generation lengths and --generation-batch must be at least 1")
        device_name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(device_name)
        try:
            config = build(WaveNetConfig, args.wavenet, "--wavenet")
        except ConfigError as e:
            p.error(str(e))
        print(f"WaveNet generation (samples/s = batch x T / seconds; receptive field {config.receptive_field})")
        for line in machine_lines(device_name):
            print("  " + line)
        rows = bench_generation(args.generation, args.generation_batch, args.wavenet, device,
                                max(1, int(args.cpus_per_worker)))
        print("\n" + format_generation_table(rows))
        return
    if min(args.workers, args.steps, args.warmup) < 1 or args.batch_size is not None and args.batch_size < 1:
        p.error("--workers, --steps, --warmup and --batch-size must be at least 1")
    bench_throughput(stage.root(), args)
