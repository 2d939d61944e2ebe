"""Live progress of training runs: rank 0 of each Ray Train run reports, the stage's driver draws.

    worker (rank 0)  --push-->  Board (a Ray actor of the driver's job)  <--take--  driver thread --> Display

Rank 0 pushes a small record ({run, experiment, seed, step, total, steps/s, last validation score}) at
most every PUSH_EVERY_S while it steps and at each evaluation, without waiting for an answer; a board
that is gone, or none at all, never fails training. The driver polls the board from a thread while its
fits (gm.training.driver.fit_many) or its sweep (gm.stages.tune) run, and draws one line per run: a live
line on a terminal (rich), otherwise one plain line per evaluation (CI, `dvc repro > log`):

    train vae-digits seed 0: step 500/3000, 41.2 steps/s, val 1.234, ETA 61 s

GM_PROGRESS chooses: `auto` (the default: live on a terminal, plain otherwise), `live`, `plain`, `off`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

from gm.core.config import ConfigError

ENV = "GM_PROGRESS"
MODES = ("auto", "live", "plain", "off")
PUSH_EVERY_S = 1.0  # rank 0's records between evaluations: one a second is enough for a live line
POLL_EVERY_S = 0.5  # the driver's reads of the board
NAMESPACE = "gm"  # the board's Ray namespace; its name carries the driver's job id


# ------------------------------------------------------------------------------- the board


class Board:
    """The records the workers of one driver pushed and the driver has not taken yet (a Ray actor
    holding no CPU, one per driver process). Bounded: a driver that stops reading loses the oldest."""

    def __init__(self):
        self.records: deque = deque(maxlen=10_000)

    def push(self, record: dict) -> None:
        self.records.append(record)

    def take(self) -> list[dict]:
        out = list(self.records)
        self.records.clear()
        return out


def board_name() -> str:
    """The board of this process's Ray job: the driver's, and that of every task and actor it started
    (a Tune trial, which builds its own TorchTrainer), so a trial finds the board without being told."""
    import ray

    return f"progress-{ray.get_runtime_context().get_job_id()}"


def open_board():
    """This driver's board, created on first use (an actor lives as long as its job: never killed here)."""
    import ray

    return (ray.remote(num_cpus=0)(Board)
            .options(name=board_name(), namespace=NAMESPACE, get_if_exists=True, max_restarts=0)
            .remote())


def find_board():
    """The board of this job if its driver opened one, else None (progress off, or a driver of its own)."""
    import ray

    try:
        return ray.get_actor(board_name(), namespace=NAMESPACE)
    except Exception:  # noqa: BLE001  (no board: ValueError; Ray not started: RuntimeError)
        return None


# ----------------------------------------------------------------------- the worker's side


class Reporter:
    """Rank 0's side: `tick(step)` as it steps (a record at most every PUSH_EVERY_S), `evaluated` after
    each validation, `close` before the loop returns. Pushes are fire-and-forget; the first failure
    (the board is gone) turns the reporter off. Never raises."""

    def __init__(self, board, run: str, experiment: str, seed: int, total: int, every_s: float = PUSH_EVERY_S):
        self.board, self.every_s = board, every_s
        self.base = {"run": run, "experiment": experiment, "seed": seed, "total": total}
        self.last_t, self.last_step = time.monotonic(), None
        self.val_score: float | None = None
        self.pending = None  # the last push's ObjectRef: its error, if any, is read (and the reporter stops)

    def tick(self, step: int) -> None:
        if self.board is None:
            return
        now = time.monotonic()
        if now - self.last_t < self.every_s:
            return
        rate = None
        if self.last_step is not None and step > self.last_step:
            rate = (step - self.last_step) / (now - self.last_t)
        self.last_t, self.last_step = now, step
        self._push({"kind": "tick", "step": step, "steps_per_s": rate})

    def evaluated(self, step: int, metrics: dict) -> None:
        score = metrics.get("val_score")
        self.val_score = float(score) if score is not None else self.val_score
        self.last_t, self.last_step = time.monotonic(), step
        self._push({"kind": "eval", "step": step, "steps_per_s": metrics.get("steps_per_s")})

    def diverged(self, step: int, reason: str) -> None:
        self._push({"kind": "diverged", "step": step, "reason": reason})

    def close(self, timeout: float = 2.0) -> None:
        """Wait (a little) for the last record to land, so the driver draws the final evaluation."""
        if self.pending is None:
            return
        try:
            import ray

            ready, _ = ray.wait([self.pending], timeout=timeout)
            if ready:
                ray.get(ready[0])
        except Exception:  # noqa: BLE001  (progress never fails training)
            self.board = None
        self.pending = None

    def _push(self, record: dict) -> None:
        if self.board is None:
            return
        try:
            import ray

            if self.pending is not None:  # read the previous push's outcome if it is in: an error stops us
                ready, _ = ray.wait([self.pending], timeout=0)
                if ready:
                    ray.get(ready[0])
            self.pending = self.board.push.remote({**self.base, "t": time.time(), "val_score": self.val_score,
                                                   **record})
        except Exception:  # noqa: BLE001  (the board is gone: training goes on without progress)
            self.board, self.pending = None, None


