"""DVC stage `train@<experiment>`: Ray Train run -> best-on-validation model, MLflow run, registry.

Usage: python -m pipelines.train <experiment>   (from the repository root)
Writes artifacts/train/<experiment>/{model/, metrics.json, history.json}.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from gm import stage, tracking
from gm.files import write_json
from gm.models.base import load_model
from gm.training.driver import fit, init_ray, storage_path
from gm.training.validate import validation_metric


def train(name: str, root: Path, resume: bool = False) -> dict:
    """Train experiment `name` of root/params.yaml, log it to MLflow and register its best model."""
    params = stage.params(root)
    exp = params.experiment(name)
    data_dir = stage.prepared_dir(exp.dataset, root)
    out = root / "artifacts" / "train" / name
    init_ray(params.ray)
    tracking.setup(params.mlflow, root)
    tags = tracking.stage_tags("train", name, root, exp.dataset, **{"gm.family": exp.family})
    with tracking.run(f"train/{name}", tags):
        tracking.log_params(exp.to_dict())
        outcome = fit(exp, data_dir, storage_path(params.ray, root), f"train-{name}",
                      export_to=out / "model", resume=resume)
        tracking.log_history(outcome.history)
        write_json(out / "history.json", outcome.history)
        score = float(outcome.best_metrics.get("val_score", math.inf))
        if outcome.diverged or outcome.best_model_dir is None or not math.isfinite(score):
            reason = outcome.diverged or "no checkpoint with a finite validation score"
            import mlflow

            mlflow.set_tag("gm.failure_reason", reason)
            raise stage.StageError(f"experiment {name} diverged ({reason}); nothing was registered; "
                                   f"lower the learning rate in experiments.{name}.model")
        model = load_model(outcome.best_model_dir)
        metric = validation_metric(model, model.data)
        summary = {
            "val_score": score, metric: score, "best_step": int(outcome.best_metrics["step"]),
            "wall_seconds": outcome.wall_seconds, "train_seconds": outcome.train_seconds,
            "setup_seconds": max(0.0, outcome.wall_seconds - outcome.worker_seconds),  # Ray workers, data, teardown
            "validation_seconds": max(0.0, outcome.worker_seconds - outcome.train_seconds),
            "steps_per_s": exp.train.steps / outcome.train_seconds if outcome.train_seconds else 0.0,
        }
        tracking.log_metrics({f"best_{k}": v for k, v in summary.items()})
        version = tracking.register_model(outcome.best_model_dir, exp.family, exp.dataset, score, metric,
                                          model.likelihood, {"gm.source": "train", "gm.experiment": name})
        summary["registered_version"] = version
        write_json(out / "metrics.json", summary)
    return summary


@stage.entry
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its latest checkpoint")
    args = p.parse_args(argv)
    s = train(args.experiment, stage.root(), resume=args.resume)
    print(f"trained {args.experiment}: val_score {s['val_score']:.4f} at step {s['best_step']}, "
          f"{s['wall_seconds']:.1f}s wall ({s['setup_seconds']:.1f}s setup), "
          f"registered v{s['registered_version']}")


if __name__ == "__main__":
    main()
