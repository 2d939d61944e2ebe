"""Driver side of training: Ray start-up, building the TorchTrainer, reading back its result.

Only this side (the process that runs a pipeline stage) talks to MLflow; workers
report through `ray.train.report`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from gm.core.config import ConfigError
from gm.core.files import CorruptFile, parse_json
from gm.training.experiment import ExperimentConfig
from gm.data.io import check_split, data_spec, read_meta, read_split
from gm.training.loop import load_checkpoint, train_loop_per_worker
from gm.training import progress
from gm.models.base import build_model, checkpoint_remedy, load_model

log = logging.getLogger(__name__)


def scaling_config(exp: ExperimentConfig):
    from ray.train import ScalingConfig

    s = exp.train.scaling
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources)


TRAINING_SPLITS = ("train", "val")  # what a fit reads: the workers' batches, and rank 0's validation


def check_inputs(data_dir: Path) -> None:
    """The prepared data a fit reads, vetted in the driver before Ray starts: meta.json and the train and
    val splits (frame, footer, schema, sha256; gm.data.io.check_split), whether the workers get them from
    the object store or stream them through Ray Data. A damaged file is a one-line CorruptFile naming it,
    not an ArrowInvalid traceback from a Ray Data task or a worker."""
    meta = read_meta(data_dir)
    for split in TRAINING_SPLITS:
        check_split(data_dir, split, meta)


def check_buildable(exp: ExperimentConfig, data_dir: Path) -> None:
    """Vet the experiment's inputs (`check_inputs`) and build its model once on its prepared data, in the
    driver and before Ray starts: a damaged split or meta.json is a CorruptFile naming the file, and a
    config that does not fit the data (image-only options on a toy, too many squeezes for the image,
    variational dequantization of continuous data) a ConfigError naming the field, not a traceback
    from a Ray worker."""
    check_inputs(data_dir)
    try:
        build_model(exp.family, exp.model, data_spec(data_dir))
    except ConfigError as e:
        msg = str(e)
        field_first = re.match(r"\w+:", msg) is not None  # "levels: ..." names a field of the model config
        raise ConfigError(f"experiments.{exp.name}.model{'.' if field_first else ': '}{msg}") from None


def make_trainer(exp: ExperimentConfig, data_dir: Path, storage: str, name: str, callbacks=None,
                 init_checkpoint=None):
    """A TorchTrainer for one experiment: its data, best+latest checkpoints, failure recovery.

    In-memory data (`train.data_in_memory`) goes to the workers through Ray's object store, read here
    once (no Ray Data pipeline to start: seconds per fit on small data); otherwise each worker streams
    its Ray Data shard. `init_checkpoint` (a ray.train.Checkpoint) starts the run from that state instead
    of from scratch: Train V2 has no `resume_from_checkpoint`, so it travels in the loop config. Rank 0
    reports its progress to the board of this job's driver when it has one open (gm.training.progress:
    a Tune trial's trainer finds its stage's board by the job's name too)."""
    import ray
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    data_dir = Path(data_dir).resolve()
    spec = data_spec(data_dir)
    arrays, datasets, data_config = None, None, None
    if exp.train.data_in_memory:
        arrays = {split: ray.put(read_split(data_dir, split)) for split in ("train", "val")}
    else:
        datasets = {"train": ray.data.read_parquet(str(data_dir / "train.parquet"))}
        data_config = DataConfig(datasets_to_split=["train"])
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": exp.to_dict(), "spec": spec.to_dict(), "data_dir": str(data_dir),
                           "arrays": arrays, "init_checkpoint": init_checkpoint,
                           "progress": progress.find_board(), "run": name},
        torch_config=TorchConfig(backend="nccl" if exp.train.scaling.use_gpu else "gloo"),
        scaling_config=scaling_config(exp),
        datasets=datasets,
        dataset_config=data_config,
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=exp.train.num_to_keep,
                checkpoint_score_attribute="val_score",
                checkpoint_score_order="min",
            ),
            failure_config=FailureConfig(max_failures=exp.train.max_failures),
            callbacks=callbacks,
        ),
    )


