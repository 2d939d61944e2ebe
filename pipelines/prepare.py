"""DVC stage `prepare@<dataset>` (the work is gm.stages.prepare): raw source ->
artifacts/prepared/<dataset>/{train,val,test}.parquet + meta.json.

Usage: python -m pipelines.prepare <dataset-name>   (run from the repository root)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gm import stage
from gm.core.layout import Layout
from gm.stages.prepare import prepare_dataset


@stage.entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a name under data.datasets in params.yaml")
    parser.add_argument("--out", default=str(Layout(Path()).prepared_root),
                        help="parent folder of the prepared dataset")
    args = parser.parse_args(argv)
    root = stage.root()
    n = prepare_dataset(args.dataset, root, root / args.out)["n"]
    print(f"prepared {args.dataset}: train {n['train']}, val {n['val']}, test {n['test']} "
          f"-> {Path(args.out) / args.dataset}")


if __name__ == "__main__":
    main()
