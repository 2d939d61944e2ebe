"""Prepared datasets on disk: train/val/test Parquet files with an explicit schema, plus meta.json.

Layout of one prepared dataset folder::

    train.parquet  val.parquet  test.parquet   x: fixed_size_list<float32>[D]  (D = prod(shape))
                                               y: int64                        (labelled data only)
    meta.json                                  kind, shape, levels, classes, split sizes, hashes ...

Files are byte-for-byte reproducible: the same input and seed give the same bytes (no
timestamps anywhere), so DVC sees an unchanged output as unchanged. meta.json records each
split's sha256, checked whenever a split is read (`read_split`) or vetted before training
(`check_split`): a truncated, garbled or silently altered split, or a damaged meta.json, is a
one-line CorruptFile naming the file and the stage that rebuilds it, never a reader's traceback
or wrong numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gm.data.dataspec import DataSpec
from gm.core.files import CorruptFile, atomic_write, first_line, parse_json, sha256_file

SPLITS = ("train", "val", "test")
META = "meta.json"
_RUN_PREPARE = "run the prepare stage (dvc repro prepare)"
PARQUET_MAGIC = b"PAR1"  # a Parquet file starts and ends with it (the footer's length precedes the last)


def rebuild(data_dir: str | Path) -> str:
    """What to do about a damaged file of a prepared dataset: rebuild the dataset's folder."""
    return f"run `dvc repro -f prepare@{Path(data_dir).name}` to rebuild it"


def split_schema(shape: Sequence[int], labelled: bool) -> pa.Schema:
    """The Arrow schema of a split: x as a fixed-size float32 list, y as int64 when labelled."""
    fields = [pa.field("x", pa.list_(pa.float32(), math.prod(shape)), nullable=False)]
    if labelled:
        fields.append(pa.field("y", pa.int64(), nullable=False))
    return pa.schema(fields)


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Rows per split: test = ceil(test_fraction·N), val = ceil(val_fraction·N), train the rest.

    ceil is scikit-learn's rounding for a float test_size, so digits (N = 1797, 0.1/0.2)
    gives test 360 and train+val 1437 exactly as `train_test_split(test_size=0.2)` does;
    val (180) is then taken from those 1437, leaving 1257 for training.
    """
    n_test, n_val = math.ceil(test_fraction * n), math.ceil(val_fraction * n)
    if n - n_test - n_val < 1:
        raise ValueError(f"{n} samples are too few for val_fraction {val_fraction} and "
                         f"test_fraction {test_fraction}; expected at least one training sample")
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def _stratified_take(idx: np.ndarray, y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k of `idx`, each class getting its proportional share (largest remainders round it to k)."""
    classes, counts = np.unique(y[idx], return_counts=True)
    quota = k * counts / len(idx)
    take = np.floor(quota).astype(int)
    # mergesort: a stable order, so ties go to the lower class and the result is reproducible
    extra = np.argsort(-(quota - take), kind="mergesort")[: k - take.sum()]
    take[extra] += 1
    return np.concatenate([rng.permutation(idx[y[idx] == c])[:t] for c, t in zip(classes, take)])


