"""DVC stage `train@<experiment>` (the work is gm.stages.train).

Usage: python -m pipelines.train <experiment> [--fresh]   (from the repository root)
A run interrupted before the stage finished (its driver killed) continues from its latest checkpoint
when the stage runs again with the same definition (params, data, code); --fresh starts it from step 0.
Writes artifacts/train/<experiment>/{models/seed-<s>/, metrics.json, history.json}.
"""

from __future__ import annotations

import argparse

from gm import stage
from gm.stages.train import train


@stage.entry
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("--fresh", action="store_true", help="start every run from step 0, even an interrupted one")
    args = p.parse_args(argv)
    s = train(args.experiment, stage.root(), fresh=args.fresh)
    print(f"trained {args.experiment}: {s['val_metric']} {s['val_score']:.4f} ± {s['val_score_std']:.4f} "
          f"over {s['seeds']} seed(s) (best seed {s['best_seed']}: {s['best_val_score']:.4f}), "
          f"{s['wall_seconds']:.1f}s wall, {s['setup_seconds']:.1f}s Ray set-up per run")


if __name__ == "__main__":
    main()
