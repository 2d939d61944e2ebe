"""DVC stages `evaluate@<experiment>`, `evaluate_tuned@<sweep>` and `baseline@<dataset>` (the work is gm.stages.evaluate).

Usage (from the repository root):
    python -m pipelines.evaluate train <experiment>    -> artifacts/eval/<experiment>/
    python -m pipelines.evaluate tune <sweep>          -> artifacts/eval/tuned-<sweep>/
    python -m pipelines.evaluate baseline <dataset>    -> artifacts/eval/baseline-<kind>-<dataset>/
each holding metrics.json and samples.png.
"""

from __future__ import annotations

import argparse

from gm import stage
from gm.stages.evaluate import CANDIDATES, evaluate_source


@stage.entry
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", choices=sorted(CANDIDATES))
    p.add_argument("name", help="an experiment (train), a sweep (tune) or a dataset (baseline)")
    args = p.parse_args(argv)
    for s in evaluate_source(args.source, args.name, stage.root()):  # a line per candidate (two baselines)
        keys = [k for k in ("modes", "hq_pct", "rkl", "w1", "fd", "precision", "recall", "class_coverage",
                            "test_bits_per_dim") if k in s]
        print(f"evaluated {s['experiment']} over {s['seeds']} seed(s): "
              + ", ".join(f"{k} {s[k]:.4g}" + (f" ± {s[k + '_std']:.2g}" if k + "_std" in s else "") for k in keys))


if __name__ == "__main__":
    main()
