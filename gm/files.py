"""Small file helpers shared by stages."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: str | Path, obj) -> Path:
    """Deterministic JSON (sorted keys, no timestamps) so DVC hashes only change with content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
    return path


def read_json(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
