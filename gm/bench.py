"""Benchmarks that print figures (never timed tests).

    python -m gm.bench [stages|ray|eval|sampling|tune|all] [--experiment E] [--steps 1000] [--repeats 2]
                       [--eval-experiment gan-digits] [--eval-samples 10000]
                       [--params profiles/likelihood.yaml] [--dataset digits] [--samples 1000]
                       [--sweep wgan_gp-grid25] [--trials 4] [--asha-samples 16]
    python -m gm.bench throughput ...   (gm.bench_throughput: samples/s in a bare loop)
    python -m gm.bench estimators ...   (gm.bench_estimators: the CatVAE's gradient estimators' variance)

1. stages: per-stage wall time of the last pipeline run (recorded by every stage in
   artifacts/timings/).
2. ray: Ray Train overhead: the same step loop (same model, data, batch size, threads)
   in a bare process and under Ray Train with one worker, as steps/s and their
   ratio, plus the seconds Ray spends outside the loop (worker start-up, data
   shards, teardown).
3. eval: time and peak memory of a full evaluation of one trained image experiment
   with 10,000 samples (sampling, features, FD/KID/PRDC, classes, likelihood).
4. sampling: samples per second of every experiment of a params file on one dataset, on
   one thread and on all, from freshly built models (the cost depends on the architecture,
   not on the weights): an autoregressive model pays one network pass per pixel.
5. tune: ASHA against random search at equal compute on one sweep of params.yaml: random runs
   `--trials` full-budget trials (FIFO); ASHA draws from the same space with the same searcher
   seed until the optimizer steps of all its trials reach the same total. Prints the best
   validation score each found and the compute each spent (steps, trial-seconds, wall time),
   for each of `--repeats` searcher seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from ray.tune import Stopper

from gm import stage
from gm.core.layout import Layout
from gm.data.io import data_spec, read_split
from gm.models.base import build_model
from gm.training.driver import fit
from gm.training.cluster import init_ray
from gm.training.engine import Stepper, run_steps
from gm.training.loop import BatchStream, InMemory
from tune.driver import run_sweep
from gm.inference import sample_data
from gm.training.cluster import storage_path
from gm.params import load_params
from gm.evaluation import evaluate, load_feature_space, load_sampler
from gm.bench_throughput import main as throughput_main
from gm.bench_estimators import main as estimators_main


def stage_times(root: Path) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted(Layout(root).timings_root.glob("*.json"))]
    return sorted(rows, key=lambda r: r["started"])


def bare_steps_per_s(exp, data_dir: Path, steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    spec = data_spec(data_dir)
    x, y = read_split(data_dir, "train")
    torch.manual_seed(exp.train.seed)
    model = build_model(exp.family, exp.model, spec)
    stepper = Stepper(model, spec, torch.device("cpu"), torch.Generator().manual_seed(exp.train.seed),
                      exp.train.lr_schedule, exp.train.steps)
    batches = iter(BatchStream(InMemory(x, y), spec.shape, exp.train.batch_size, True, exp.train.seed))
    run_steps(stepper, batches, 0, 10)  # warm-up, as the Ray loop's first steps also pay it
    _, seconds = run_steps(stepper, batches, 10, 10 + steps)
    return steps / seconds


def ray_run(exp, data_dir: Path, steps: int) -> dict:
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, steps=steps, eval_every=steps))
    with tempfile.TemporaryDirectory() as d:
        out = fit(exp, data_dir, d, "bench")
    return {"steps_per_s": steps / out.train_seconds, "wall": out.wall_seconds,
            "outside_loop": out.wall_seconds - out.worker_seconds,
            "validation": out.worker_seconds - out.train_seconds}


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_eval(root: Path, name: str, n: int) -> None:
    params = stage.params(root)
    exp = params.experiment(name)
    model_dir = Layout(root).train(name).seed_models()
    if not model_dir:
        print(f"eval: no trained model for {name}: run `make run` first")
        return
    data_dir = stage.prepared_dir(exp.dataset, root)
    eval_params = dataclasses.replace(params.evaluate, n_samples=n)
    before = peak_rss_mb()
    t0 = time.perf_counter()
    sampler = load_sampler(model_dir[0], eval_params)
    space = load_feature_space(Layout(root).featurizer(exp.dataset))
    metrics, _ = evaluate(sampler, data_dir, eval_params, space)
    wall = time.perf_counter() - t0
    print(f"\nfull evaluation of {name} with {n} samples: {wall:.1f} s wall, peak RSS {peak_rss_mb():.0f} MB "
          f"(process before: {before:.0f} MB)")
    parts = {k: metrics[k] for k in ("sample_seconds", "feature_seconds", "log_prob_seconds") if k in metrics}
    print("  " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
          + f"; metrics and the rest {wall - sum(parts.values()):.2f} s")
    print("  " + ", ".join(f"{k} {metrics[k]:.4g}" for k in ("fd", "kid", "precision", "recall", "density",
                                                              "coverage", "class_coverage") if k in metrics))


def bench_sampling(root: Path, params_path: Path, dataset: str, n: int) -> None:
    params = load_params(params_path)
    spec = data_spec(stage.prepared_dir(dataset, root))
    threads = torch.get_num_threads()
    print(f"sampling speed, {n} samples of {dataset} per run ({params_path.name}; untrained models):")
    print(f"  {'experiment':<26} {'family':<16} {'1 thread':>12} {f'{threads} threads':>12}")
    for name, exp in params.experiments.items():
        if exp.dataset != dataset:
            continue
        torch.manual_seed(0)
        model = build_model(exp.family, exp.model, spec).eval()
        rates = []
        for t in (1, threads):
            torch.set_num_threads(t)
            sample_data(model, spec, min(n, 64), seed=1)  # warm-up
            t0 = time.perf_counter()
            sample_data(model, spec, n, seed=0)
            rates.append(n / (time.perf_counter() - t0))
        print(f"  {name:<26} {exp.family:<16} {rates[0]:>10.0f}/s {rates[1]:>10.0f}/s")
    torch.set_num_threads(threads)


class StepBudget(Stopper):
    """Tune stopper: ends the whole sweep once its trials' optimizer steps add up to `budget`."""

    def __init__(self, budget: int):
        self.budget, self.steps = budget, {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.steps[trial_id] = max(self.steps.get(trial_id, 0), int(result.get("step", 0)))
        return False

    def stop_all(self) -> bool:
        return sum(self.steps.values()) >= self.budget


def sweep_compute(grid) -> dict:
    """Optimizer steps and trial-seconds a finished sweep spent, over all its trials."""
    steps = secs = 0.0
    for r in grid:
        df = r.metrics_dataframe
        if df is not None and len(df):
            steps += float(df["step"].max())
            secs += float(df["time_total_s"].max()) if "time_total_s" in df else 0.0
    return {"steps": int(steps), "trial_seconds": secs, "trials": len(list(grid))}


def bench_tune(root: Path, sweep_name: str, trials: int, asha_samples: int, repeats: int) -> None:
    params = stage.params(root)
    base = params.sweeps[sweep_name]
    exp = params.experiment(base.experiment)
    data_dir = stage.prepared_dir(exp.dataset, root)
    budget = trials * exp.train.steps
    init_ray(params.ray)
    storage = storage_path(params.ray, root)

    print(f"ASHA against random search on {sweep_name} ({exp.family} on {exp.dataset}, knobs "
          f"{', '.join(base.space)}): equal budget of {budget} optimizer steps ({trials} full trials of "
          f"{exp.train.steps}), validation {'W1' if exp.dataset != 'digits' else 'score'}, lower is better")
    print(f"  {'seed':>4} {'method':<8} {'best val':>9} {'trials':>7} {'steps':>7} {'trial-s':>8} {'wall s':>7}  best knobs")
    found = {"random": [], "asha": []}
    for seed in range(repeats):
        for method in ("random", "asha"):
            sweep = dataclasses.replace(base, seed=base.seed + seed, scheduler="fifo" if method == "random" else "asha",
                                        num_samples=trials if method == "random" else asha_samples)
            t0 = time.perf_counter()
            res = run_sweep(sweep, exp, data_dir, storage, f"bench-tune-{sweep_name}-{method}",
                            resume=False, stopper=StepBudget(budget) if method == "asha" else None)
            wall = time.perf_counter() - t0
            c = sweep_compute(res.grid)
            found[method].append(res.best_score)
            knobs = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                              for k, v in res.best_overrides.items())
            print(f"  {seed:>4} {method:<8} {res.best_score:>9.4f} {c['trials']:>7} {c['steps']:>7} "
                  f"{c['trial_seconds']:>8.0f} {wall:>7.0f}  {knobs}", flush=True)
    for method, v in found.items():
        print(f"  {method:<8} best val over {repeats} seed(s): {statistics.fmean(v):.4f}"
              + (f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else ""))


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["throughput"]:  # its own arguments and defaults: python -m gm.bench throughput --help
        return throughput_main(argv[1:])
    if argv[:1] == ["estimators"]:  # the CatVAE's gradient estimators: python -m gm.bench estimators --help
        return estimators_main(argv[1:])
    p = argparse.ArgumentParser(description="gm benchmarks")
    p.add_argument("what", nargs="?", default="all",
                   choices=["stages", "ray", "eval", "sampling", "tune", "throughput", "estimators", "all"],
                   help="throughput and estimators take their own options (gm.bench_throughput, "
                        "gm.bench_estimators): gm.bench throughput --help")
    p.add_argument("--experiment", default="wgan_gp-grid25")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--eval-experiment", default="gan-digits")
    p.add_argument("--eval-samples", type=int, default=10000)
    p.add_argument("--params", type=Path, default=Path("profiles/likelihood.yaml"))
    p.add_argument("--dataset", default="digits")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--sweep", default="wgan_gp-grid25")
    p.add_argument("--trials", type=int, default=4, help="random search's full-budget trials (the budget)")
    p.add_argument("--asha-samples", type=int, default=16, help="configurations ASHA may draw")
    args = p.parse_args(argv)
    if args.what in ("throughput", "estimators"):
        p.error(f"{args.what} must come first, followed by its own options: gm.bench {args.what} --help")
    root = stage.root()
    if args.what in ("stages", "all"):
        bench_stages(root)
    if args.what in ("eval", "all"):
        bench_eval(root, args.eval_experiment, args.eval_samples)
    if args.what in ("ray", "all"):
        bench_ray(root, args.experiment, args.steps, args.repeats)
    if args.what in ("sampling", "all"):
        bench_sampling(root, root / args.params, args.dataset, args.samples)  # an absolute --params wins
    if args.what == "tune":  # minutes of training: only when asked for
        bench_tune(root, args.sweep, args.trials, args.asha_samples, args.repeats)


