"""The registry and run bookkeeping that survive faults, on a real sqlite MLflow store: a version per model
folder, the champion under interleaved writers, runs of dead processes reaped, a lost server in one line,
fail points. (The same against a real server: test_server.py, test_chaos.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from gm import tracking
from gm.core.faults import failpoint
from gm.data.dataspec import DataSpec
from gm.models.base import build_model, save_model
from gm.params import parse_params
from tests.helpers import tiny_params


def exported(dest: Path, seed: int = 0) -> Path:
    import torch

    exp = parse_params(tiny_params()).experiments["wgan_gp-ring8"]
    torch.manual_seed(seed)
    return save_model(build_model(exp.family, exp.model, DataSpec(shape=(2,), kind="toy")), dest)


def test_a_folder_registered_twice_is_one_version_logged_as_code(store):
    model = exported(store / "m")
    with tracking.run("r", tracking.stage_tags("train", "x", store)):
        first = tracking.register_version(model, "wgan_gp", "toy", 1.0, "val_w1", None)
        again = tracking.register_version(model, "wgan_gp", "toy", 1.0, "val_w1", None)
    assert first == again == 1
    (v,) = mlflow.MlflowClient().search_model_versions("name = 'gm-wgan_gp-toy'")
    assert v.tags["gm.model_sha256"] == tracking.model_digest(model)
    assert v.tags["gm.champion_decision"] == "promoted: no champion before"
    # models-from-code: the stored model is gm/serving.py and the folder, no pickled object
    stored = Path(mlflow.artifacts.download_artifacts(f"models:/gm-wgan_gp-toy/{v.version}"))
    assert not list(stored.rglob("*.pkl"))
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in (stored / "MLmodel").read_text()
    x = mlflow.pyfunc.load_model("models:/gm-wgan_gp-toy@champion").predict([{"n": 5, "seed": 1}])
    assert x.shape == (5, 2)
    with pytest.raises(MlflowException, match="type hint"):
        mlflow.pyfunc.load_model("models:/gm-wgan_gp-toy@champion").predict([{"n": "five"}])


def test_the_same_folder_registered_by_two_stages_at_once_keeps_the_lower_version(store):
    client = mlflow.MlflowClient()
    client.create_registered_model("gm-x")
    for _ in range(2):  # both found no version with this digest, both created one
        client.create_model_version("gm-x", str(store), tags={"gm.model_sha256": "abc", "gm.val_score": "1.0"})
    assert tracking._deduplicate("gm-x", "abc", 2) == 1
    assert tracking._deduplicate("gm-x", "abc", 1) == 1
    assert [int(v.version) for v in client.search_model_versions("name = 'gm-x'")] == [1]


def test_a_stale_writer_cannot_leave_a_worse_champion(store):
    client = mlflow.MlflowClient()
    client.create_registered_model("gm-x")

    def version(score: float) -> int:
        return int(client.create_model_version("gm-x", str(store), tags={"gm.val_score": repr(score)}).version)

    v1, v2 = version(1.0), version(0.5)
    # a writer that saw only v1 set the alias after the writer of v2 had promoted it
    client.set_registered_model_alias("gm-x", "champion", str(v1))
    assert not tracking.promote_if_better("gm-x", v1, 1.0)
    assert int(client.get_model_version_by_alias("gm-x", "champion").version) == v2
    assert client.get_model_version("gm-x", str(v1)).tags["gm.champion_decision"] == "kept v2: 0.5 <= 1"
    # a decision is made once: a resumed stage that promotes again does not rewrite it
    assert tracking.promote_if_better("gm-x", v2, 0.5)
    assert "gm.champion_decision" in client.get_model_version("gm-x", str(v2)).tags


def test_reading_another_store_leaves_the_next_setup_on_its_own_store(tmp_path, monkeypatch):
    # `gm models` points this process at a store to read it; MLflow would export that as
    # MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, which then outranks params.yaml for every later setup()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    tracking.use_store(f"sqlite:///{tmp_path}/a/mlflow.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    tracking.setup(tracking.MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/b/mlflow.db"), tmp_path / "b")
    assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == f"sqlite:///{tmp_path}/b/mlflow.db"
    mlflow.MlflowClient().create_registered_model("gm-x")
    assert (tmp_path / "b/mlflow.db").is_file() and not (tmp_path / "a/mlflow.db").exists()


def test_runs_of_dead_processes_of_this_workspace_are_marked_killed(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name("gm").experiment_id
    ws = tracking.workspace(store)
    host = tracking.owner().split(":")[0]

    def running(workspace: str, owner: str) -> str:
        return client.create_run(exp, tags={"gm.workspace": workspace, "gm.owner": owner}).info.run_id

    orphan = running(ws, f"{host}:{dead}:12345")
    reused_pid = running(ws, f"{tracking.owner().rsplit(':', 1)[0]}:1")  # this pid, another start time
    live = running(ws, tracking.owner())
    elsewhere = running(f"{host}:/another/clone", f"{host}:{dead}:12345")
    other_host = running(ws.replace(host, "otherhost", 1), f"otherhost:{dead}:1")
    assert sorted(tracking.reap_orphans(exp, store)) == sorted([orphan, reused_pid])
    status = {r: client.get_run(r).info.status for r in (orphan, reused_pid, live, elsewhere, other_host)}
    assert status == {orphan: "KILLED", reused_pid: "KILLED", live: "RUNNING", elsewhere: "RUNNING",
                      other_host: "RUNNING"}
    assert client.get_run(orphan).data.tags["gm.ended"].startswith("killed: its process")


def test_a_tracking_server_that_does_not_answer_is_one_line(tmp_path):
    from gm.training.cluster import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(tracking.TrackingUnavailable, match=rf"^MLflow tracking server {uri} is not answering"):
        tracking.check_server(uri, tries=1)


def test_a_server_lost_mid_stage_or_refusing_us_is_named_in_one_line():
    import requests

    try:
        try:
            raise requests.exceptions.ConnectionError("Max retries exceeded with url: /api (Connection refused)")
        except requests.exceptions.ConnectionError as e:
            raise MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-batch failed") from e
    except MlflowException as lost:
        assert "stopped answering" in tracking.unavailable(lost)
    refused = MlflowException("API request to endpoint /x failed with error code 401 != 200")
    assert "MLFLOW_TRACKING_USERNAME" in tracking.unavailable(refused)
    assert "permission denied" in tracking.unavailable(
        MlflowException("API request to endpoint /x failed with error code 403 != 200"))
    assert tracking.unavailable(ValueError("anything else")) is None


def test_a_port_or_id_that_contains_401_or_403_is_not_taken_for_a_status():
    # CI once called a killed server "permission denied": its port was 53403
    for port in (53403, 40130):
        text = (f"API request to endpoint /api/2.0/mlflow/runs/log-batch failed with exception "
                f"HTTPConnectionPool(host='127.0.0.1', port={port}): Max retries exceeded with url: /api "
                "(Caused by NewConnectionError('Connection refused'))")
        assert "stopped answering" in tracking.unavailable(MlflowException(text))


FAIL = "from gm.core.faults import failpoint; failpoint('register:version-created'); print('alive')"


def test_a_fail_point_kills_its_process_only_when_named(tmp_path):
    run = lambda env: subprocess.run([sys.executable, "-c", FAIL], capture_output=True, text=True,  # noqa: E731
                                     env={**env, "PATH": "/usr/bin:/bin"}, cwd=Path(__file__).parents[1])
    assert run({}).stdout.strip() == "alive"
    assert run({"GM_FAILPOINT": "register:version-created"}).returncode == -9
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GM_FAILPOINT", "no-such-point")
        failpoint("register:version-created")  # another point's name: nothing happens here
        with pytest.raises(ValueError, match="unknown fail point"):
            failpoint("no-such-point")

