"""What every pipeline stage shares: the repo root, validated params, one-line errors."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from gm.config import ConfigError, Params, load_params


class StageError(RuntimeError):
    """A stage could not finish for a reason the user can act on (message is one line)."""


USER_ERRORS = (ConfigError, FileNotFoundError, ValueError, KeyError, StageError)


def root() -> Path:
    from gm.tracking import repo_root

    return repo_root()


def params(at: Path | None = None) -> Params:
    return load_params((at or root()) / "params.yaml")


def prepared_dir(dataset: str, at: Path | None = None) -> Path:
    d = (at or root()) / "artifacts" / "prepared" / dataset
    if not (d / "meta.json").is_file():
        raise FileNotFoundError(f"{d}/meta.json: missing; run the prepare stage first (dvc repro prepare@{dataset})")
    return d


def entry(fn):
    """Wrap a stage's main(): user errors print `error: <message>` and exit 2, no traceback."""

    @functools.wraps(fn)
    def main(argv=None):
        try:
            return fn(argv)
        except USER_ERRORS as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    return main