def split_indices(n: int, y: np.ndarray | None, seed: int, val_fraction: float,
                  test_fraction: float) -> dict[str, np.ndarray]:
    """Seeded row indices per split; stratified by label when labelled (sizes from `split_sizes`)."""
    sizes = split_sizes(n, val_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    rest = rng.permutation(n)
    out = {}
    for split in ("test", "val"):
        if y is None:
            out[split], rest = rest[: sizes[split]], rest[sizes[split]:]
        else:
            out[split] = _stratified_take(rest, y, sizes[split], rng)
            rest = rest[~np.isin(rest, out[split])]
    out["train"] = rest
    # shuffle within each split so rows are not grouped by class on disk
    return {s: rng.permutation(out[s]) for s in SPLITS}


def to_table(x: np.ndarray, y: np.ndarray | None) -> pa.Table:
    """(N, *shape) samples (+ labels) -> an Arrow table with the split schema."""
    shape = x.shape[1:]
    flat = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    columns = [pa.FixedSizeListArray.from_arrays(flat, math.prod(shape))]
    if y is not None:
        columns.append(pa.array(np.asarray(y, dtype=np.int64)))
    return pa.Table.from_arrays(columns, schema=split_schema(shape, y is not None))


def split_rows(x: np.ndarray, y: np.ndarray | None, info: dict, seed: int, val_fraction: float,
               test_fraction: float) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Each split's (x, y): the source's rows split by `split_indices`.

    A source whose rows are the material its samples are made of, not the samples (stacked
    digits: digit images, three to a sample), puts a builder in info["per_split"]: the material is
    split as any rows are, then `builder(split, x_part, y_part, n_split)` makes each split's samples
    from its own part alone (so nothing of the test material reaches a training sample), with
    n_split from `split_sizes(builder.n, ...)`: builder.n samples in all.
    """
    parts = split_indices(len(x), y, seed, val_fraction, test_fraction)
    builder = info.get("per_split")
    if builder is None:
        return {s: (x[idx], y[idx] if y is not None else None) for s, idx in parts.items()}
    if y is None:
        raise ValueError("a source built per split must be labelled (its material is split stratified)")
    sizes = split_sizes(builder.n, val_fraction, test_fraction)
    out = {}
    for s in SPLITS:
        xs, ys = builder(s, x[parts[s]], y[parts[s]], sizes[s])
        out[s] = (np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.int64))
    return out


def write_splits(out_dir: str | Path, x: np.ndarray, y: np.ndarray | None, info: dict, seed: int,
                 val_fraction: float, test_fraction: float, source_hash: str,
                 name: str | None = None) -> dict:
    """Split (seeded, stratified when labelled) and write train/val/test.parquet + meta.json.

    `info` is a source's info dict (kind, shape, levels, num_classes, optional modes, class_names,
    factors, and per_split: see `split_rows`). Returns the meta written. Split sizes follow
    `split_sizes`.
    """
    out_dir = Path(out_dir)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{out_dir}: expected samples of shape (N, *shape) with N > 0, got {x.shape}")
    if info.get("per_split") is None and list(x.shape[1:]) != list(info["shape"]):
        raise ValueError(f"{out_dir}: samples have shape {x.shape[1:]} but the source says {info['shape']}")
    if not np.isfinite(x).all():
        raise ValueError(f"{out_dir}: data has NaN or infinite values; expected finite numbers")
    if y is not None:
        y = np.asarray(y, dtype=np.int64)
    rows = split_rows(x, y, info, seed, val_fraction, test_fraction)
    shape = rows["train"][0].shape[1:]
    if list(shape) != list(info["shape"]):
        raise ValueError(f"{out_dir}: samples have shape {shape} but the source says {info['shape']}")
    labelled = rows["train"][1] is not None

    out_dir.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for split, (xs, ys) in rows.items():
        table = to_table(xs, ys)
        # fixed writer options: the bytes depend only on the data (and pyarrow's version)
        path = atomic_write(out_dir / f"{split}.parquet", lambda p: pq.write_table(
            table, p, compression="zstd", write_statistics=False, store_schema=True))
        hashes[split] = sha256_file(path)

    schema = split_schema(shape, labelled)
    every_x = [xs for xs, _ in rows.values() if len(xs)]
    meta = {
        "name": name or out_dir.name,
        "kind": info["kind"],
        "shape": [int(s) for s in info["shape"]],
        "levels": info["levels"],
        "num_classes": info["num_classes"],
        "classes": np.unique(np.concatenate([ys for _, ys in rows.values()])).tolist() if labelled else None,
        "range": [float(min(a.min() for a in every_x)), float(max(a.max() for a in every_x))],
        "n": {s: int(len(rows[s][0])) for s in SPLITS},
        "source_hash": source_hash,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "modes": info.get("modes"),
        "schema": {f.name: str(f.type) for f in schema},
        "sha256": hashes,  # of each split's file: readers catch a truncated or altered split
    }
    for key in ("class_names", "factors", "channel_classes", "sample_rate"):  # optional: only where the source has them
        if info.get(key):
            meta[key] = info[key]
    text = json.dumps(meta, sort_keys=True, indent=2) + "\n"
    atomic_write(out_dir / META, lambda p: p.write_text(text))
    return meta


def read_meta(data_dir: str | Path) -> dict:
    """A prepared dataset's meta.json; CorruptFile when it is not the JSON object prepare wrote."""
    path = Path(data_dir) / META
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; {_RUN_PREPARE}")
    meta = parse_json(path, path.read_bytes(), rebuild(data_dir))
    if not isinstance(meta, dict):
        raise CorruptFile(path, f"expected a JSON object, got {type(meta).__name__}", rebuild(data_dir))
    missing = [k for k in ("kind", "shape") if k not in meta]
    if missing:
        raise CorruptFile(path, f"not a prepared dataset's meta.json (no {', '.join(missing)})", rebuild(data_dir))
    return meta


def data_spec(data_dir: str | Path) -> DataSpec:
    """The DataSpec (kind, shape, classes, levels) of a prepared dataset."""
    meta = read_meta(data_dir)
    try:
        return DataSpec.from_dict(meta)
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptFile(Path(data_dir) / META, f"not a valid data description ({first_line(e)})",
                          rebuild(data_dir)) from None