@dataclass
class TrainOutcome:
    """What the driver needs after a fit: the checkpoint chosen by `train.select` and the curves."""

    checkpoint: object | None  # ray.train.Checkpoint on storage; None if the run diverged first
    metrics: dict  # the metrics reported with `checkpoint`
    history: list[dict]
    diverged: str | None
    wall_seconds: float  # the whole fit() as the driver sees it
    train_seconds: float  # optimizer steps only (rank 0)
    worker_seconds: float  # rank 0's loop function from entry to return (steps, validation, checkpoints)
    run_path: str
    nodes: list[str] = field(default_factory=list)  # Ray node of each rank
    # the step this attempt's workers started from: a checkpoint's (a killed driver's run continued, or a
    # worker group restarted after a failure) or None from scratch
    resumed_from: int | None = None
    # where the fit's time went, seconds: worker_start (fit() called -> rank 0 in the loop function: Train's
    # controller, placement, worker processes, process group), rank 0's setup, data, steps, validation,
    # checkpoint (write + report), and teardown (loop function returned -> fit() returned)
    phases: dict = field(default_factory=dict)

    def export(self, dest: Path) -> Path | None:
        """Copy the chosen checkpoint's model to `dest` (replacing it); None when there is none."""
        return export_checkpoint(self.checkpoint, dest) if self.checkpoint is not None else None


def select_checkpoint(result, select: str = "best"):
    """(checkpoint, metrics) among the retained checkpoints that carry a validation score:
    the lowest val_score for "best", the highest step for "last".

    Ray keeps the latest checkpoint beside the `num_to_keep` best, but the Result that
    `fit()` returns lists only the best in `best_checkpoints` (a Result read back with
    `Result.from_path` lists both): the latest, `result.checkpoint` with the final
    `result.metrics`, joins the candidates here.
    """
    kept = list(result.best_checkpoints or [])
    latest = result.checkpoint
    if latest is not None and all(c.path != latest.path for c, _ in kept):
        kept.append((latest, result.metrics or {}))
    kept = [(c, m) for c, m in kept if m.get("val_score") is not None]
    if not kept:
        return None, {}
    if select == "last":
        return max(kept, key=lambda cm: cm[1].get("step", -1))
    if select == "best":
        return min(kept, key=lambda cm: cm[1]["val_score"])
    raise ValueError(f"select: expected 'best' or 'last', got {select!r}")


def export_checkpoint(checkpoint, dest: Path) -> Path:
    """The model folder of a checkpoint (local or on remote storage), copied to `dest` once it loads
    (weights_only): a damaged checkpoint is a CorruptFile naming its file, never a copied, registered
    model that cannot load."""
    dest = Path(dest)
    with checkpoint.as_directory() as d:
        load_model(Path(d) / "model")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(Path(d) / "model", dest)
    return dest


def export_selected(result, dest: Path, select: str = "best") -> dict:
    """Export the checkpoint `select` picks from a finished run's Result (a Train run's, or a Tune
    trial's); returns that checkpoint's metrics."""
    ckpt, metrics = select_checkpoint(result, select)
    if ckpt is None:
        raise FileNotFoundError(f"{result.path}: no checkpoint with a validation score")
    export_checkpoint(ckpt, dest)
    return metrics


def fit_phases(ret: dict, started: float, ended: float) -> dict:
    """The fit's time breakdown from the worker's own phases and its entry/exit wall-clock times."""
    phases = dict(ret.get("phases") or {})
    if "entered" in ret and "left" in ret:
        phases["worker_start"] = max(0.0, ret["entered"] - started)
        phases["teardown"] = max(0.0, ended - ret["left"])
    return phases


def outcome_from_result(result, wall_seconds: float, select: str = "best", started: float | None = None) -> TrainOutcome:
    ret = result.return_value or {}
    ckpt, metrics = select_checkpoint(result, select)
    history = ret.get("history")
    if history is None and result.metrics_dataframe is not None:  # rank 0 returned nothing
        history = result.metrics_dataframe.to_dict("records")
    return TrainOutcome(
        checkpoint=ckpt, metrics=dict(metrics), history=history or [],
        diverged=ret.get("diverged"), wall_seconds=wall_seconds,
        train_seconds=float(ret.get("train_seconds") or 0.0),
        worker_seconds=float(ret.get("worker_seconds") or 0.0), run_path=result.path,
        nodes=list(ret.get("nodes") or []), resumed_from=ret.get("resumed_from"),
        phases=fit_phases(ret, started, started + wall_seconds) if started is not None else {},
    )


