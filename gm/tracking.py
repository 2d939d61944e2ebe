"""The only module that talks to MLflow: runs, tags, metric curves, models and the registry.

Called from the driver process of a pipeline stage only (never from Ray workers: a
sqlite store is a file on one machine and tolerates one writer).
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from gm.core.config import flatten

CHAMPION = "champion"


@dataclass(frozen=True)
class MlflowParams:
    tracking_uri: str | None = None  # None = sqlite:///<repo>/mlflow.db (absolute); MLFLOW_TRACKING_URI wins
    experiment: str = "gm"


def repo_root() -> Path:
    """The pipeline's root: where params.yaml lives (DVC runs stages from there)."""
    return Path(os.environ.get("GM_ROOT", os.getcwd())).resolve()


def tracking_uri(params: MlflowParams, root: Path) -> str:
    """MLFLOW_TRACKING_URI, else params' URI, else sqlite:///<root>/mlflow.db — always absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking_uri or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # relative sqlite paths resolve against each process's cwd; Ray workers run elsewhere
        uri = "sqlite:///" + str((root / uri[len("sqlite:///"):]).resolve())
    return uri


def setup(params: MlflowParams, root: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stage logs stay readable
    uri = tracking_uri(params, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.get_experiment_by_name(params.experiment)
    if exp is not None:
        mlflow.set_experiment(experiment_id=exp.experiment_id)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):  # keep artifacts next to the database, not under the cwd
        location = (root / "mlartifacts").resolve().as_uri()
    exp_id = mlflow.create_experiment(params.experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit(root: Path) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_hashes(root: Path, dataset: str | None = None) -> dict[str, str]:
    """The raw data's hash (data.dvc) and, when recorded, the prepared dataset's (dvc.lock)."""
    import yaml

    tags = {}
    dvc_file = root / "data.dvc"
    if dvc_file.is_file():
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
        tags["gm.data_md5"] = str(outs[0].get("md5", "unknown"))
    lock = root / "dvc.lock"
    if dataset and lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
        for out in (stages.get(f"prepare@{dataset}") or {}).get("outs") or []:
            tags["gm.prepared_md5"] = str(out.get("md5"))
    return tags


def stage_tags(stage: str, name: str, root: Path, dataset: str | None = None, **extra) -> dict[str, str]:
    tags = {"gm.stage": stage, "gm.experiment": name, "mlflow.source.git.commit": git_commit(root)}
    if dataset:
        tags["gm.dataset"] = dataset
    tags.update(data_hashes(root, dataset))
    tags.update({k: str(v) for k, v in extra.items()})
    return tags


@contextlib.contextmanager
def run(run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None):
    """An MLflow run; a child of `parent_run_id` when given (tagged, since Ray does not nest)."""
    import mlflow

    tags = dict(tags)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(run_name=run_name, tags=tags, nested=mlflow.active_run() is not None) as r:
        yield r


def log_params(config: Mapping) -> None:
    import mlflow

    flat = {k: ("null" if v is None else v) for k, v in flatten(config).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        mlflow.log_params(dict(items[i:i + 100]))


def finite_metrics(metrics: Mapping) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (bool, int, float, np.floating, np.integer)) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def log_history(history: Iterable[Mapping], step_key: str = "step") -> None:
    """Every reported dict as metric points at its step (training and tuning curves)."""
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = []
    for row in history:
        step = int(row.get(step_key, 0))
        for k, v in finite_metrics(row).items():
            if k != step_key:
                batch.append(Metric(key=k, value=v, timestamp=now, step=step))
    client = mlflow.tracking.MlflowClient()
    run_id = mlflow.active_run().info.run_id
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i:i + 1000])


def log_metrics(metrics: Mapping) -> None:
    import mlflow

    mlflow.log_metrics(finite_metrics(metrics))


def set_tag(key: str, value: str) -> None:
    """Tag the active run (e.g. gm.failure_reason of a diverged seed or a failed trial)."""
    import mlflow

    mlflow.set_tag(key, value)


def log_artifacts(path: Path, artifact_path: str | None = None) -> None:
    """A file or a folder's contents as artifacts of the active run (under `artifact_path`)."""
    import mlflow

    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    elif path.is_file():
        mlflow.log_artifact(str(path), artifact_path)


# ------------------------------------------------------------------------------ registry


def registered_name(family: str, dataset: str) -> str:
    return f"gm-{family}-{dataset}"


def _pinned(package: str) -> str:
    from importlib.metadata import version

    return f"{package}=={version(package)}"


def register_version(model_dir: Path, family: str, dataset: str, score: float, metric: str,
                   likelihood: str | None, extra_tags: Mapping[str, str] | None = None) -> int:
    """Log the exported model as an mlflow.pyfunc sampler in the active run and register it.

    Returns the new version; the `champion` alias moves to it only when it beats the
    current champion on the validation score (lower is better), recorded as a tag.
    """
    import warnings

    import mlflow

    from gm.serving import GMSampler

    # requests are dicts ({"n": ...} or {"log_prob": ...}), which MLflow's type-hint validation cannot express
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
    name = registered_name(family, dataset)
    gm_dir = Path(__file__).resolve().parent
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=GMSampler(),
        artifacts={"model": str(model_dir)},
        code_paths=[str(gm_dir)],  # the sampler rebuilds the family from gm's own code
        pip_requirements=[_pinned("torch").replace("+cpu", ""), _pinned("numpy"), _pinned("pyyaml"),
                          _pinned("mlflow")],
        registered_model_name=name,
        metadata={"family": family, "dataset": dataset, "likelihood": likelihood or "none"},
    )
    version = int(info.registered_model_version)
    tags = {"gm.val_score": repr(float(score)), "gm.val_metric": metric, "gm.family": family,
            "gm.dataset": dataset,
            "gm.log_prob": {"exact": "exact", "bound": "lower bound (IWAE)"}.get(likelihood or "", "none"),
            **(extra_tags or {})}
    tag_version(name, version, tags)
    promote_if_better(name, version, score)
    return version


def champion(name: str):
    """The champion ModelVersion of a registered model, or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.tracking.MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def promote_if_better(name: str, version: int, score: float) -> bool:
    """Move `champion` to `version` if its validation score beats the champion's (or none exists)."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    current = champion(name)
    if not math.isfinite(score):  # a diverged model is never a champion, even the first one
        decision, promote = f"not promoted: validation score {score} is not finite", False
    elif current is None:
        decision, promote = "promoted: no champion before", True
    else:
        best = float(current.tags.get("gm.val_score", "inf"))
        promote = math.isfinite(score) and score < best
        decision = (f"promoted: {score:.6g} < {best:.6g} of v{current.version}" if promote
                    else f"kept v{current.version}: {best:.6g} <= {score:.6g}")
    if promote:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "gm.champion_decision", decision)
    return promote


def load_registered(model_uri: str):
    """The pyfunc sampler of a registered model version, e.g. models:/gm-wgan_gp-grid25@champion."""
    import mlflow

    return mlflow.pyfunc.load_model(model_uri)


def tag_version(name: str, version: int, tags: Mapping[str, str]) -> None:
    """Attach (e.g. test-set) figures to a registered model version."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, str(v))