# the phases a stage or run records (gm.core.timing), in the order they happen
STAGE_PHASES = ("check", "ray_start", "mlflow_setup", "fits", "sweep", "trial_runs", "export", "registration")
RUN_PHASES = ("worker_start", "setup", "data", "steps", "validation", "checkpoint", "teardown")


def stage_total(row: dict) -> float:
    """A stage process's wall time: interpreter and imports, then main()."""
    return row.get("process_start", 0.0) + row["seconds"]


def profile_summary(rows: list[dict]) -> dict:
    """The pipeline run's wall time (first process start to last stage end, gaps included: DVC and
    process exits), its optimizer steps on the critical path (each train stage's slowest seed, each
    sweep's trials over its concurrency) and their share, and the time around each train stage."""
    if not rows:
        return {}
    start = min(r["started"] for r in rows)
    end = max(r["started"] + stage_total(r) for r in rows)
    steps = sum(r.get("phases", {}).get("steps", 0.0) for r in rows)
    train = [r for r in rows if r["stage"].startswith("train@")]
    around = {r["stage"]: stage_total(r) - r["phases"].get("steps", 0.0) - r["phases"].get("validation", 0.0)
              for r in train if "phases" in r}
    return {"wall": end - start, "stages": sum(stage_total(r) for r in rows), "steps": steps,
            "steps_share": steps / (end - start) if end > start else 0.0, "around_train": around}


