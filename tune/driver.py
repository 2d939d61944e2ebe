"""The Tuner driver: Ray Tune over a function that launches one TorchTrainer per trial.

This is Ray's current pattern for Train V2 (`Tuner(trainer)` is deprecated): each
trial function builds a TorchTrainer whose callback forwards the workers' reports,
with their checkpoints, to Tune. Schedulers see the validation score as training
goes: ASHA stops a trial (and its Train workers) early, PBT restarts a weak trial
from a strong trial's checkpoint with perturbed knobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ray.train import Checkpoint, UserCallback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from gm.training.experiment import ExperimentConfig, experiment_from_dict
from gm.training.driver import clear_run, make_trainer, select_checkpoint, storage_fs
from tune.sweep import DOMAINS, SweepConfig, apply_overrides, extreme_values, to_tune_domain
from gm.core.config import to_dict
from gm.core.files import read_json

METRIC, MODE = "val_score", "min"


def trial_run_name(trial_id: str) -> str:
    return f"train-{trial_id}"


class TrialDiverged(RuntimeError):
    """A trial whose loss went NaN or infinite: Tune marks it failed with this reason."""


ACK_TIMEOUT_S = 3600.0  # a report waits this long for Tune to take it (a checkpoint copy on slow storage)


class Mailbox:
    """One report at a time from the Train controller to the trial function, and its acknowledgement
    back (a Ray actor holding no CPU: one process per trial segment)."""

    def __init__(self):
        import queue

        self.reports, self.acks = queue.Queue(maxsize=1), queue.Queue()

    def put(self, item) -> None:
        self.reports.put(item)

    def get(self, timeout: float):
        import queue

        try:
            return self.reports.get(timeout=timeout)
        except queue.Empty:
            return None

    def ack(self) -> None:
        self.acks.put(True)

    def wait_ack(self, timeout: float) -> bool:
        import queue

        try:
            return self.acks.get(timeout=timeout)
        except queue.Empty:
            return False


class ForwardToTrial(UserCallback):
    """Train callback (runs in the Train controller): hands every report, metrics and checkpoint, to the
    trial function and waits until Tune has taken it. Ray's own TuneReportCallback forwards only the
    metrics; PBT needs the checkpoint in Tune to exploit it, and a restored sweep resumes from it."""

    def __init__(self, mailbox):
        self.mailbox = mailbox

    def after_report(self, run_context, metrics, checkpoint) -> None:
        import ray

        # rank 0's metrics carry the validation score
        ray.get(self.mailbox.put.remote((dict(metrics[0]), checkpoint)))
        ray.get(self.mailbox.wait_ack.remote(ACK_TIMEOUT_S))


def finished_checkpoint_metrics(checkpoint, steps: int) -> dict | None:
    """The metrics stored with `checkpoint` when it is already at the run's last step, else None.

    PBT may hand a member the checkpoint of a stronger member that has just reported its final step;
    there is nothing left to train, and the restarted trial reports that checkpoint as its own."""
    with checkpoint.as_directory() as d:  # a damaged one fails the trial with the file's one line (CorruptFile)
        metrics = read_json(Path(d) / "metrics.json")
    return metrics if int(metrics.get("step", 0)) >= steps else None


def make_trial_fn(exp: ExperimentConfig, data_dir: Path, storage: str):
    """The function each Tune trial runs: a whole Ray Train run with the trial's overrides.

    The Train run starts from the trial's Tune checkpoint when it has one (PBT's exploit hands it the
    checkpoint of a stronger trial; a restored sweep hands it its own latest), else from scratch;
    every Train report goes to Tune with its checkpoint. A diverged run fails the trial with its reason.
    """
    base = exp.to_dict()
    data_dir = str(Path(data_dir).resolve())

    def trial_fn(config: dict) -> None:
        import threading

        import ray
        from ray import tune

        trial_exp = experiment_from_dict(apply_overrides(base, config))
        name = trial_run_name(tune.get_context().get_trial_id())
        start = tune.get_checkpoint()
        done = start and finished_checkpoint_metrics(start, trial_exp.train.steps)
        if done:
            with start.as_directory() as d:
                tune.report({**done, "resumed_from_step": done["step"]}, checkpoint=Checkpoint.from_directory(d))
            return
        clear_run(storage, name)  # never Train's own resume of an earlier segment of this trial
        mailbox = ray.remote(num_cpus=0, max_concurrency=4)(Mailbox).remote()
        trainer = make_trainer(trial_exp, Path(data_dir), storage, name,
                               callbacks=[ForwardToTrial(mailbox)], init_checkpoint=start)
        outcome: dict = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as e:  # noqa: BLE001  (re-raised in the trial's own thread)
                outcome["error"] = e

        runner = threading.Thread(target=fit, name=f"fit-{name}", daemon=True)
        runner.start()
        while True:
            item = ray.get(mailbox.get.remote(1.0))
            if item is None:
                if not runner.is_alive():  # a report blocks fit() until acknowledged: none is left behind
                    break
                continue
            metrics, checkpoint = item
            tune.report(metrics, checkpoint=checkpoint)
            mailbox.ack.remote()
        runner.join()
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        if result.error is not None:
            raise result.error
        diverged = (result.return_value or {}).get("diverged")
        if diverged:
            raise TrialDiverged(f"diverged: {diverged}")

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
    best: object  # the ray.tune.Result of the best trial (its checkpoints are the trial's)
    best_overrides: dict
    best_score: float
    best_trial_id: str
    concurrency: int


class ClampToSpace:
    """PBT's explore scales a continuous knob by 0.8 or 1.2: keep it inside the sweep's domain."""

    def __init__(self, space: dict):
        self.bounds = {k: tuple(extreme_values(kind, args))
                       for k, d in space.items() for kind, args in d.items() if DOMAINS[kind]}

    def __call__(self, config: dict) -> dict:
        for key, (low, high) in self.bounds.items():
            if key in config:
                config[key] = type(config[key])(min(max(config[key], low), high))
        return config


def make_scheduler(sweep: SweepConfig, exp: ExperimentConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if sweep.scheduler == "asha":  # ASHA counts Tune iterations: one per report, i.e. per train.eval_every steps
        max_t = math.ceil(exp.train.steps / exp.train.eval_every)
        return ASHAScheduler(max_t=max_t, grace_period=min(sweep.grace_period, max_t),
                             reduction_factor=sweep.reduction_factor)
    if sweep.scheduler == "pbt":  # perturb in steps, so a trial restarted from a checkpoint keeps its clock
        mutations = {k: list(args) if kind == "choice" else to_tune_domain(d)  # choices shift, numbers scale
                     for k, d in sweep.space.items() for kind, args in d.items()}
        return PopulationBasedTraining(
            time_attr="step", perturbation_interval=sweep.perturbation_interval * exp.train.eval_every,
            hyperparam_mutations=mutations, quantile_fraction=sweep.quantile_fraction,
            resample_probability=sweep.resample_probability, synch=sweep.synch,
            custom_explore_fn=ClampToSpace(sweep.space))
    return FIFOScheduler()


def make_searcher(sweep: SweepConfig, concurrent: int):
    """The searcher, holding at most `concurrent` trials at once (TuneConfig's max_concurrent_trials
    is ignored with a variant generator, so each searcher carries its own limit)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        # TPE; metric and mode come from TuneConfig
        return ConcurrencyLimiter(OptunaSearch(seed=sweep.seed), max_concurrent=concurrent)
    return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrent)