def arrow_to_numpy(batch: pa.Table | pa.RecordBatch, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """A Table/RecordBatch with the split schema -> (x float32 (N, *shape), y int64 or None), no row loops."""
    col = batch.column("x")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    dim = math.prod(shape)
    if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != dim:
        raise ValueError(f"column x has type {col.type}; expected {pa.list_(pa.float32(), dim)} for shape {tuple(shape)}")
    if col.null_count:
        raise ValueError("column x has nulls; expected one sample per row")
    # flatten() honours slicing offsets (Ray hands out slices); .values would not
    x = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(col), *shape)
    if not x.flags.writeable:  # zero-copy views are read-only; torch.from_numpy wants writable memory
        x = x.copy()
    y = None
    if "y" in batch.schema.names:
        y = np.asarray(batch.column("y").to_numpy(), dtype=np.int64)
        if not y.flags.writeable:
            y = y.copy()
    return x, y


def split_path(data_dir: str | Path, split: str) -> Path:
    """The Parquet file of one split; FileNotFoundError naming the stage to run when it is not there."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    path = Path(data_dir) / f"{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; {_RUN_PREPARE}")
    return path


def _frame_problem(head: bytes, tail: bytes, size: int) -> str | None:
    """What a Parquet file's first and last bytes already say is wrong with it, or None."""
    if size == 0:
        return "empty"
    if head[:4] != PARQUET_MAGIC:
        return "no PAR1 header: garbled, or not Parquet"
    if size < 12 or tail[-4:] != PARQUET_MAGIC:
        return f"truncated: no footer after {size} bytes"
    return None


def _unreadable(path: Path, problem: str) -> CorruptFile:
    return CorruptFile(path, f"not a readable Parquet file ({problem})", rebuild(path.parent))


def _check_schema(path: Path, schema: pa.Schema, meta: dict) -> None:
    expected = split_schema(meta["shape"], meta.get("classes") is not None)
    if not schema.equals(expected, check_metadata=False):
        got = ", ".join(f"{f.name}: {f.type}" for f in schema)
        want = ", ".join(f"{f.name}: {f.type}" for f in expected)
        raise CorruptFile(path, f"schema ({got}) does not match meta.json; expected ({want})",
                          rebuild(path.parent))


def _check_hash(path: Path, digest: str, meta: dict, split: str) -> None:
    """A split whose bytes are not those prepare wrote (meta.json's sha256; prepared data from before it was
    recorded is not checked): a flipped bit in a data page can decode as plausible numbers, so a file that
    parses must still be the one prepare wrote."""
    recorded = (meta.get("sha256") or {}).get(split)
    if recorded is not None and digest != recorded:
        raise CorruptFile(path, f"contents differ from the sha256 in meta.json ({digest[:12]}…, recorded "
                                f"{str(recorded)[:12]}…: garbled or altered since it was prepared)", rebuild(path.parent))


def read_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """One split of a prepared dataset as (x float32 (N, *shape), y int64 or None). The file is read
    once: parsed from the bytes that are also hashed against meta.json."""
    path = split_path(data_dir, split)
    meta = read_meta(data_dir)
    data = path.read_bytes()
    problem = _frame_problem(data[:4], data[-4:], len(data))
    if problem:
        raise _unreadable(path, problem)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, f"garbled: {first_line(e)}") from None
    _check_schema(path, table.schema, meta)
    _check_hash(path, hashlib.sha256(data).hexdigest(), meta, split)
    return arrow_to_numpy(table, meta["shape"])


def check_split(data_dir: str | Path, split: str, meta: dict | None = None) -> None:
    """Vet a split without loading it (a driver does this before Ray starts, for data streamed to the
    workers by Ray Data as well as data it loads): its frame and footer, its schema, and its sha256
    against meta.json, hashed in chunks; prepared data without a recorded hash is decoded once instead.
    A CorruptFile naming the file on any damage."""
    path = split_path(data_dir, split)
    meta = read_meta(data_dir) if meta is None else meta
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(0, size - 4))
        tail = f.read(4)
    problem = _frame_problem(head, tail, size)
    if problem:
        raise _unreadable(path, problem)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, f"garbled footer: {first_line(e)}") from None
    _check_schema(path, parquet.schema_arrow, meta)
    if (meta.get("sha256") or {}).get(split) is not None:
        _check_hash(path, sha256_file(path), meta, split)
        return
    try:
        for _ in parquet.iter_batches(batch_size=65536):
            pass
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, f"garbled: {first_line(e)}") from None
