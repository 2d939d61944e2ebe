"""The MLflow store's gateway: runs, tags, metric curves, models and the registry (gm.cards, gm.catalog and
gm.browser read the registry through the functions at the end; only gm.serving and gm.chaos import MLflow too).

Called from the driver process of a pipeline stage only (never from Ray workers: a
sqlite store is a file on one machine and tolerates one writer).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from gm.core.config import flatten
from gm.core.faults import failpoint

CHAMPION = "champion"
# A registered-model tag naming the version promoted by hand (`gm models promote`): promote_if_better keeps
# the champion there until `gm models promote NAME --auto` removes it
PIN = "gm.champion_pin"


@dataclass(frozen=True)
class MlflowParams:
    tracking_uri: str | None = None  # None = sqlite:///<repo>/mlflow.db (absolute); MLFLOW_TRACKING_URI wins
    experiment: str = "gm"


def repo_root() -> Path:
    """The pipeline's root: where params.yaml lives (DVC runs stages from there): GM_ROOT, else the cwd.

    In a DVC experiment's temporary copy of the repository the cwd wins: a GM_ROOT that the shell of
    `dvc queue start` exported names the user's workspace, whose params.yaml lacks the experiment's changes."""
    cwd = Path(os.getcwd()).resolve()
    if dvc_temp_parent(cwd) is not None:
        return cwd
    return Path(os.environ.get("GM_ROOT", cwd)).resolve()


# `dvc exp run --queue` (and --temp) runs an experiment in <repo>/.dvc/tmp/exps/<tmpdir>/, a copy of the
# repository that DVC deletes once the experiment's results are committed to its Git ref
DVC_TEMP_DIR = (".dvc", "tmp", "exps")


def dvc_temp_parent(root: Path) -> Path | None:
    """The repository whose DVC experiment temporary copy `root` is (or lies in), else None."""
    parts = Path(root).resolve().parts
    n = len(DVC_TEMP_DIR)
    for i in range(len(parts) - n, 0, -1):
        if parts[i:i + n] == DVC_TEMP_DIR:
            return Path(*parts[:i])
    return None


def store_root(root: Path) -> Path:
    """Where the default MLflow store of pipeline root `root` lives (mlflow.db, mlartifacts/): `root`, or in
    a DVC experiment's temporary copy the user's repository, so that the experiment's runs and registered
    versions outlive the copy (DVC also names that repository in DVC_ROOT)."""
    return dvc_temp_parent(root) or Path(root).resolve()


def tracking_uri(params: MlflowParams, root: Path) -> str:
    """MLFLOW_TRACKING_URI, else params' URI, else sqlite:///<root>/mlflow.db — always absolute (a relative
    sqlite path is relative to store_root(root): the user's repository, also for a queued DVC experiment)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking_uri or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # relative sqlite paths resolve against each process's cwd; Ray workers run elsewhere
        uri = "sqlite:///" + str((store_root(root) / uri[len("sqlite:///"):]).resolve())
    return uri


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer, or refuses us (the message is one line, naming what to do)."""


# MLflow's HTTP client retries a failed request 7 times with a backoff factor of 2 (minutes of waiting
# for a server that is down) and gives each 120 s: a stage gives up after about 15 s of retries instead
# (a user's own values win). What was logged before stays; the stage's next attempt resumes.
HTTP_DEFAULTS = (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                 ("MLFLOW_HTTP_REQUEST_TIMEOUT", "60"))


# MLflow reports usage to its makers over the internet unless told not to: nothing here leaves the machine
OFFLINE_ENV = (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"))


def check_server(uri: str, tries: int = 3, timeout: float = 5.0) -> None:
    """Before a stage does any work: an http(s) tracking URI must answer its health check (a few tries, a
    second apart), else TrackingUnavailable in one line."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    reason = "no answer"
    for i in range(tries):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
                if r.status == 200:
                    return
                reason = f"health check answered HTTP {r.status}"
        except urllib.error.HTTPError as e:
            reason = f"health check answered HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            reason = str(getattr(e, "reason", e))
        if i + 1 < tries:
            time.sleep(1.0)
    raise TrackingUnavailable(f"MLflow tracking server {uri} is not answering ({reason}); start it (gm server) "
                              "or point MLFLOW_TRACKING_URI at one that runs; nothing was done")


