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
from gm.training.experiment import ExperimentConfig
from gm.data.io import data_spec, read_split
from gm.training.loop import train_loop_per_worker
from gm.models.base import build_model

log = logging.getLogger(__name__)


def scaling_config(exp: ExperimentConfig):
    from ray.train import ScalingConfig

    s = exp.train.scaling
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources)


def check_buildable(exp: ExperimentConfig, data_dir: Path) -> None:
    """Build the experiment's model once on its prepared data, in the driver and before Ray starts:
    a config that does not fit the data (image-only options on a toy, too many squeezes for the
    image, variational dequantization of continuous data) is a ConfigError naming the field,
    not a traceback from a Ray worker."""
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
    of from scratch: Train V2 has no `resume_from_checkpoint`, so it travels in the loop config."""
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
                           "arrays": arrays, "init_checkpoint": init_checkpoint},
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
    """The model folder of a checkpoint (local or on remote storage), copied to `dest`."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    with checkpoint.as_directory() as d:
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
        nodes=list(ret.get("nodes") or []),
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


def start_or_resume(storage: str, name: str, definition: str, fresh: bool = False) -> bool:
    """True (resume) when storage/name holds an unfinished run of the same `definition` (a stage whose
    driver was killed) and not `fresh`; otherwise the folder is cleared, the new definition recorded,
    and False."""
    record = None if fresh else _read_record(storage, name)
    if record is not None and record.get("definition") == definition and not record.get("completed"):
        return True
    clear_run(storage, name)
    _write_record(storage, name, {"definition": definition, "completed": False})
    return False


def mark_completed(storage: str, name: str) -> None:
    """The run's results were taken (exported, registered): running the stage again trains afresh."""
    record = _read_record(storage, name) or {}
    _write_record(storage, name, {**record, "completed": True})


def fit(exp: ExperimentConfig, data_dir: Path, storage: str, name: str, resume: bool = False) -> TrainOutcome:
    """Train one experiment under Ray Train; the outcome points at the checkpoint `train.select` picks.

    A fresh run unless `resume`: then an interrupted run of the same name continues
    from its latest checkpoint (worker failures inside a run recover either way).
    """
    if not resume:
        clear_run(storage, name)
    started, t0 = time.time(), time.perf_counter()
    trainer = make_trainer(exp, data_dir, storage, name)
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if result.error is not None:
        raise RuntimeError(f"experiment {exp.name}: training failed: {result.error}") from result.error
    return outcome_from_result(result, wall, exp.train.select, started)


def fit_many(runs: list[tuple[ExperimentConfig, str]], data_dir: Path, storage: str,
             resume: bool = False) -> list[TrainOutcome]:
    """Several Train runs (e.g. seeds) at once: each TorchTrainer.fit() waits in a thread of this
    process (its controller and workers are Ray actors), so as many run side by side as the cluster
    has room for their workers, at no extra process start per run."""
    from concurrent.futures import ThreadPoolExecutor

    if len(runs) == 1:
        return [fit(runs[0][0], data_dir, storage, runs[0][1], resume=resume)]
    with ThreadPoolExecutor(max_workers=len(runs), thread_name_prefix="fit") as pool:
        futures = [pool.submit(fit, exp, data_dir, storage, name, resume) for exp, name in runs]
        return [f.result() for f in futures]
