"""Stage `tune@<sweep>`: Ray Tune sweep -> best config and model, nested MLflow runs, registry.

An interrupted sweep of the same definition continues where it stopped (so does a killed `dvc repro`);
resume=True continues the stored sweep whatever its definition, resume=False starts afresh.
Writes artifacts/tune/<sweep>/{best.json, trials.parquet, curves.json, model/}.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from gm import cards, stage, tracking
from gm.core.config import to_dict
from gm.data.io import data_spec
from gm.core.files import write_json
from gm.core.layout import Layout
from gm.models.base import load_model
from gm.training import progress
from gm.training.driver import check_buildable, export_selected
from gm.training.cluster import init_ray, storage_path
from gm.training.validate import reported_metric
from gm.core import timing
from gm.core.timing import phase
from tune.driver import METRIC, run_sweep, trial_id
from tune.sweep import apply_overrides, check_pbt_space


def trial_rows(grid) -> list[dict]:
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        scores = df[METRIC] if df is not None and METRIC in df else pd.Series(dtype=float)
        # the knobs along the way: constant, except where PBT perturbed them
        knobs = [c for c in (df.columns if df is not None else ()) if c.startswith("config/")
                 and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
        rows.append({
            "trial_id": trial_id(r),
            **{f"config.{k}": v for k, v in (r.config or {}).items()},
            "best_val_score": float(scores.min()) if len(scores) else math.inf,
            "last_step": int(df["step"].max()) if df is not None and "step" in df else 0,
            "reports": int(len(df)) if df is not None else 0,
            # the trial's optimizer steps (its last Train segment's: a PBT restart counts from its checkpoint)
            "train_seconds": float(df["train_seconds"].max()) if df is not None and "train_seconds" in df else 0.0,
            "status": "error" if r.error is not None else "ok",
            "error": failure_reason(r.error) if r.error is not None else "",
            "curve": df[["step", METRIC, *knobs]].to_dict("records") if df is not None and METRIC in df else [],
            # where a VAE-like trial ended on the rate-distortion plane (see gm.training.validate)
            **{k: float(df[k].dropna().iloc[-1]) for k in ("val_rate", "val_distortion")
               if df is not None and k in df and df[k].notna().any()},
        })
    return rows


def failure_reason(error: BaseException) -> str:
    """The line that says why a trial failed (a divergence's 'diverged: step ...: loss ... is nan'),
    not Ray's traceback header."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "TrialDiverged" in ln or ln.startswith("diverged:"):
            return ln[ln.index("diverged:"):][:300] if "diverged:" in ln else ln[:300]
    return (lines[-1] if lines else type(error).__name__)[:300]


def log_trial(row: dict, result, tags: dict, parent_id: str) -> None:
    """One nested MLflow run per trial (written by this driver only): knobs, curves, and the trial's
    final checkpoint as an artifact; a failed trial carries its reason."""
    with tracking.run(f"trial/{row['trial_id']}", {**tags, "gm.trial_id": row["trial_id"],
                                                   "gm.trial_status": row["status"]}, parent_run_id=parent_id):
        tracking.log_params({k: v for k, v in row.items() if k.startswith("config.")})
        tracking.log_history(row["curve"])
        tracking.log_metrics({"best_val_score": row["best_val_score"], "reports": row["reports"]})
        if row["error"]:
            tracking.set_tag("gm.failure_reason", row["error"])
        if result.checkpoint is not None:
            with result.checkpoint.as_directory() as d:
                tracking.log_artifacts(Path(d), "final_checkpoint")


def tune_sweep(name: str, root: Path, resume: bool | None = None) -> dict:
    params = stage.params(root)
    sweep = params.sweep(name)
    exp = params.experiment(sweep.experiment)
    data_dir = stage.prepared_dir(exp.dataset, root)
    with phase("check"):
        check_buildable(exp, data_dir)  # before Ray starts
    if sweep.scheduler == "pbt":
        check_pbt_space(sweep, exp, data_spec(data_dir), f"tune.sweeps.{name}")
    out = Layout(root).tune(name)
    storage = storage_path(params.ray, root)
    with phase("mlflow_setup"):  # first: a tracking server that does not answer stops the stage before Ray starts
        tracking.setup(params.mlflow, root)
    with phase("ray_start"):
        init_ray(params.ray)
    tags = tracking.stage_tags("tune", name, root, exp.dataset, **{"gm.family": exp.family})
    with tracking.run(f"tune/{name}", tags) as parent:
        tracking.log_params({"sweep": to_dict(sweep), "experiment": exp.to_dict()})
        with phase("sweep"), progress.watching(progress.trial_label(name)):  # a line per trial
            result = run_sweep(sweep, exp, data_dir, storage, f"tune-{name}", resume=resume)
        rows = trial_rows(result.grid)
        for row in rows:
            timing.PHASES.record_run(row["trial_id"], {"steps": row["train_seconds"]})
        # optimizer steps on the sweep's wall clock: its trials' steps, `concurrency` at a time
        timing.PHASES.add("steps", sum(r["train_seconds"] for r in rows) / max(1, result.concurrency))
        with phase("trial_runs"):
            for row, r in zip(rows, result.grid):
                log_trial(row, r, tags, parent.info.run_id)
        with phase("export"):
            chosen = export_selected(result.best, out.model, exp.train.select)
            model = load_model(out.model)
        metric = reported_metric(chosen)
        best = {
            "sweep": name, "experiment": exp.name, "trial_id": result.best_trial_id,
            "overrides": result.best_overrides, "val_score": result.best_score, "val_metric": metric,
            "best_step": int(chosen.get("step", 0)), "concurrency": result.concurrency,
            "scheduler": sweep.scheduler, "search": sweep.search,
            "config": apply_overrides(exp.to_dict(), result.best_overrides),
        }
        tracking.log_metrics({"best_val_score": result.best_score, "trials": len(rows)})
        with phase("registration"):
            version = tracking.register_version(out.model, exp.family, exp.dataset, result.best_score, metric,
                                                model.likelihood, {"gm.source": "tune", "gm.sweep": name,
                                                                   "gm.trial_id": result.best_trial_id})
            cards.card_at_registration(tracking.registered_name(exp.family, exp.dataset), version, model, data_dir,
                                       best["config"])
        best["registered_version"] = version
        write_json(out.best, best)
        table = pd.DataFrame([{k: v for k, v in r.items() if k != "curve"} for r in rows])
        table.to_parquet(out.trials, index=False)
        write_json(out.curves, {r["trial_id"]: r["curve"] for r in rows})
    return best