def storage_fs(path: str):
    """(pyarrow filesystem, path inside it) for a storage path: a local folder or a URI (s3://, gs://...)."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path if "://" in path else Path(path).resolve().as_uri())


def clear_run(storage: str, name: str) -> None:
    """Remove a previous run of the same name: Ray Train V2 would otherwise resume it."""
    import pyarrow.fs

    fs, root = storage_fs(storage)
    target = f"{root.rstrip('/')}/{name}"
    if fs.get_file_info(target).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(target)


RUN_RECORD = "gm-run.json"  # beside Ray's own files in a run folder: what the run trains, and whether it finished


def _read_record(storage: str, name: str) -> dict | None:
    import pyarrow.fs

    fs, root = storage_fs(storage)
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{name}/{RUN_RECORD}") as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError, ValueError, pyarrow.ArrowException):
        return None


def _write_record(storage: str, name: str, record: dict) -> None:
    fs, root = storage_fs(storage)
    folder = f"{root.rstrip('/')}/{name}"
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(f"{folder}/{RUN_RECORD}") as f:
        f.write(json.dumps(record, sort_keys=True).encode())


def resumes(storage: str, name: str, definition: str, fresh: bool = False) -> bool:
    """Whether `start_or_resume` would resume run storage/name: an unfinished run of the same definition."""
    record = None if fresh else _read_record(storage, name)
    return record is not None and record.get("definition") == definition and not record.get("completed")


def start_or_resume(storage: str, name: str, definition: str, fresh: bool = False) -> bool:
    """True (resume) when storage/name holds an unfinished run of the same `definition` (a stage whose
    driver was killed) and not `fresh`; otherwise the folder is cleared, the new definition recorded,
    and False. A run to resume must load from its latest checkpoint (`check_resumable`): a damaged
    checkpoint is a CorruptFile naming the file and saying how to start that run afresh; it is never
    skipped silently."""
    if resumes(storage, name, definition, fresh):
        check_resumable(storage, name)
        return True
    clear_run(storage, name)
    _write_record(storage, name, {"definition": definition, "completed": False})
    return False


def mark_completed(storage: str, name: str) -> None:
    """The run's results were taken (exported, registered): running the stage again trains afresh."""
    record = _read_record(storage, name) or {}
    _write_record(storage, name, {**record, "completed": True})


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of a run's checkpoints, and its latest


def latest_checkpoint(storage: str, name: str) -> str | None:
    """The folder of the checkpoint Ray Train would resume run storage/name from (the latest its
    snapshot records), or None when the run has no snapshot (Train then starts from step 0) or no checkpoint
    yet. A snapshot that is not valid JSON (Ray writes it in place) is a CorruptFile, a recorded checkpoint
    that is gone a FileNotFoundError: Ray could not resume from either."""
    import pyarrow.fs

    fs, root = storage_fs(storage)
    run = f"{root.rstrip('/')}/{name}"
    path = f"{run}/{SNAPSHOT}"
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        snapshot = parse_json(path, f.read(), checkpoint_remedy(f"{run}/latest"))
    try:
        latest = snapshot["latest_checkpoint_result"]
        recorded = [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]
        name_of_latest = None if latest is None else latest["checkpoint_dir_name"]
    except (KeyError, TypeError) as e:
        raise CorruptFile(path, f"not a Ray Train checkpoint snapshot (no {e})",
                          checkpoint_remedy(f"{run}/latest")) from None
    for dir_name in recorded:  # Ray refuses to resume a run whose recorded checkpoints are not all there
        if fs.get_file_info(f"{run}/{dir_name}").type == pyarrow.fs.FileType.NotFound:
            raise FileNotFoundError(f"{run}/{dir_name}: checkpoint not found, though the run's {SNAPSHOT} records "
                                    f"it; {checkpoint_remedy(f'{run}/{dir_name}')}")
    return None if name_of_latest is None else f"{run}/{name_of_latest}"


