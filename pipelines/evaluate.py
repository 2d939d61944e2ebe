"""DVC stages `evaluate@<experiment>` and `evaluate_tuned@<sweep>`: one protocol, the test split.

Usage: python -m pipelines.evaluate train <experiment> | tune <sweep>   (from the repository root)
Writes artifacts/eval/<experiment>/ or artifacts/eval/tuned-<sweep>/ {metrics.json, samples.png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gm import stage, tracking
from gm.evaluation import evaluate, plot_samples
from gm.files import read_json, write_json


def evaluate_stage(source: str, name: str, root: Path) -> dict:
    params = stage.params(root)
    if source == "train":
        exp = params.experiment(name)
        model_dir = root / "artifacts" / "train" / name / "model"
        out, label = root / "artifacts" / "eval" / name, name
        version = read_json(root / "artifacts" / "train" / name / "metrics.json").get("registered_version")
    else:
        if name not in params.sweeps:
            raise stage.StageError(f"tune.sweeps.{name}: no such sweep; expected one of: {', '.join(params.sweeps)}")
        exp = params.experiment(params.sweeps[name].experiment)
        model_dir = root / "artifacts" / "tune" / name / "model"
        out, label = root / "artifacts" / "eval" / f"tuned-{name}", f"tuned-{name}"
        version = read_json(root / "artifacts" / "tune" / name / "best.json").get("registered_version")
    data_dir = stage.prepared_dir(exp.dataset, root)
    metrics, arrays = evaluate(model_dir, data_dir, params.evaluate)
    summary = {"experiment": label, "family": exp.family, "dataset": exp.dataset, "source": source,
               "registered_version": version, **metrics}
    write_json(out / "metrics.json", summary)
    plot = plot_samples(out / "samples.png", arrays["samples"][: params.evaluate.plot_samples], arrays["test"],
                        arrays["meta"], f"{label} ({exp.family} on {exp.dataset})")
    tracking.setup(params.mlflow, root)
    tags = tracking.stage_tags("evaluate", label, root, exp.dataset, **{"gm.family": exp.family})
    with tracking.run(f"evaluate/{label}", tags):
        tracking.log_params({"evaluate": vars(params.evaluate) | {"source": source, "model_version": version}})
        tracking.log_metrics(metrics)
        tracking.log_artifacts(plot)
        tracking.log_artifacts(out / "metrics.json")
    if version is not None:
        tracking.tag_version(tracking.registered_name(exp.family, exp.dataset), version,
                             {f"gm.test.{k}": f"{v:.6g}" for k, v in metrics.items()})
    return summary


@stage.entry
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", choices=["train", "tune"])
    p.add_argument("name", help="an experiment (train) or a sweep (tune)")
    args = p.parse_args(argv)
    s = evaluate_stage(args.source, args.name, stage.root())
    keys = [k for k in ("modes", "hq_pct", "rkl", "w1", "fd_pixel", "class_coverage", "test_bits_per_dim") if k in s]
    print(f"evaluated {s['experiment']}: " + ", ".join(f"{k} {s[k]:.4g}" for k in keys))


if __name__ == "__main__":
    main()
