"""Materialise the default raw data (scikit-learn's bundled digits) into data/; nothing is downloaded."""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

from gm.data.sources import DIGITS_PATH
from gm.core.files import atomic_write


def sklearn_digits_file() -> Path:
    """scikit-learn's bundled digits.csv.gz (part of the installed package)."""
    return Path(str(importlib.resources.files("sklearn.datasets.data") / "digits.csv.gz"))


def materialise_default_data(repo_root: str | Path) -> list[Path]:
    """Copy sklearn's digits.csv.gz byte for byte to <repo_root>/data/digits/ if absent; return paths written."""
    dest = Path(repo_root) / DIGITS_PATH
    if dest.exists():
        return []  # never overwrite: the file may be DVC-tracked or a user's own copy
    src = sklearn_digits_file()
    if not src.is_file():
        raise FileNotFoundError(f"{src}: file not found; expected scikit-learn's bundled digits "
                                "(is scikit-learn installed?)")
    atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))  # an interrupted copy leaves no partial file
    return [dest]
