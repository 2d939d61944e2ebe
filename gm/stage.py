"""What every pipeline stage shares: the repo root, validated params, one-line errors."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

from gm.core import timing
from gm.core.config import ConfigError
from gm.core.layout import Layout
from gm.params import Params, load_params
from gm.tracking import TrackingUnavailable, repo_root, unavailable
from gm.core.files import write_json


class StageError(RuntimeError):
    """A stage could not finish for a reason the user can act on (message is one line)."""


USER_ERRORS = (ConfigError, FileNotFoundError, ValueError, KeyError, StageError, TrackingUnavailable)


def root() -> Path:
    return repo_root()


def params(at: Path | None = None) -> Params:
    return load_params((at or root()) / "params.yaml")


def prepared_dir(dataset: str, at: Path | None = None) -> Path:
    """The prepared dataset's folder under `at` (default: the root); a one-line error if it is missing."""
    return Layout(at or root()).require_prepared(dataset)


def guarded(call):
    """Run `call()`; user errors print `error: <message>` and exit 2, no traceback."""
    try:
        return call()
    except BrokenPipeError:  # `gm models ls | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(0)
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # the tracking server went away mid-stage, or refused the credentials
        msg = unavailable(e) if "mlflow" in sys.modules else None
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def entry(fn):
    """A stage's main(): guarded, and its wall time recorded for `make bench`."""

    @functools.wraps(fn)
    def main(argv=None):
        started, age = time.time(), timing.process_age()
        out = guarded(lambda: fn(argv))
        record_time(fn.__module__, argv if argv is not None else sys.argv[1:], started, age)
        if argv is None and fn.__module__ == "__main__":  # a stage process (python -m pipelines.x), not a test
            exit_now()
        return out

    return main


def exit_now() -> None:
    """End a finished stage process without the interpreter's teardown (1-2 s per stage: finalising
    torch, MLflow's and the other libraries' exit handlers), once everything it wrote is closed: its
    files are written atomically, MLflow's calls are synchronous; Ray is left properly first."""
    import logging

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def record_time(module: str, args, started: float, process_start: float = 0.0) -> None:
    """artifacts/timings/<stage>.json: wall time of a successful stage (read by `make bench`): from
    main() on (`seconds`), the interpreter and imports before it (`process_start`), and the phases
    and runs the stage recorded in gm.core.timing."""
    spec = getattr(sys.modules.get(module), "__spec__", None)  # `python -m pipelines.x` runs as __main__
    name = spec.name if spec is not None else module
    label = name.rsplit(".", 1)[-1] + "".join(f"@{a}" for a in args if not str(a).startswith("-"))
    write_json(Layout(root()).timing(label),
               {"stage": label, "started": started - process_start, "seconds": time.time() - started,
                "process_start": process_start, "phases": timing.PHASES.snapshot(), "runs": timing.PHASES.runs})
