"""The Tuner driver: Ray Tune over a function that launches one TorchTrainer per trial.

This is Ray's current pattern for Train V2 (`Tuner(trainer)` is deprecated): each
trial function builds a TorchTrainer whose `TuneReportCallback` forwards the
workers' reports to Tune, so schedulers such as ASHA see the validation score as
training goes and can stop a trial (and its Train workers) early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from gm.config import ExperimentConfig
from gm.training.driver import clear_run, make_trainer
from gm.training.loop import experiment_from_dict
from tune.sweep import SweepConfig, apply_overrides, to_tune_domain

METRIC, MODE = "val_score", "min"


def trial_run_name(trial_id: str) -> str:
    return f"train-{trial_id}"


def make_trial_fn(exp: ExperimentConfig, data_dir: Path, storage: str):
    """The function each Tune trial runs: a whole Ray Train run with the trial's overrides."""
    base = exp.to_dict()
    data_dir = str(Path(data_dir).resolve())

    def trial_fn(config: dict) -> None:
        from ray import tune
        from ray.tune.integration.ray_train import TuneReportCallback

        trial_exp = experiment_from_dict(apply_overrides(base, config))
        name = trial_run_name(tune.get_context().get_trial_id())
        trainer = make_trainer(trial_exp, Path(data_dir), storage, name, callbacks=[TuneReportCallback()])
        result = trainer.fit()
        if result.error is not None:
            raise result.error

    return trial_fn


def concurrency(sweep: SweepConfig, exp: ExperimentConfig) -> int:
    """Trials that fit at once: the cluster's CPUs (or GPUs) over one trial's workers' needs."""
    import ray

    if sweep.max_concurrent_trials:
        return sweep.max_concurrent_trials
    s = exp.train.scaling
    total = ray.cluster_resources()
    workers = max(1, s.num_workers)
    fits = [int((total.get("CPU", 1) - sweep.trial_driver_cpus) // (workers * s.cpus_per_worker))]
    if s.use_gpu:
        fits.append(int(total.get("GPU", 0) // (workers * s.gpus_per_worker)))
    return max(1, min(fits))


@dataclass
class SweepResult:
    grid: object  # ray.tune.ResultGrid
    best_overrides: dict
    best_score: float
    best_trial_id: str
    concurrency: int


def run_sweep(sweep: SweepConfig, exp: ExperimentConfig, data_dir: Path, storage: str, name: str,
              resume: bool = False) -> SweepResult:
    """Run (or, with `resume`, continue) a sweep; returns the grid and its best trial."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    # The trial function only drives a TorchTrainer: it holds no CPU by default, so the CPUs go to
    # Train workers (2 cores run 2 one-worker trials). Ray refuses an empty bundle: ask for a little memory.
    trial_fn = tune.with_resources(make_trial_fn(exp, data_dir, storage),
                                   {"cpu": sweep.trial_driver_cpus, "memory": 64 * 2**20})
    path = f"{storage.rstrip('/')}/{name}"
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trial_fn, resume_unfinished=True, restart_errored=False)
        n = concurrency(sweep, exp)
    else:
        clear_run(storage, name)
        # ASHA counts Tune iterations: one per report, i.e. per train.eval_every steps
        max_t = math.ceil(exp.train.steps / exp.train.eval_every)
        scheduler = (ASHAScheduler(max_t=max_t, grace_period=min(sweep.grace_period, max_t),
                                   reduction_factor=sweep.reduction_factor)
                     if sweep.scheduler == "asha" else FIFOScheduler())
        n = concurrency(sweep, exp)
        tuner = tune.Tuner(
            trial_fn,
            param_space={k: to_tune_domain(d) for k, d in sweep.space.items()},
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, scheduler=scheduler, num_samples=sweep.num_samples,
                max_concurrent_trials=n,
                search_alg=_seeded_random_search(sweep.seed),
            ),
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
        )
    grid = tuner.fit()
    ok = [r for r in grid if r.error is None and r.metrics and math.isfinite(r.metrics.get(METRIC, math.inf))]
    if not ok:
        errors = "; ".join(str(r.error).splitlines()[0] for r in grid if r.error is not None)[:500]
        raise RuntimeError(f"sweep {name}: no trial finished with a finite {METRIC} ({errors or 'no results'})")
    best = min(ok, key=lambda r: trial_score(r, exp.train.select))
    return SweepResult(grid=grid, best_overrides=dict(best.config), best_score=trial_score(best, exp.train.select),
                       best_trial_id=_trial_id(best), concurrency=n)


def _seeded_random_search(seed: int):
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed)


def trial_score(result, select: str = "best") -> float:
    """A trial's score under the experiment's checkpoint rule: its lowest report ("best") or its final one
    ("last"), so the trial ranked first is the one whose exported checkpoint scores best."""
    df = result.metrics_dataframe
    if select == "best" and df is not None and METRIC in df:
        return float(df[METRIC].min())
    return float(result.metrics.get(METRIC, math.inf))


def _trial_id(result) -> str:
    return str(result.metrics.get("trial_id") or Path(result.path).name)
