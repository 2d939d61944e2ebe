"""DVC stage `featurize@<dataset>` (the work is gm.stages.featurize).

Usage: python -m pipelines.featurize <dataset>   (from the repository root)
Writes artifacts/featurizer/<dataset>/{space.json, model/} and artifacts/featurizer-metrics/<dataset>.json;
params.yaml section `featurize`.
"""

from __future__ import annotations

import argparse

from gm import stage
from gm.evaluation import PIXELS
from gm.stages.featurize import featurize


@stage.entry
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="a labelled image dataset under data.datasets in params.yaml")
    args = p.parse_args(argv)
    root = stage.root()
    params = stage.params(root)
    params.dataset(args.dataset)
    s = featurize(args.dataset, root, params.featurize)
    if s.get("space") == PIXELS:
        print(f"featurize {args.dataset}: no featurizer ({PIXELS} space)")
        return
    print(f"featurized {args.dataset}: test accuracy {s['test_accuracy']:.4f} (val {s['val_accuracy']:.4f}, "
          f"best epoch {s['best_epoch']}), {s['num_params']} params, {s['seconds']:.1f}s, hash {s['hash'][:16]}")


if __name__ == "__main__":
    main()
