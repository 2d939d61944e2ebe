"""Damaged files: a corrupt or truncated Parquet split, meta.json, checkpoint or exported model folder
makes its stage stop with one line naming the file and what is wrong, and nothing is registered from it.

One workspace is prepared and trained once: a run killed after two checkpoints (as a killed `dvc repro`
leaves it) and, once that run has resumed to its end, an exported and registered model. Each fault then
damages one file, runs the real stage process that reads it, and puts the file back; the Row is survived
when the stage exits 2 with a single `error: ` line naming the file, and no registered model version
appeared from the damaged input or vanished. The malicious checkpoint's payload (it would create a
marker file when unpickled) must not have run.

    python -m gm.chaos corrupt
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from gm.chaos import (GAN_RING8, Row, checkpoints, kill_when, last_line, run_stage, scenario, stage_cmd, stage_env,
                      tiny_params, workspace)
from gm.core.layout import Layout
from gm.training.driver import SNAPSHOT, latest_checkpoint

EXPERIMENT = "gan-ring8"  # trained in memory: killed after two checkpoints, resumed, exported and registered
STREAMED = "gan-ring8-stream"  # the same model with its split streamed through Ray Data (never trained here)
# long enough that the run is killed mid-way (its orphaned workers step on for a second or two after the
# kill: hundreds of steps), short enough to resume to the end in seconds
STEPS, EVAL_EVERY = 2000, 50


def params() -> dict:
    train = {"seeds": 1, "steps": STEPS, "eval_every": EVAL_EVERY}
    return tiny_params({EXPERIMENT: {**GAN_RING8, "train": train},
                        STREAMED: {**GAN_RING8, "train": {**train, "data_in_memory": False}}})


def registered_versions(root: Path) -> set[tuple[str, int]]:
    """(name, version) of every live registered model version, of any model, in the workspace's sqlite MLflow
    store. Read with sqlite3, so that this module imports no MLflow (tests/test_architecture.py keeps it to
    gm.tracking); `model_versions` is MLflow's SQLAlchemy store's table (a deleted version is marked, not
    removed)."""
    db = root / "mlflow.db"
    if not db.is_file():
        return set()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        try:
            rows = con.execute("SELECT name, version FROM model_versions "
                               "WHERE current_stage IS NULL OR current_stage != 'Deleted_Internal'").fetchall()
        except sqlite3.OperationalError:  # no registry table yet: nothing registered
            return set()
    return {(str(n), int(v)) for n, v in rows}


@contextmanager
def damaged(path: Path, damage: Callable[[bytes], bytes]):
    """`path` holding `damage(its bytes)` inside the block, its own bytes again after it."""
    original = path.read_bytes()
    path.write_bytes(damage(original))
    try:
        yield path
    finally:
        path.write_bytes(original)


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def garble(data: bytes) -> bytes:
    """64 bytes in the middle overwritten (a fixed pattern: the run is reproducible); length unchanged."""
    mid = len(data) // 2
    return data[:mid] + bytes((37 * i + 11) % 256 for i in range(64)) + data[mid + 64:]


def garble_json(data: bytes) -> bytes:
    """A JSON text whose middle is overwritten with characters JSON cannot parse; length unchanged."""
    mid = len(data) // 2
    return data[:mid] + b"#!?" + data[mid + 3:]


def malicious_state(marker: Path) -> Callable[[bytes], bytes]:
    """A checkpoint state.pt as torch.save writes it, holding an object whose unpickling would create
    `marker` (a stand-in for any code: `__reduce__` names a callable and its arguments)."""
    import io

    import torch

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    def damage(_: bytes) -> bytes:
        buf = io.BytesIO()
        torch.save({"step": 100, "best": 0.0, "optimizers": [], "payload": Payload()}, buf)
        return buf.getvalue()

    return damage


def outcome(fault: str, root: Path, path: Path, proc, before: set, started: float, marker: Path) -> Row:
    """The Row of one damaged file: survived when the stage exited 2 with one `error: ` line naming the file
    and the planted payload never ran (`marker` absent); duplicated: versions registered meanwhile; lost:
    versions gone."""
    line = last_line(proc.stderr)
    after = registered_versions(root)
    named = str(path.relative_to(root)) in line
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    ran = marker.exists()
    survived = proc.returncode == 2 and line.startswith("error: ") and named and len(errors) == 1 and not ran
    happened = line if line else f"exit {proc.returncode}, no output"
    if ran:
        happened = f"the payload ran ({marker} exists); {happened}"
    return Row(fault, happened.replace(str(root) + "/", ""), survived, lost=len(before - after),
               duplicated=len(after - before), seconds=time.perf_counter() - started,
               details={"exit": proc.returncode, "file": str(path.relative_to(root)), "named": named,
                        "traceback": "Traceback" in proc.stderr, "payload_ran": ran,
                        "stderr_tail": proc.stderr[-2000:] if not survived else ""})


def damage_rows(root: Path, faults: list[tuple[str, Path, Callable[[bytes], bytes], tuple[str, ...]]],
                marker: Path) -> list[Row]:
    """Each fault: damage the file, run the stage (args) that reads it, put the file back."""
    rows = []
    for fault, path, damage, args in faults:
        before, started = registered_versions(root), time.perf_counter()
        with damaged(path, damage):
            proc = run_stage(root, *args, timeout=300)
        rows.append(outcome(fault, root, path, proc, before, started, marker))
    return rows


def settled(run: Path, timeout: float = 30.0) -> None:
    """Wait (bounded) until a killed run's folder stops changing: its Ray workers outlive the killed driver
    for a moment, still writing checkpoints and deleting old ones."""
    def state():
        snapshot = run / SNAPSHOT
        return [p.name for p in checkpoints(run)], snapshot.stat().st_mtime_ns if snapshot.is_file() else None

    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        now = state()
        if now == last:
            return
        last = now
        time.sleep(1.5)


@scenario("corrupt")
def corrupt(workdir: Path) -> list[Row]:
    root = workspace(Path(workdir) / "ws", params())
    layout = Layout(root)
    data = layout.prepared("ring8")
    run = layout.ray_storage / f"train-{EXPERIMENT}-seed0"
    marker = Path(workdir) / "payload-ran"

    kill_when(stage_cmd("train", EXPERIMENT), root, stage_env(root), lambda: len(checkpoints(run)) >= 2, 300,
              "two checkpoints")
    settled(run)
    latest = Path(latest_checkpoint(str(layout.ray_storage), run.name) or "")  # the one Ray would resume from
    if not (latest / "state.pt").is_file():
        raise RuntimeError(f"the killed run {run} has no latest checkpoint to damage")
    train = ("train", EXPERIMENT)
    rows = damage_rows(root, [
        ("truncated Parquet split (in memory)", data / "train.parquet", truncate, train),
        ("garbage bytes in a Parquet split (Ray Data)", data / "train.parquet", garble, ("train", STREAMED)),
        ("truncated meta.json", data / "meta.json", truncate, train),
        ("truncated state.pt of the latest checkpoint, before a resume", latest / "state.pt", truncate, train),
        ("malicious pickle in a checkpoint's state.pt", latest / "state.pt", malicious_state(marker), train),
    ], marker)

    # the files put back, the killed run resumes and finishes: an exported, registered model to damage next
    done = run_stage(root, *train, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the restored run did not finish: {last_line(done.stderr) or done.returncode}")
    model = layout.train(EXPERIMENT).model(0)
    evaluate = ("evaluate", "train", EXPERIMENT)
    rows += damage_rows(root, [
        ("truncated weights.pt of an exported model (evaluate)", model / "weights.pt", truncate, evaluate),
        ("garbled config.json of an exported model (evaluate)", model / "config.json", garble_json, evaluate),
    ], marker)
    return rows

