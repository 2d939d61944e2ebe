"""Stage `train@<experiment>`: Ray Train runs (one per seed) -> models chosen by train.select,
an MLflow run (a nested run per seed), registered model versions.

Writes artifacts/train/<experiment>/{models/seed-<s>/, metrics.json, history.json}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
from pathlib import Path

from gm import cards, stage, tracking
from gm.training.experiment import ExperimentConfig
from gm.core.files import write_json
from gm.core.layout import Layout
from gm.models.base import load_model
from gm.training.driver import TrainOutcome, check_buildable, fit_many, mark_completed, start_or_resume
from gm.training.cluster import init_ray, storage_path
from gm.training.validate import reported_metric
from gm.core import timing
from gm.core.timing import phase


def seed_runs(exp: ExperimentConfig) -> list[tuple[ExperimentConfig, str]]:
    """One experiment per replicate seed, with its Ray run name."""
    out = []
    for i in range(exp.train.seeds):
        seed = exp.train.seed + i
        out.append((dataclasses.replace(exp, train=dataclasses.replace(exp.train, seed=seed)),
                    f"train-{exp.name}-seed{seed}"))
    return out


def record_seed(exp: ExperimentConfig, seed: int, outcome: TrainOutcome, dest: Path, parent_id: str,
                tags: dict, data_dir: Path | None = None) -> dict:
    """Nested MLflow run of one seed: curves, timings; its selected model exported and registered, with its
    model card (gm.cards: sample figures of `data_dir`'s kind as artifacts of this run, the description)."""
    with tracking.run(f"train/{exp.name}/seed{seed}", {**tags, "gm.seed": str(seed)}, parent_run_id=parent_id):
        tracking.log_history(outcome.history)
        score = float(outcome.metrics.get("val_score", math.inf))
        if outcome.diverged or outcome.checkpoint is None or not math.isfinite(score):
            reason = outcome.diverged or "no checkpoint with a finite validation score"
            tracking.set_tag("gm.failure_reason", reason)
            raise stage.StageError(f"experiment {exp.name} (seed {seed}) diverged ({reason}); nothing of this "
                                   f"seed was registered; lower the learning rates in experiments.{exp.name}.model")
        with phase("export"):
            model_dir = outcome.export(dest)
            model = load_model(model_dir)
        metric = reported_metric(outcome.metrics)
        resumed_from = max([int(h.get("resumed_from_step") or 0) for h in outcome.history] +
                           [outcome.resumed_from or 0])  # a run resumed at its last step adds no entry
        row = {
            "seed": seed, "val_score": score, "val_metric": metric, "best_step": int(outcome.metrics["step"]),
            "resumed_from_step": resumed_from,
            "nodes": outcome.nodes,  # the Ray node of each rank (of the attempt that finished)
            "wall_seconds": outcome.wall_seconds, "train_seconds": outcome.train_seconds,
            "setup_seconds": max(0.0, outcome.wall_seconds - outcome.worker_seconds),  # Ray workers, data, teardown
            "validation_seconds": max(0.0, outcome.worker_seconds - outcome.train_seconds),
            "steps_per_s": (exp.train.steps - resumed_from) / outcome.train_seconds if outcome.train_seconds else 0.0,
        }
        tracking.log_metrics({f"best_{k}": v for k, v in row.items() if k != "seed"})
        with phase("registration"):
            row["registered_version"] = tracking.register_version(
                model_dir, exp.family, exp.dataset, score, metric, model.likelihood,
                {"gm.source": "train", "gm.experiment": exp.name, "gm.seed": str(seed)})
        if data_dir is not None:
            with phase("model_card"):
                cards.card_at_registration(tracking.registered_name(exp.family, exp.dataset),
                                           row["registered_version"], model, data_dir, exp.to_dict())
    return row


def definition(exp: ExperimentConfig, data_dir: Path, root: Path) -> str:
    """What a run trains: its experiment, the prepared data (meta.json: hashes, splits) and the code (every
    .py of gm/ and pipelines/), as one digest. An interrupted run resumes only under the same one."""
    digest = hashlib.sha256(json.dumps(exp.to_dict(), sort_keys=True).encode())
    digest.update((data_dir / "meta.json").read_bytes())
    for path in sorted(p for d in ("gm", "pipelines") for p in (root / d).rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def train(name: str, root: Path, fresh: bool = False) -> dict:
    """Train experiment `name` of root/params.yaml (every seed), log it and register its models.

    A seed's run that an earlier, killed attempt of this stage left unfinished continues from its latest
    checkpoint when the definition (params, data, code) is the same, unless `fresh`."""
    params = stage.params(root)
    exp = params.experiment(name)
    data_dir = stage.prepared_dir(exp.dataset, root)
    runs = seed_runs(exp)
    storage = storage_path(params.ray, root)
    defined = definition(exp, data_dir, root)
    with phase("check"):  # before Ray starts: the data and the model's config
        check_buildable(exp, data_dir)
    out = Layout(root).train(name)
    # The report stage reads artifacts/tune as a whole; a params.yaml without sweeps never makes it, and
    # DVC refuses a missing dependency. Training always runs before the report, so it leaves it there.
    Layout(root).tune_root.mkdir(parents=True, exist_ok=True)
    with phase("mlflow_setup"):  # first: a tracking server that does not answer stops the stage before Ray starts
        tracking.setup(params.mlflow, root)
    # still before Ray: each run to resume is vetted (its latest checkpoint loads), the others cleared
    resumed = [start_or_resume(storage, run_name, defined, fresh) for _, run_name in runs]
    with phase("ray_start"):
        init_ray(params.ray)
    tags = tracking.stage_tags("train", name, root, exp.dataset, **{"gm.family": exp.family})
    with tracking.run(f"train/{name}", tags) as parent:
        tracking.log_params(exp.to_dict())
        tracking.log_params({"resumed_seeds": ",".join(str(e.train.seed) for (e, _), r in zip(runs, resumed) if r)
                             or "none"})
        with phase("fits"):  # start_or_resume cleared what must start afresh: Train resumes the rest
            outcomes = fit_many(runs, data_dir, storage, resume=True)
        for (e, run_name), o in zip(runs, outcomes):
            timing.PHASES.record_run(f"seed{e.train.seed}", {"fit": o.wall_seconds, **o.phases})
            if o.diverged:  # nothing to continue: the next attempt (new learning rates, say) starts afresh
                mark_completed(storage, run_name)
        slowest = max(outcomes, key=lambda o: o.train_seconds)  # the seeds run side by side: its steps are the wait
        timing.PHASES.add("steps", slowest.train_seconds)
        timing.PHASES.add("validation", slowest.phases.get("validation", 0.0))
        write_json(out.history, [{"seed": e.train.seed, **h} for (e, _), o in zip(runs, outcomes)
                                          for h in o.history])
        rows = [record_seed(e, e.train.seed, o, out.model(e.train.seed), parent.info.run_id, tags, data_dir)
                for (e, _), o in zip(runs, outcomes)]
        scores = [r["val_score"] for r in rows]
        best = min(rows, key=lambda r: r["val_score"])
        summary = {
            "val_metric": best["val_metric"], "val_score": statistics.fmean(scores),
            "val_score_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "best_seed": best["seed"], "best_val_score": best["val_score"], "seeds": len(rows),
            "wall_seconds": max(r["wall_seconds"] for r in rows),
            "setup_seconds": statistics.fmean(r["setup_seconds"] for r in rows),
            "steps_per_s": statistics.fmean(r["steps_per_s"] for r in rows),
            "per_seed": {str(r["seed"]): r for r in rows},
        }
        tracking.log_metrics({k: v for k, v in summary.items() if not isinstance(v, (dict, str))})
        write_json(out.metrics, summary)
    for _, run_name in runs:
        mark_completed(storage, run_name)
    return summary
