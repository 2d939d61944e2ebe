"""The one training loop: `train_loop_per_worker` runs in every Ray Train worker.

It rebuilds the experiment from plain config, takes its share of the data (from the object
store, or its Ray Data shard when streaming), steps the family's optimizer groups on their
schedule (gm/training/engine.py), validates on rank 0 every `eval_every` steps and reports
metrics with a checkpoint (model, optimizer state, step, curve so far). On a restart after a
failure it resumes from the latest checkpoint. A non-finite loss stops the run and is reported
as a divergence, never checkpointed.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist

from gm.data.io import read_split
from gm.data.dataspec import DataSpec
from gm.models.base import GenerativeModel, build_model, checkpoint_remedy, load_model, save_model
from gm.training.engine import Diverged, Stepper, run_steps, sync_initial_state
from gm.training.progress import CountingBatches, Reporter
from gm.training.experiment import experiment_from_dict
from gm.training.validate import validation_scores
from gm.core.dist import world
from gm.core.files import CorruptFile, first_line, load_tensors, read_json
from gm.core.timing import Phases
from gm.data.io import arrow_to_numpy


# ------------------------------------------------------------------------------- data


class BatchStream:
    """An endless stream of (x, y) numpy batches from one worker's shard.

    In memory (small data such as digits or toys): the shard is pulled once and
    reshuffled every epoch. Streaming (large data): each epoch iterates the Ray Data
    shard again with a local shuffle buffer.
    """

    def __init__(self, shard, shape: tuple[int, ...], batch_size: int, in_memory: bool, seed: int):
        self.shard, self.shape, self.batch_size = shard, shape, batch_size
        self.in_memory = in_memory
        self.rng = np.random.default_rng(seed)
        self._cache = pull_all(shard, shape) if in_memory else None

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        while True:
            if self._cache is not None:
                x, y = self._cache
                n = len(x)
                if n < self.batch_size:
                    raise ValueError(f"shard has {n} rows, fewer than batch_size {self.batch_size}")
                order = self.rng.permutation(n)
                for i in range(0, n - self.batch_size + 1, self.batch_size):
                    idx = order[i:i + self.batch_size]
                    yield x[idx], (y[idx] if y is not None else None)
            else:
                for table in self.shard.iter_batches(
                    batch_size=self.batch_size, batch_format="pyarrow", drop_last=True,
                    local_shuffle_buffer_size=10 * self.batch_size,
                    local_shuffle_seed=int(self.rng.integers(2**31)),
                ):
                    yield arrow_to_numpy(table, self.shape)


class InMemory:
    """A worker's share of an in-memory split, read like a Ray Data shard by BatchStream."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None):
        self.arrays = (x, y)


def pull_all(shard, shape) -> tuple[np.ndarray, np.ndarray | None]:
    """Materialise a whole Ray Data shard (or dataset) as numpy arrays."""
    import pyarrow as pa

    if isinstance(shard, InMemory):
        return shard.arrays
    tables = list(shard.iter_batches(batch_size=8192, batch_format="pyarrow"))
    return arrow_to_numpy(pa.concat_tables(tables), shape)


# ------------------------------------------------------------------------- distribution