def bench_stages(root: Path) -> None:
    rows = stage_times(root)
    if not rows:
        print("no stage timings yet: run `make run` first")
        return
    print("where each stage's time went in the last pipeline run (artifacts/timings), seconds:")
    print(f"  {'stage':<30} {'total':>7} {'process':>8}  phases")
    for r in rows:
        ph = r.get("phases", {})
        named = [f"{k} {ph[k]:.1f}" for k in STAGE_PHASES + ("steps", "validation") if k in ph]
        print(f"  {r['stage']:<30} {stage_total(r):7.1f} {r.get('process_start', 0.0):8.1f}  {', '.join(named)}")
        for label, run in sorted(r.get("runs", {}).items()):
            parts = [f"{k} {run[k]:.1f}" for k in ("fit",) + RUN_PHASES if k in run]
            print(f"  {'':<30} {'':>7} {'':>8}    {label}: {', '.join(parts)}")
    s = profile_summary(rows)
    print(f"\n  pipeline wall time {s['wall']:.0f} s ({s['wall'] / 60:.1f} min; stages {s['stages']:.0f} s, "
          f"the rest DVC and process exits)")
    print(f"  optimizer steps on the critical path {s['steps']:.0f} s: {100 * s['steps_share']:.0f}% of the wall time")
    if s["around_train"]:
        worst = max(s["around_train"], key=s["around_train"].get)
        print(f"  per train stage outside its slowest seed's steps and validation: mean "
              f"{statistics.fmean(s['around_train'].values()):.1f} s, most {s['around_train'][worst]:.1f} s ({worst})")


