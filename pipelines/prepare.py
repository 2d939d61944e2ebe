"""DVC stage `prepare`: raw source -> artifacts/prepared/<dataset>/{train,val,test}.parquet + meta.json.

Usage: python -m pipelines.prepare <dataset-name>   (run from the repository root)
"""

from __future__ import annotations

import argparse
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


@stage.entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a name under data.datasets in params.yaml")
    parser.add_argument("--out", default="artifacts/prepared", help="parent folder of the prepared dataset")
    args = parser.parse_args(argv)
    root = stage.root()
    params = stage.params(root)
    source = params.dataset(args.dataset)
    try:
        meta = prepare(args.dataset, source, root, root / args.out,
                       params.data_seed, params.val_fraction, params.test_fraction)
    except (FileNotFoundError, ValueError) as e:  # name the params entry to fix
        raise type(e)(f"data.datasets.{args.dataset}: {e}") from None
    n = meta["n"]
    print(f"prepared {args.dataset}: train {n['train']}, val {n['val']}, test {n['test']} "
          f"-> {Path(args.out) / args.dataset}")


if __name__ == "__main__":
    main()