def check_resumable(storage: str, name: str) -> None:
    """Load run storage/name's latest checkpoint in the driver, every file of it (gm.training.loop.
    load_checkpoint, weights_only), before Ray resumes the run from it: a damaged checkpoint is a one-line
    CorruptFile naming the file, instead of a traceback from a worker (retried `max_failures` times)."""
    import pyarrow.fs

    latest = latest_checkpoint(storage, name)
    if latest is None:
        return
    fs, _ = storage_fs(storage)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        load_checkpoint(Path(latest))
        return
    import tempfile

    with tempfile.TemporaryDirectory() as d:  # remote storage: the files the worker would download
        pyarrow.fs.copy_files(latest, d, source_filesystem=fs)
        try:
            load_checkpoint(Path(d))
        except CorruptFile as e:  # name the stored file, not the temporary copy
            raise CorruptFile(e.path.replace(d, latest, 1), e.problem, checkpoint_remedy(latest)) from None


def fit(exp: ExperimentConfig, data_dir: Path, storage: str, name: str, resume: bool = False) -> TrainOutcome:
    """Train one experiment under Ray Train; the outcome points at the checkpoint `train.select` picks.

    A fresh run unless `resume`: then an interrupted run of the same name continues
    from its latest checkpoint (worker failures inside a run recover either way); `start_or_resume`
    vets that checkpoint before Ray starts. A damaged file that a worker meets anyway comes back as its
    own CorruptFile.
    """
    if not resume:
        clear_run(storage, name)
    started, t0 = time.time(), time.perf_counter()
    trainer = make_trainer(exp, data_dir, storage, name)
    try:
        result = trainer.fit()  # Train V2 raises the run's error (a TrainingFailedError) rather than return it
    except Exception as e:
        damaged = corrupt_cause(e)
        if damaged is not None:  # a file a worker read is damaged: its one line, not Ray's wrapped traceback
            raise damaged from None
        raise
    wall = time.perf_counter() - t0
    if result.error is not None:
        damaged = corrupt_cause(result.error)
        if damaged is not None:
            raise damaged from None
        raise RuntimeError(f"experiment {exp.name}: training failed: {result.error}") from result.error
    return outcome_from_result(result, wall, exp.train.select, started)


def corrupt_cause(error: BaseException | None, seen: set | None = None) -> CorruptFile | None:
    """The CorruptFile behind a failed fit, if one is: Ray Train V2 reports a worker's exception as a
    WorkerGroupError (TrainingFailedError) holding each failed rank's exception in `worker_failures`, a
    controller's as a ControllerError's `controller_failure`; Tune wraps them again, and each may carry
    its own cause or context, or a UserExceptionWithTraceback's `_base_exc`."""
    seen = set() if seen is None else seen
    if error is None or id(error) in seen:
        return None
    seen.add(id(error))
    if isinstance(error, CorruptFile):
        return error
    inner = [*(getattr(error, "worker_failures", None) or {}).values(), getattr(error, "controller_failure", None),
             getattr(error, "_base_exc", None), getattr(error, "cause", None), error.__cause__, error.__context__]
    for e in inner:
        if isinstance(e, BaseException):
            found = corrupt_cause(e, seen)
            if found is not None:
                return found
    return None


def fit_many(runs: list[tuple[ExperimentConfig, str]], data_dir: Path, storage: str,
             resume: bool = False) -> list[TrainOutcome]:
    """Several Train runs (e.g. seeds) at once: each TorchTrainer.fit() waits in a thread of this
    process (its controller and workers are Ray actors), so as many run side by side as the cluster
    has room for their workers, at no extra process start per run. Their progress is drawn meanwhile
    (gm.training.progress.watching: live lines on a terminal, a line per evaluation otherwise)."""
    from concurrent.futures import ThreadPoolExecutor

    with progress.watching(progress.train_label):  # a line per run while they train
        if len(runs) == 1:
            return [fit(runs[0][0], data_dir, storage, runs[0][1], resume=resume)]
        with ThreadPoolExecutor(max_workers=len(runs), thread_name_prefix="fit") as pool:
            futures = [pool.submit(fit, exp, data_dir, storage, name, resume) for exp, name in runs]
            return [f.result() for f in futures]
