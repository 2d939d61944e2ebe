"""DVC stage `tune@<sweep>` (the work is gm.stages.tune).

Usage: python -m pipelines.tune <sweep> [--resume | --fresh]   (from the repository root)
An interrupted sweep of the same definition continues where it stopped (so does a killed `dvc repro`);
--resume continues the stored sweep whatever its definition, --fresh starts afresh.
Writes artifacts/tune/<sweep>/{best.json, trials.parquet, curves.json, model/}.
"""

from __future__ import annotations

import argparse

from gm import stage
from gm.stages.tune import tune_sweep


@stage.entry
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", dest="resume", action="store_const", const=True, default=None,
                     help="continue the stored sweep (Tuner.restore) even if its definition changed")
    how.add_argument("--fresh", dest="resume", action="store_const", const=False,
                     help="start afresh even if an interrupted sweep of the same definition is stored")
    args = p.parse_args(argv)
    b = tune_sweep(args.sweep, stage.root(), resume=args.resume)
    print(f"tuned {args.sweep}: best {b['val_metric']} {b['val_score']:.4f} with {b['overrides']} "
          f"(trial {b['trial_id']}), registered v{b['registered_version']}")


if __name__ == "__main__":
    main()
