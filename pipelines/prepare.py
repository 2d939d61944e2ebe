"""DVC stage `prepare`: raw source -> artifacts/prepared/<dataset>/{train,val,test}.parquet + meta.json.

Usage: python -m pipelines.prepare <dataset-name>   (run from the repository root)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gm.config import ConfigError, load_params
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a name under data.datasets in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="artifacts/prepared", help="parent folder of the prepared dataset")
    args = parser.parse_args(argv)
    where = ""  # once params are valid, errors are prefixed with the params.yaml entry to fix
    try:
        params = load_params(args.params)
        if args.dataset not in params.datasets:
            raise ConfigError(f"data.datasets.{args.dataset}: no such dataset; expected one of: "
                              f"{', '.join(params.datasets)}")
        where = f"data.datasets.{args.dataset}: "
        meta = prepare(args.dataset, params.datasets[args.dataset], Path("."), Path(args.out),
                       params.data_seed, params.val_fraction, params.test_fraction)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {where}{e}", file=sys.stderr)
        return 2
    n = meta["n"]
    print(f"prepared {args.dataset}: train {n['train']}, val {n['val']}, test {n['test']} "
          f"-> {Path(args.out) / args.dataset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