def gather_nodes() -> list[str]:
    """The Ray node id of every rank (to see where a run was placed)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if world()[1] == 1:
        return [node]
    out: list = [None] * world()[1]
    dist.all_gather_object(out, node)
    return out


# --------------------------------------------------------------------------- checkpoints


def write_checkpoint(directory: Path, model, stepper: Stepper, step: int, metrics: dict, best: float,
                     history: list[dict]) -> None:
    save_model(model, directory / "model")
    torch.save({"step": step, "best": best, **stepper.state_dict()}, directory / "state.pt")
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (directory / "history.json").write_text(json.dumps(history))  # the curve so far: a resumed run keeps it


def load_checkpoint(directory: Path, remedy: str | None = None) -> tuple[dict, GenerativeModel, list[dict]]:
    """(state, model, history) of a checkpoint: every file a resumed run reads, each checked, so a damaged
    one is a CorruptFile naming it (`remedy`: default gm.models.base.checkpoint_remedy), never a traceback
    from inside the loop. state.pt and the model's weights load with weights_only=True: a checkpoint is
    data, and one holding pickled objects (code) is refused, not run. The driver calls this before it
    lets Ray resume a run (gm.training.driver.check_resumable); the worker again when it resumes."""
    directory = Path(directory)
    remedy = checkpoint_remedy(directory) if remedy is None else remedy
    state_path = directory / "state.pt"
    state = load_tensors(state_path, remedy)
    if not isinstance(state, dict) or not {"step", "best"} <= state.keys():
        raise CorruptFile(state_path, "not a gm checkpoint's state (expected a dict with step and best)", remedy)
    model = load_model(directory / "model", remedy=remedy)
    hist = directory / "history.json"
    history = read_json(hist, remedy) if hist.is_file() else []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise CorruptFile(hist, "not a curve (expected a list of metric records)", remedy)
    return state, model, history


def read_checkpoint(directory: Path, model, stepper: Stepper) -> tuple[int, float, list[dict]]:
    """(step, best validation score, history up to that step) of a checkpoint, its state loaded into
    `model` and `stepper`; a CorruptFile when a file is damaged or the state does not fit them."""
    state, saved, history = load_checkpoint(directory)
    try:
        model.load_state_dict(saved.state_dict())
        stepper.load_state_dict(state)
        return int(state["step"]), float(state["best"]), history
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        raise CorruptFile(Path(directory) / "state.pt", f"does not fit this run's model and optimizers "
                          f"({first_line(e)})", checkpoint_remedy(directory)) from None


# ----------------------------------------------------------------------- worker entry


def worker_data(config: dict, rank: int, size: int, spec: DataSpec, tp) -> tuple[Iterator, np.ndarray | None]:
    """(batch iterator, validation x on rank 0 else None).

    In memory (`train.data_in_memory`, small data): the driver put the splits in Ray's object store
    once; each rank takes its contiguous share of the training rows, no Ray Data round trip.
    Streaming: the rank's Ray Data shard, read again every epoch.
    """
    import ray
    import ray.train

    seed = tp.seed + 7919 * rank + config.get("start_step", 0)
    if config.get("arrays") is not None:
        x, y = ray.get(config["arrays"]["train"])
        share = np.array_split(np.arange(len(x)), size)[rank]
        source = InMemory(x[share], y[share] if y is not None else None)
        stream = BatchStream(source, spec.shape, tp.batch_size, True, seed)
        val = ray.get(config["arrays"]["val"])[0] if rank == 0 else None
    else:
        stream = BatchStream(ray.train.get_dataset_shard("train"), spec.shape, tp.batch_size, False, seed)
        val = read_split(config["data_dir"], "val")[0] if rank == 0 else None
    return iter(stream), val


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train worker function. `config`: {"experiment": ExperimentConfig.to_dict(), "spec": DataSpec dict,
    "data_dir": prepared split folder, "arrays": object refs of the train and val splits (in-memory data)
    or None (Ray Data shards), optionally "init_checkpoint": a ray.train.Checkpoint to start from,
    "progress": the driver's progress board (gm.training.progress) and "run": the run's name}.

    Returns the curve, the divergence if any, and where the worker's time went (`phases`, seconds)
    with its entry and exit wall-clock times, from which the driver derives start-up and teardown."""
    import ray.train

    entered_wall, entered = time.time(), time.perf_counter()
    phases = Phases()
    with phases("setup"):
        exp = experiment_from_dict(config["experiment"])
        spec = DataSpec.from_dict(config["spec"])
        tp = exp.train
        ctx = ray.train.get_context()
        rank, size = ctx.get_world_rank(), ctx.get_world_size()
        # one intra-op thread per reserved CPU: workers sharing cores with more threads than that
        # spin against each other (an order of magnitude slower on 2 cores)
        torch.set_num_threads(max(1, int(tp.scaling.cpus_per_worker)))
        device = torch.device("cuda" if tp.scaling.use_gpu and torch.cuda.is_available() else "cpu")
        if device.type == "cuda":
            from ray.train.torch import get_device

            device = get_device()

        torch.manual_seed(tp.seed)  # identical initial weights on every rank (then broadcast to be sure)
        model = build_model(exp.family, exp.model, spec).to(device)
        sync_initial_state(model)
        torch.manual_seed(tp.seed + 1000 * rank + 1)  # different noise per rank
        generator = torch.Generator(device=device).manual_seed(tp.seed + 1000 * rank + 2)
        stepper = Stepper(model, spec, device, generator, tp.lr_schedule, tp.steps, precision=tp.precision,
                          compile=tp.compile)

        nodes = gather_nodes()
        start, best, resumed_from, history = 0, math.inf, None, []
        # this run's own latest checkpoint after a worker failure or a killed driver; else the one the
        # driver hands over (a Tune trial restarted by PBT's exploit or a restored sweep): weights,
        # optimizer state, step, curve, under this run's config (PBT's perturbed learning rates apply
        # from the next step on)
        checkpoint = ray.train.get_checkpoint() or config.get("init_checkpoint")
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                start, best, history = read_checkpoint(Path(d), model, stepper)
            resumed_from = start
    with phases("data"):
        batches, val = worker_data({**config, "start_step": start}, rank, size, spec, tp)
    # rank 0 tells the driver where it is (gm.training.progress): the step as it goes, each evaluation
    reporter = Reporter(config.get("progress") if rank == 0 else None, config.get("run", exp.name), exp.name,
                        tp.seed, tp.steps)
    batches = CountingBatches(batches, len(stepper.schedule), reporter)

    def outcome(diverged: str | None) -> dict:
        reporter.close()
        return {"history": history if rank == 0 else [], "diverged": diverged,
                "train_seconds": phases.seconds.get("steps", 0.0),
                "worker_seconds": time.perf_counter() - entered, "nodes": nodes, "phases": phases.snapshot(),
                "entered": entered_wall, "left": time.time(), "resumed_from": resumed_from}

    step = start
    while step < tp.steps:
        stop = min(tp.steps, (step // tp.eval_every + 1) * tp.eval_every)
        batches.segment(step)
        if tp.fail_once_at_step and resumed_from is None and step < tp.fail_once_at_step <= stop:
            run_steps(stepper, batches, step, tp.fail_once_at_step)
            raise RuntimeError(f"injected failure at step {tp.fail_once_at_step} (train.fail_once_at_step)")
        try:
            logs, seconds = run_steps(stepper, batches, step, stop)
        except Diverged as e:
            reporter.diverged(step, str(e))
            ray.train.report({"step": step, "diverged": 1.0, "val_score": math.inf})
            return outcome(str(e))
        phases.add("steps", seconds)
        metrics = {"step": stop, "diverged": 0.0, "train_seconds": phases.seconds["steps"],
                   "steps_per_s": (stop - step) / seconds if seconds else 0.0,
                   **{k: float(v) for k, v in logs.items()}}  # the losses' means over the segment
        if tp.compile:
            metrics["graph_breaks"] = float(stepper.graph_breaks)  # since the start: compiling is lazy
        step = stop
        if resumed_from is not None:
            metrics["resumed_from_step"] = resumed_from
        if rank == 0:
            with phases("validation"):
                model.eval()
                metrics.update(validation_scores(model, spec, val, tp.val_samples, seed=tp.seed))
                best = min(best, metrics["val_score"])
                metrics["best_val_score"] = best
                history.append(metrics)
            reporter.evaluated(step, metrics)
            with phases("checkpoint"), tempfile.TemporaryDirectory() as d:
                write_checkpoint(Path(d), model, stepper, step, metrics, best, history)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"checkpoint_{step:08d}")
        else:
            with phases("checkpoint"):
                ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=f"checkpoint_{step:08d}")
    return outcome(None)