class _KeepLocalLog:
    """Tune's result loggers, restoring a trial's stored log only when there is no local one (a restored
    sweep), never over a complete local log (docs/architecture.md, "Known traps": Ray's loggers)."""

    def _restore_from_remote(self, file_name: str, trial) -> None:
        local = Path(trial.local_path, file_name)
        if not (local.exists() and local.stat().st_size > 0):
            super()._restore_from_remote(file_name, trial)


class TrialJsonLog(_KeepLocalLog, JsonLoggerCallback):
    """result.json, from which a trial's metrics_dataframe is read."""


class TrialCsvLog(_KeepLocalLog, CSVLoggerCallback):
    """progress.csv."""


def trial_checkpoints(sweep: SweepConfig, exp: ExperimentConfig):
    """Checkpoints each trial keeps in Tune: the best by validation score (as Train keeps) and the latest;
    under PBT every one (an exploit copies a member's latest whatever its score; see docs/architecture.md
    on Tune's pruning), so a PBT sweep's disk use grows with its reports."""
    from ray import tune

    if sweep.scheduler == "pbt":
        return tune.CheckpointConfig(num_to_keep=None)
    return tune.CheckpointConfig(num_to_keep=exp.train.num_to_keep, checkpoint_score_attribute=METRIC,
                                 checkpoint_score_order=MODE)


SWEEP_FILE = "gm_sweep.json"  # in the experiment folder: what the sweep ran, and whether it finished