class CountingBatches:
    """The loop's batch iterator, telling `reporter` the step it is at: every iteration of the schedule
    draws `per_step` batches (gm.training.engine.Stepper.iteration), so the first batch of each step
    marks the steps done. `segment(start)` before each run of steps."""

    def __init__(self, batches: Iterator, per_step: int, reporter: Reporter):
        self.batches, self.per_step, self.reporter = batches, max(1, per_step), reporter
        self.start, self.drawn = 0, 0

    def segment(self, start: int) -> None:
        self.start, self.drawn = start, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.drawn % self.per_step == 0:
            self.reporter.tick(self.start + self.drawn // self.per_step)
        self.drawn += 1
        return next(self.batches)


# ------------------------------------------------------------------------ the driver's side


def train_label(record: dict) -> str:
    return f"train {record.get('experiment')} seed {record.get('seed')}"


def trial_label(sweep: str) -> Callable[[dict], str]:
    """A Tune trial's label: its Train run is named train-<trial id> (tune.driver.trial_run_name)."""
    def label(record: dict) -> str:
        run = str(record.get("run", ""))
        return f"tune {sweep} trial {run.removeprefix('train-')}"

    return label


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 100:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_score(score: float | None) -> str:
    return "-" if score is None else f"{score:.4g}"


@dataclass
class RunState:
    """What the driver knows of one run: its latest record, and the first one of its current attempt
    (the ETA's clock: the run's own average pace since then, validation and checkpoints included)."""

    label: str
    total: int
    step: int = 0
    steps_per_s: float | None = None
    val_score: float | None = None
    first: tuple[float, int] | None = None  # (time, step) of the attempt's first record
    last_t: float | None = None
    note: str = ""
    done: bool = False

    def update(self, record: dict) -> None:
        step, t = int(record.get("step") or 0), float(record.get("t") or time.time())
        if self.first is None or step < self.step:  # a restart from a checkpoint: the pace starts over
            self.first = (t, step)
        self.step, self.last_t = step, t
        if record.get("steps_per_s"):
            self.steps_per_s = float(record["steps_per_s"])
        if record.get("val_score") is not None:
            self.val_score = float(record["val_score"])
        if record.get("kind") == "diverged":
            self.note, self.done = f"diverged at step {step}", True
        elif step >= self.total:
            self.done = True

    def eta(self) -> float | None:
        """Seconds left at the attempt's average pace so far; 0 when done, None before any pace."""
        if self.step >= self.total:
            return 0.0
        return eta_seconds(self.step, self.total, self.first, self.last_t, self.steps_per_s)


def eta_seconds(step: int, total: int, first: tuple[float, int] | None, now: float | None,
                steps_per_s: float | None = None) -> float | None:
    """(total - step) at the pace since `first` = (time, step); the last measured rate before there is one."""
    if step >= total:
        return 0.0
    if first is not None and now is not None and step > first[1] and now > first[0]:
        return (total - step) * (now - first[0]) / (step - first[1])
    if steps_per_s:
        return (total - step) / steps_per_s
    return None


def plain_line(state: RunState) -> str:
    if state.note:
        return f"{state.label}: {state.note}"
    rate = f"{state.steps_per_s:.1f} steps/s" if state.steps_per_s else "? steps/s"
    return (f"{state.label}: step {state.step}/{state.total}, {rate}, val {format_score(state.val_score)}, "
            f"ETA {format_eta(state.eta())}")


class Display:
    """The one place progress is drawn. `plain`: a line per evaluation (and divergence) on `stream`;
    `live`: one rich line per run, redrawn in place."""

    def __init__(self, label: Callable[[dict], str], mode: str = "plain", stream=None):
        self.label, self.mode = label, mode
        self.stream = stream if stream is not None else sys.stdout
        self.runs: dict[str, RunState] = {}
        self.lock = threading.Lock()
        self.live = None
        if mode == "live":
            self.live = LiveLines(self.stream)

    def update(self, record: dict) -> None:
        with self.lock:
            key = str(record.get("run"))
            state = self.runs.get(key)
            if state is None:
                state = self.runs[key] = RunState(self.label(record), int(record.get("total") or 0))
            state.update(record)
            if self.live is not None:
                self.live.draw(key, state)
            elif record.get("kind") in ("eval", "diverged"):
                print(plain_line(state), file=self.stream, flush=True)

    def close(self) -> None:
        with self.lock:
            if self.live is not None:
                self.live.stop()
                self.live = None


class LiveLines:
    """rich's Progress: a line per run (label, bar, step/total, steps/s, val, ETA), redrawn twice a second;
    what the process prints meanwhile goes above the lines."""

    def __init__(self, stream):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn
        from rich.table import Column

        def text(template: str, shrinks: bool = False) -> TextColumn:  # one line per run, come what may
            return TextColumn(template, table_column=Column(no_wrap=True, overflow="ellipsis" if shrinks else "crop"))

        self.progress = Progress(
            text("{task.description}", shrinks=True), BarColumn(bar_width=10),
            text("{task.completed:.0f}/{task.total:.0f}"), text("{task.fields[rate]}"),
            text("val {task.fields[val]}"), text("ETA {task.fields[eta]}"),
            console=Console(file=stream), refresh_per_second=2, transient=False,
        )
        self.tasks: dict[str, int] = {}
        self.progress.start()

    def draw(self, key: str, state: RunState) -> None:
        rate = f"{state.steps_per_s:.1f} steps/s" if state.steps_per_s else "? steps/s"
        fields = {"rate": state.note or rate, "val": format_score(state.val_score), "eta": format_eta(state.eta())}
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(state.label, total=max(1, state.total), **fields)
        self.progress.update(self.tasks[key], completed=state.step, **fields)

    def stop(self) -> None:
        self.progress.stop()


def display_mode(stream=None) -> str:
    """GM_PROGRESS, with `auto` resolved: live when `stream` (stdout) is a terminal, else plain."""
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ConfigError(f"{ENV}: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        stream = stream if stream is not None else sys.stdout
        return "live" if getattr(stream, "isatty", lambda: False)() else "plain"
    return mode


@contextlib.contextmanager
def watching(label: Callable[[dict], str] = train_label, stream=None):
    """While the block runs, draw what the workers of this driver's runs report (see the module's doc).
    Opens this job's board (Ray must be initialised), so the TorchTrainers built inside report to it."""
    mode = display_mode(stream)
    if mode == "off":
        yield None
        return
    board = open_board()
    display = Display(label, mode, stream)
    stop = threading.Event()

    def drain() -> None:
        import ray

        try:
            records = ray.get(board.take.remote(), timeout=10)
        except Exception:  # noqa: BLE001  (a slow or lost board: progress is not worth failing a stage)
            return
        for r in records:
            display.update(r)

    def poll() -> None:
        while not stop.wait(POLL_EVERY_S):
            drain()

    thread = threading.Thread(target=poll, name="gm-progress", daemon=True)
    thread.start()
    try:
        yield display
    finally:
        stop.set()
        thread.join()
        drain()  # what the last evaluations pushed
        display.close()
