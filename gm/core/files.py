"""Small file helpers: deterministic JSON, writes that never leave half a file behind, and reads that
say what is wrong with a damaged file instead of failing somewhere after it.

Loading never executes stored code: tensor files are read with `torch.load(weights_only=True)`
(`load_tensors`), which unpickles tensors, containers and plain numbers only and refuses anything
else; configs and records are JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable


class CorruptFile(ValueError):
    """A file that is there but cannot be used as what it should be: truncated, garbled, altered since
    it was written, or holding something other than data. The message is one line,
    `<path>: <what is wrong>; <what to do>`.

    A ValueError, so a stage prints it as its one `error:` line (gm.stage.USER_ERRORS); it pickles
    with its parts, so one raised in a Ray worker reaches the driver as it was raised."""

    def __init__(self, path: str | Path, problem: str, remedy: str = ""):
        self.path, self.problem, self.remedy = str(path), problem, remedy
        super().__init__(f"{path}: {problem}" + (f"; {remedy}" if remedy else ""))

    def __reduce__(self):
        return type(self), (self.path, self.problem, self.remedy)

    def with_remedy(self, remedy: str) -> "CorruptFile":
        """The same damage with the advice of a caller that knows more (which stage, which run)."""
        return CorruptFile(self.path, self.problem, remedy)


def first_line(error: BaseException, limit: int = 160) -> str:
    """An exception's first line, trimmed (library messages run to paragraphs); its type if it has none."""
    text = str(error).strip().splitlines()[0].strip() if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` into a temporary file beside `path`, then rename it over `path`: a crash or a
    killed process leaves the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, obj) -> Path:
    """Deterministic JSON (sorted keys, no timestamps) so DVC hashes only change with content."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def parse_json(path: str | Path, data: bytes, remedy: str = ""):
    """`data` (the bytes of file `path`) as JSON; CorruptFile saying where it breaks, and whether it
    simply stops (a truncated file) or is garbled."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFile(path, f"not valid JSON (bytes that are not UTF-8 at offset {e.start}: garbled)",
                          remedy) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        rest = text[e.pos:].rstrip()  # from where parsing failed: nothing, or one cut token, if it stops short
        where = f"{e.msg.lower().removesuffix(' starting at')} at line {e.lineno}, column {e.colno}"
        if not text.strip():
            problem = "empty"
        elif e.msg.startswith("Unterminated string") or (
                not e.msg.startswith("Extra data") and not re.search(r"[\s,:\[\]{}]", rest[1:])):
            problem = f"not valid JSON (truncated: {where})"
        else:
            problem = f"not valid JSON (garbled: {where})"
        raise CorruptFile(path, problem, remedy) from None


def read_json(path: str | Path, remedy: str = ""):
    """A JSON file; FileNotFoundError when it is not there, CorruptFile when it is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found" + (f"; {remedy}" if remedy else ""))
    return parse_json(path, path.read_bytes(), remedy)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The file's sha256 (hex), read in chunks: a split too large for memory hashes in constant memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def load_tensors(path: str | Path, remedy: str = "", map_location="cpu"):
    """What `torch.save` wrote to `path`, loaded with weights_only=True: tensors, containers and plain
    numbers only. Stored code never runs: a pickled object of any other class (a `__reduce__` payload)
    is refused before it is built. FileNotFoundError when the file is not there; CorruptFile naming it
    when it is truncated, garbled or refused."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found" + (f"; {remedy}" if remedy else ""))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a bad file (RuntimeError, EOFError, UnpicklingError...)
        raise CorruptFile(path, _tensor_file_problem(path, e), remedy) from None


def _tensor_file_problem(path: Path, error: Exception) -> str:
    """Why `torch.load(path, weights_only=True)` failed, in a few words."""
    text = str(error)
    banned = re.search(r"GLOBAL ([\w.]+)|Unsupported class ([\w.]+)", text)
    if banned:  # the weights-only unpickler met a class it does not allow: code that would have run
        what = banned.group(1) or banned.group(2)
        return f"refused: holds pickled objects other than tensors ({what}; weights_only); not loaded"
    with open(path, "rb") as f:
        head = f.read(4)
    size = path.stat().st_size
    if size == 0:
        return "empty"
    if head != ZIP_MAGIC:
        return "not a torch file (no zip archive header: garbled, or a plain pickle); not loaded"
    if not zipfile.is_zipfile(path):  # a zip archive ends with its directory: a cut file has none
        return f"truncated: no zip directory at the end of its {size} bytes"
    if isinstance(error, pickle.UnpicklingError) and "weights only" in text.lower():
        return "refused: holds pickled data the weights-only loader does not allow (weights_only); not loaded"
    return f"garbled ({first_line(error).split(' This is an internal')[0]})"