def noop_loop(config: dict) -> dict:
    """A Train loop function that does nothing but say when it ran."""
    now = time.time()
    return {"entered": now, "left": now}


def fit_floor(repeats: int) -> list[dict]:
    """Ray Train's own cost per fit, Ray already up: a TorchTrainer with one worker and an empty loop,
    as (seconds until the loop function ran, seconds after it returned, the whole fit)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = []
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            trainer = TorchTrainer(noop_loop, train_loop_config={"t": 0},
                                   scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                                   run_config=RunConfig(name=f"floor-{i}", storage_path=d))
            result = trainer.fit()
            t1 = time.time()
        ret = result.return_value or {}
        out.append({"start": ret.get("entered", t1) - t0, "end": t1 - ret.get("left", t1), "fit": t1 - t0})
    return out


def bench_ray(root: Path, name: str, steps: int, repeats: int) -> None:
    params = stage.params(root)
    exp = params.experiment(name)
    data_dir = stage.prepared_dir(exp.dataset, root)
    threads = max(1, int(exp.train.scaling.cpus_per_worker))  # Ray gives a worker this many threads
    init_ray(params.ray)
    bare, ray_ = [], []
    for _ in range(repeats):
        bare.append(bare_steps_per_s(exp, data_dir, steps, threads))
        ray_.append(ray_run(exp, data_dir, steps))
    b = statistics.mean(bare)
    r = statistics.mean(x["steps_per_s"] for x in ray_)
    print(f"\nstep loop of {name}, {steps} iterations, batch {exp.train.batch_size}, "
          f"{threads} thread(s), {repeats} repeats:")
    print(f"  bare process : {b:8.1f} steps/s  ({', '.join(f'{v:.1f}' for v in bare)})")
    ray_rates = ", ".join(f"{x['steps_per_s']:.1f}" for x in ray_)
    print(f"  Ray Train    : {r:8.1f} steps/s  ({ray_rates})")
    print(f"  ratio Ray/bare: {r / b:.3f}  (slowdown {100 * (1 - r / b):+.1f}%)")
    print(f"  Ray outside the loop (workers, data, teardown): "
          f"{statistics.mean(x['outside_loop'] for x in ray_):.1f} s per run; "
          f"validation + checkpoint {statistics.mean(x['validation'] for x in ray_):.1f} s")
    floor = fit_floor(repeats + 1)
    print(f"  Ray Train's floor per fit (empty loop, 1 worker, Ray already up; {len(floor)} fits): "
          + "; ".join(f"{f['fit']:.1f} s = {f['start']:.1f} to start + {f['end']:.1f} to end" for f in floor))


if __name__ == "__main__":
    main()