def read_sweep_record(path: str) -> dict | None:
    """The record run_sweep keeps beside Tune's experiment state, or None (none, or unreadable)."""
    import json

    fs, root = storage_fs(path)
    try:
        with fs.open_input_stream(f"{root}/{SWEEP_FILE}") as f:
            return json.loads(f.readall().decode())
    except (OSError, ValueError):
        return None


def write_sweep_record(path: str, record: dict) -> None:
    import json

    fs, root = storage_fs(path)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{SWEEP_FILE}") as f:
        f.write(json.dumps(record, indent=2, sort_keys=True).encode())


def sweep_fingerprint(sweep: SweepConfig, exp: ExperimentConfig, data_dir: Path) -> dict:
    return {"sweep": to_dict(sweep), "experiment": exp.to_dict(), "data_dir": str(Path(data_dir).resolve())}


def should_resume(path: str, fingerprint: dict, resume: bool | None) -> bool:
    """`resume` None (the default) continues an interrupted sweep of the same definition: a killed
    `dvc repro` resumes where it stopped; a finished sweep, or one of another definition, starts afresh."""
    from ray import tune

    if resume is False or not tune.Tuner.can_restore(path):
        return False
    if resume:
        return True
    record = read_sweep_record(path)
    return bool(record) and not record.get("finished") and record.get("fingerprint") == fingerprint


def run_sweep(sweep: SweepConfig, exp: ExperimentConfig, data_dir: Path, storage: str, name: str,
              resume: bool | None = None, stopper=None) -> SweepResult:
    """Run (or continue) a sweep; returns the grid and its best trial.

    `resume`: True continues the sweep stored under `name`, False starts afresh, None continues it only
    if it was interrupted and has the same definition. `stopper` (a ray.tune.Stopper) may end trials or
    the whole sweep early (e.g. a compute budget)."""
    from ray import tune

    # The trial function only drives a TorchTrainer: it holds no CPU by default, so the CPUs go to
    # Train workers (2 cores run 2 one-worker trials). Ray refuses an empty bundle: ask for a little memory.
    trial_fn = tune.with_resources(make_trial_fn(exp, data_dir, storage),
                                   {"cpu": sweep.trial_driver_cpus, "memory": 64 * 2**20})
    path = f"{storage.rstrip('/')}/{name}"
    n = concurrency(sweep, exp)
    fingerprint = sweep_fingerprint(sweep, exp, data_dir)
    if should_resume(path, fingerprint, resume):
        # finished trials stay as they are; unfinished ones restart from their latest checkpoint
        tuner = tune.Tuner.restore(path, trainable=trial_fn, resume_unfinished=True, restart_errored=False)
    else:
        clear_run(storage, name)
        write_sweep_record(path, {"fingerprint": fingerprint, "finished": False})
        tuner = tune.Tuner(
            trial_fn,
            param_space={k: to_tune_domain(d) for k, d in sweep.space.items()},
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, scheduler=make_scheduler(sweep, exp), num_samples=sweep.num_samples,
                search_alg=make_searcher(sweep, n),
            ),
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0, stop=stopper,
                                      checkpoint_config=trial_checkpoints(sweep, exp),
                                      callbacks=[TrialJsonLog(), TrialCsvLog()]),
        )
    grid = tuner.fit()
    write_sweep_record(path, {"fingerprint": fingerprint, "finished": True})
    ok = [r for r in grid if r.error is None and r.metrics and math.isfinite(r.metrics.get(METRIC, math.inf))]
    if not ok:
        errors = "; ".join(str(r.error).splitlines()[0] for r in grid if r.error is not None)[:500]
        raise RuntimeError(f"sweep {name}: no trial finished with a finite {METRIC} ({errors or 'no results'})")
    score, best = min(((trial_score(r, exp.train.select), r) for r in ok), key=lambda sr: sr[0])
    return SweepResult(grid=grid, best=best, best_overrides=dict(best.config), best_score=score,
                       best_trial_id=trial_id(best), concurrency=n)


def trial_score(result, select: str = "best") -> float:
    """A trial's score: that of the checkpoint `train.select` would export from it (its best retained
    one, or its latest), so the trial ranked first is the one whose exported model scores best."""
    return float(select_checkpoint(result, select)[1].get(METRIC, math.inf))


def trial_id(result) -> str:
    """A trial's id from its Result (its last report carries it; else its folder's name)."""
    return str((result.metrics or {}).get("trial_id") or Path(result.path).name)
