"""Stage `prepare@<dataset>`: raw source -> artifacts/prepared/<dataset>/{train,val,test}.parquet + meta.json."""

from __future__ import annotations

from pathlib import Path

from gm import stage
from gm.data.io import write_splits
from gm.data.sources import source_hash


def prepare(name: str, source_cfg, repo_root: Path, out_root: Path, seed: int,
            val_fraction: float, test_fraction: float) -> dict:
    """Load dataset `name` from its source config and write its splits to out_root/name; returns meta."""
    source_cfg.check(repo_root)
    x, y, info = source_cfg.load(repo_root, seed)
    return write_splits(Path(out_root) / name, x, y, info, seed=seed, val_fraction=val_fraction,
                        test_fraction=test_fraction,
                        source_hash=source_hash(source_cfg, info, repo_root, seed), name=name)


def prepare_dataset(dataset: str, root: Path, out_root: Path) -> dict:
    """Prepare dataset `dataset` of root/params.yaml into out_root/<dataset>; returns its meta.
    A missing or malformed source names the params entry to fix."""
    params = stage.params(root)
    source = params.dataset(dataset)
    try:
        return prepare(dataset, source, root, out_root, params.data_seed, params.val_fraction, params.test_fraction)
    except (FileNotFoundError, ValueError) as e:  # name the params entry to fix
        raise type(e)(f"data.datasets.{dataset}: {e}") from None
