"""Where a process's time goes: named phases, summed, for `make bench` to print.

A stage process records its phases (Ray start, fits, export, registration ...) in the
process-wide `PHASES`; workers time their own (data, steps, validation, checkpoints) and
hand them back with their result. `process_age()` is the time since this process was
created, i.e. what the interpreter and imports cost before a stage's main() ran.
"""

from __future__ import annotations

import contextlib
import os
import time


class Phases:
    """Seconds per named phase; a phase entered twice adds up."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.runs: dict[str, dict[str, float]] = {}  # the phases of each run a stage drove (a seed's fit ...)

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, float(seconds))

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)

    def record_run(self, label: str, phases: dict[str, float]) -> None:
        self.runs[label] = {k: float(v) for k, v in phases.items()}


PHASES = Phases()  # this process's own phases (a stage's driver)


def phase(name: str):
    """`with phase("ray_start"): ...` adds the block's wall time to this process's phases."""
    return PHASES(name)


def process_age() -> float:
    """Seconds since this process was created (Linux /proc; 0.0 where that cannot be read)."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0