# An HTTP status as MLflow's REST client words it ("failed with error code 403 != 200"); a bare "403" in the
# text may be part of a port or an id (http://127.0.0.1:53403 refused the connection).
_STATUS = re.compile(r"(?:error code|status code|HTTP|response code)\s*:?\s*(40[13])\b")


def unavailable(error: BaseException) -> str | None:
    """The one line to print when `error` (from any MLflow call) means the tracking server went away or
    refused the credentials; None for every other error."""
    from mlflow.exceptions import MlflowException

    import mlflow

    uri = mlflow.get_tracking_uri()
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if isinstance(error, TrackingUnavailable):
            return text
        if isinstance(error, MlflowException):
            status = _STATUS.search(text)
            code = getattr(error, "error_code", "")
            if code == "UNAUTHENTICATED" or (status and status.group(1) == "401"):
                return (f"MLflow tracking server {uri} refused the request (401 Unauthorized): set "
                        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
            if code == "PERMISSION_DENIED" or (status and status.group(1) == "403"):
                return f"MLflow tracking server {uri}: permission denied (403) for this user"
            if any(k in text for k in ("Max retries exceeded", "Connection refused", "ConnectionError",
                                       "Read timed out", "RemoteDisconnected")):
                return (f"MLflow tracking server {uri} stopped answering (retried for about 15 s); what was "
                        "logged and registered before stays; run the stage again when the server is back")
        if type(error).__name__ in ("ConnectionError", "MaxRetryError", "NewConnectionError") and \
                type(error).__module__.startswith(("requests", "urllib3")):
            return (f"MLflow tracking server {uri} stopped answering; what was logged and registered before "
                    "stays; run the stage again when the server is back")
        error = error.__cause__ or error.__context__
    return None


def setup(params: MlflowParams, root: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id.

    A tracking server must answer first (check_server), and the runs an earlier, killed stage process of
    this workspace left RUNNING are marked KILLED (reap_orphans)."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stage logs stay readable
    for k, v in HTTP_DEFAULTS + OFFLINE_ENV:
        os.environ.setdefault(k, v)
    uri = tracking_uri(params, root)
    check_server(uri)
    use_store(uri)
    exp = mlflow.get_experiment_by_name(params.experiment)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        location = None
        if uri.startswith("sqlite:"):  # keep artifacts next to the database, not under the cwd
            location = (store_root(root) / "mlartifacts").resolve().as_uri()
        try:
            exp_id = mlflow.create_experiment(params.experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # another clone created it in between
            exp = mlflow.get_experiment_by_name(params.experiment)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    reap_orphans(exp_id, root)
    return exp_id


# ------------------------------------------------------------------------------ whose runs


def _process_key(pid: int) -> str | None:
    import psutil

    try:
        return f"{pid}:{int(psutil.Process(pid).create_time())}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def owner() -> str:
    """This process, as a run's `gm.owner` tag: host, pid and start time (a pid alone is reused)."""
    return f"{socket.gethostname()}:{_process_key(os.getpid())}"


def workspace(root: Path) -> str:
    """A workspace (a clone's folder on a host), as a run's `gm.workspace` tag."""
    return f"{socket.gethostname()}:{Path(root).resolve()}"


def owner_alive(tag: str | None) -> bool:
    """False when the process a `gm.owner` tag names is gone (this host's only: another's cannot be seen)."""
    if not tag:
        return False
    host, _, key = tag.partition(":")
    if host != socket.gethostname():
        return True
    pid = key.partition(":")[0]
    return pid.isdigit() and _process_key(int(pid)) == key


def reap_orphans(experiment_id: str, root: Path) -> list[str]:
    """Mark KILLED the runs of this workspace left RUNNING by a stage process that no longer exists (a
    SIGKILLed driver, a lost machine); returns their ids. A run of a live process (a stage running beside
    this one) is left alone, and so is every other workspace's."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    ws = workspace(root)
    runs = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
    reaped = []
    for r in runs:
        if r.data.tags.get("gm.workspace") != ws or owner_alive(r.data.tags.get("gm.owner")):
            continue
        client.set_tag(r.info.run_id, "gm.ended", f"killed: its process {r.data.tags.get('gm.owner')} is gone "
                       f"(marked by {owner()})")
        client.set_terminated(r.info.run_id, "KILLED")
        reaped.append(r.info.run_id)
    return reaped


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
    tags = {"gm.stage": stage, "gm.experiment": name, "mlflow.source.git.commit": git_commit(root),
            "gm.workspace": workspace(root), "gm.owner": owner()}
    if dataset:
        tags["gm.dataset"] = dataset
    # run by `dvc exp run` (in place or queued): the DVC experiment's name and baseline commit, as DVC
    # hands them to every stage command (`dvc exp show` lists the experiment under that name)
    for key, var in (("gm.dvc_experiment", "DVC_EXP_NAME"), ("gm.dvc_baseline_rev", "DVC_EXP_BASELINE_REV")):
        if os.environ.get(var):
            tags[key] = os.environ[var]
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


def model_digest(model_dir: Path) -> str:
    """SHA-256 of an exported model folder (every file's relative path and bytes): a version's identity."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(model_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


SERVING_CODE = Path(__file__).resolve().with_name("serving.py")  # the pyfunc, logged as code


def register_version(model_dir: Path, family: str, dataset: str, score: float, metric: str,
                     likelihood: str | None, extra_tags: Mapping[str, str] | None = None) -> int:
    """Log the exported model as an mlflow.pyfunc sampler in the active run and register it, once.

    The pyfunc is logged as code (MLflow's models-from-code: gm/serving.py, with gm's own code beside it),
    so loading a version imports gm and reads tensors and JSON, never unpickles. A version is identified by
    its folder's digest (tag gm.model_sha256): registering the same folder again (a stage resumed after its
    driver was killed between two seeds' registrations) returns the version it already has. Its tags are
    written with the version in one call, so no version is ever half-tagged. Returns the version; the
    `champion` alias then settles on the best validation score (promote_if_better).
    """
    import mlflow

    name = registered_name(family, dataset)
    digest = model_digest(model_dir)
    tags = {"gm.val_score": repr(float(score)), "gm.val_metric": metric, "gm.family": family,
            "gm.dataset": dataset, "gm.model_sha256": digest,
            "gm.log_prob": {"exact": "exact", "bound": "lower bound (IWAE)"}.get(likelihood or "", "none"),
            **(extra_tags or {})}
    version = _version_of(name, digest)
    if version is None:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVING_CODE),
            artifacts={"model": str(model_dir)},
            code_paths=[str(SERVING_CODE.parent)],  # the sampler rebuilds the family from gm's own code
            pip_requirements=[_pinned("torch").replace("+cpu", ""), _pinned("numpy"), _pinned("pyyaml"),
                              _pinned("mlflow"), _pinned("pydantic")],
            metadata={"family": family, "dataset": dataset, "likelihood": likelihood or "none"},
        )
        version = int(mlflow.register_model(info.model_uri, name, tags=tags).version)
        version = _deduplicate(name, digest, version)
        failpoint("register:version-created")
    promote_if_better(name, version, score)
    return version


def _version_of(name: str, digest: str) -> int | None:
    """The lowest version of `name` registered from a folder with this digest, or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow.tracking.MlflowClient().search_model_versions(
            f"name = '{name}' and tags.`gm.model_sha256` = '{digest}'")
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e):
            return None
        raise
    return min((int(v.version) for v in found), default=None)


def _deduplicate(name: str, digest: str, version: int) -> int:
    """Two stages that registered the same folder at the same moment (two clones of one experiment) both
    find no version, then both create one: the lower number stays, the other is deleted by its creator."""
    import mlflow

    first = _version_of(name, digest)
    if first is not None and first < version:
        mlflow.tracking.MlflowClient().delete_model_version(name, str(version))
        return first
    return version


def champion(name: str):
    """The champion ModelVersion of a registered model, or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.tracking.MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _score(version) -> float:
    try:
        return float(version.tags.get("gm.val_score", "nan"))
    except ValueError:
        return math.nan


def best_version(name: str):
    """The version with the lowest finite validation score (the earliest on a tie), or None."""
    import mlflow

    scored = [(_score(v), int(v.version), v) for v in mlflow.tracking.MlflowClient().search_model_versions(
        f"name = '{name}'")]
    scored = [t for t in scored if math.isfinite(t[0])]
    return min(scored, key=lambda t: t[:2])[2] if scored else None


def promote_if_better(name: str, version: int, score: float, rounds: int = 20) -> bool:
    """Settle `champion` on the best validation score of all versions (lower is better), and record on
    `version` the decision about it: promoted, or kept with the champion's score. True when `version` is
    the champion afterwards. A champion pinned by hand (`gm models promote`, registered-model tag PIN) stays
    where it is, and the decision on `version` says so.

    Two stages registering at once (two clones on one server) cannot overwrite each other's better
    champion: the alias has no compare-and-set, so each sets it to the best version it can see and then
    looks again, until what it set is still the best of everything registered (every stage creates its
    version before this, so the last to look sees them all)."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    pinned = _pinned_version(name)
    if pinned is not None:  # chosen by hand (gm models promote): kept until unpinned
        return _keep_pin(name, version, score, pinned)
    before = champion(name)
    for _ in range(rounds):
        best = best_version(name)
        current = champion(name)
        if best is not None and (current is None or current.version != best.version):
            client.set_registered_model_alias(name, CHAMPION, str(best.version))
        again = best_version(name)
        settled = champion(name)
        if (again is None and best is None) or (again is not None and best is not None and
                                                again.version == best.version and settled is not None and
                                                settled.version == best.version):
            break
    else:
        raise RuntimeError(f"{name}: the champion did not settle in {rounds} rounds of concurrent registrations")
    promoted = best is not None and int(best.version) == int(version)
    if "gm.champion_decision" in client.get_model_version(name, str(version)).tags:
        return promoted  # decided when it was registered (this is a resumed stage): that decision stands
    if not math.isfinite(score):  # a diverged model is never a champion, even the first one
        decision = f"not promoted: validation score {score} is not finite"
    elif promoted:
        prior = (f"{score:.6g} < {_score(before):.6g} of v{before.version}"
                 if before is not None and int(before.version) != int(version) else "no champion before")
        decision = f"promoted: {prior}"
    else:
        decision = f"kept v{best.version}: {_score(best):.6g} <= {score:.6g}"
    client.set_model_version_tag(name, str(version), "gm.champion_decision", decision)
    return promoted


def _pinned_version(name: str):
    """The version the champion is pinned to by hand (registered-model tag PIN), or None (also when that
    version no longer exists)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.tracking.MlflowClient()
    try:
        pin = client.get_registered_model(name).tags.get(PIN)
        return client.get_model_version(name, str(pin)) if pin else None
    except MlflowException:
        return None


def _keep_pin(name: str, version: int, score: float, pinned) -> bool:
    """promote_if_better under a pin: the champion stays on the pinned version, and `version`'s decision says
    so (with the score it would have been compared on)."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    current = champion(name)
    if current is None or current.version != pinned.version:
        client.set_registered_model_alias(name, CHAMPION, str(pinned.version))
    promoted = int(pinned.version) == int(version)
    if "gm.champion_decision" not in client.get_model_version(name, str(version)).tags and not promoted:
        client.set_model_version_tag(
            name, str(version), "gm.champion_decision",
            f"kept v{pinned.version}: pinned by hand by {pinned.tags.get('gm.promoted_by', '?')} "
            f"(score {score:.6g} against its {_score(pinned):.6g}); `gm models promote {name} --auto` unpins it")
    return promoted


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


# ------------------------------------------------------------------------------ reading the store
# for the registry's readers (gm.cards, gm.catalog, gm.browser): MLflow stays behind this module


def client(uri: str | None = None):
    """MLflow's client on the current store, or on store `uri` (tracking and registry)."""
    import mlflow

    return mlflow.tracking.MlflowClient(tracking_uri=uri, registry_uri=uri) if uri else mlflow.tracking.MlflowClient()


def store_error() -> type[Exception]:
    """The exception MLflow raises for what the store lacks (`except tracking.store_error():`)."""
    from mlflow.exceptions import MlflowException

    return MlflowException


def download(uri: str | None = None, *, run_id: str | None = None, path: str | None = None) -> Path:
    """A local copy of an artifact: `uri` (e.g. models:/NAME/VERSION), or `path` in the run `run_id`."""
    import mlflow

    if uri is not None:
        return Path(mlflow.artifacts.download_artifacts(uri))
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


def use_store(uri: str) -> None:
    """Point this process's MLflow (tracking and registry) at `uri`, creating nothing.

    MLflow also exports what it is set to as MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, which would then
    outrank params for every later setup() of this process (another root's, in one test session) and
    leak into the processes it starts: the variables are put back as the user left them."""
    import mlflow

    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def store_uris() -> dict[str, str]:
    """MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI of the store this process uses (for a child process)."""
    import mlflow

    return {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MLFLOW_REGISTRY_URI": mlflow.get_registry_uri()}
