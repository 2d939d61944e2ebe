"""A team's tracking server for real: a throwaway PostgreSQL 15 (initdb, pg_ctl), `mlflow server` on it with
proxied artifacts on a loopback port, and the pipeline's stages run against it in their own processes.

What lands in PostgreSQL is read from MLflow's own tables with SQL, not through MLflow's client."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from gm.chaos import GAN_RING8, last_line, run_stage, stage_env, tiny_params, workspace
from gm.server import Auth, MlflowServer, start_team
from gm.training.cluster import free_port, free_ports

pytestmark = pytest.mark.integration

EXPERIMENT, DATASET = "gan-team", "ring8t"
MODEL = f"gm-gan-{DATASET}"


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    port, pg_port = free_ports(2)
    t = start_team(tmp_path_factory.mktemp("server"), port=port, pg_port=pg_port, throwaway=True)
    yield t
    t.stop()


@pytest.fixture(scope="module")
def trained(team, tmp_path_factory):
    """A workspace whose train (two seeds) and evaluate stages ran against the server."""
    params = tiny_params({EXPERIMENT: {**GAN_RING8, "dataset": DATASET, "train": {"seeds": 2}}},
                         datasets={DATASET: {"source": "ring8", "n": 3000}})
    root = workspace(tmp_path_factory.mktemp("team") / "ws", params)
    env = stage_env(root, MLFLOW_TRACKING_URI=team.server.uri)
    for stage, args in (("train", (EXPERIMENT,)), ("evaluate", ("train", EXPERIMENT))):
        r = run_stage(root, stage, *args, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    return root


def sql(team, query: str, *args):
    return team.postgres.query("mlflow", query, args)


def test_runs_nested_runs_versions_and_the_champion_land_in_postgresql(team, trained):
    runs = dict(sql(team, "SELECT r.name, r.run_uuid FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                          "WHERE e.name = 'gm-chaos' AND r.status = 'FINISHED'"))
    assert {f"train/{EXPERIMENT}", f"train/{EXPERIMENT}/seed0", f"train/{EXPERIMENT}/seed1",
            f"evaluate/{EXPERIMENT}"} <= set(runs)
    parents = dict(sql(team, "SELECT run_uuid, value FROM tags WHERE key = 'mlflow.parentRunId'"))
    assert parents[runs[f"train/{EXPERIMENT}/seed0"]] == runs[f"train/{EXPERIMENT}"]
    assert parents[runs[f"train/{EXPERIMENT}/seed1"]] == runs[f"train/{EXPERIMENT}"]
    # every reported step of a seed's curve is a metric row
    history = json.loads((trained / "artifacts" / "train" / EXPERIMENT / "history.json").read_text())
    steps = sql(team, "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'val_score' ORDER BY step",
                runs[f"train/{EXPERIMENT}/seed0"])
    assert [s for (s,) in steps] == [h["step"] for h in history if h["seed"] == 0]
    versions = sql(team, "SELECT version, run_id FROM model_versions WHERE name = %s ORDER BY version", MODEL)
    assert [v for v, _ in versions] == [1, 2]
    assert {r for _, r in versions} == {runs[f"train/{EXPERIMENT}/seed0"], runs[f"train/{EXPERIMENT}/seed1"]}
    (champion,) = sql(team, "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'", MODEL)
    scores = dict(sql(team, "SELECT version, value FROM model_version_tags WHERE name = %s AND key = 'gm.val_score'",
                      MODEL))
    assert champion[0] == min(scores, key=lambda v: float(scores[v]))
    # the evaluate stage tagged both versions with their test figures
    tested = sql(team, "SELECT DISTINCT version FROM model_version_tags WHERE name = %s AND key LIKE 'gm.test.%%'",
                 MODEL)
    assert sorted(v for (v,) in tested) == [1, 2]


def test_artifacts_go_through_the_server_and_the_model_is_code_not_a_pickle(team, trained):
    stored = [p for p in (team.server.state_dir / "artifacts").rglob("*") if p.is_file()]
    mlmodels = [p for p in stored if p.name == "MLmodel"]
    assert mlmodels, "no model was uploaded to the proxied artifact store"
    assert not [p for p in stored if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    text = mlmodels[0].read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in text and "model_code_path" in text


LOAD = """
import json, sys
import mlflow
import numpy as np
m = mlflow.pyfunc.load_model("models:/{model}@champion")
x = m.predict([{{"n": 7, "seed": 3}}])
print(json.dumps({{"shape": list(x.shape), "finite": bool(np.isfinite(x).all()),
                  "same": bool((x == m.predict([{{"n": 7, "seed": 3}}])).all())}}))
"""


def test_the_champion_loads_through_the_server_in_a_fresh_process(team, trained, tmp_path):
    env = stage_env(trained, MLFLOW_TRACKING_URI=team.server.uri)
    r = subprocess.run([sys.executable, "-c", LOAD.format(model=MODEL)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"shape": [7, 2], "finite": True, "same": True}


REGISTER = """
import sys
from pathlib import Path
from gm import tracking
tracking.setup(tracking.MlflowParams(experiment="gm-auth"), Path(sys.argv[1]))
with tracking.run("register", tracking.stage_tags("train", "auth", Path(sys.argv[1]))):
    version = tracking.register_version(Path(sys.argv[2]), "gan", "authed", 1.0, "val_w1", None)
print(f"registered version {version}")
"""


def test_basic_auth_refuses_strangers_and_lets_team_members_register(team, trained, tmp_path):
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    server = MlflowServer(team.postgres.create_database("mlflow_authed"), str(tmp_path / "artifacts"), tmp_path,
                          port=free_port(), auth=Auth(team.postgres.create_database("mlflow_users"),
                                                      password="admin-pw-for-this-test"))
    server.start()
    try:
        with pytest.raises(MlflowException, match="401"):
            mlflow.MlflowClient(server.uri).search_experiments()
        admin_env = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "admin-pw-for-this-test"}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in admin_env.items():
                mp.setenv(k, v)
            get_app_client("basic-auth", tracking_uri=server.uri).create_user("alice", "alice-pw-1234567")
        model_dir = trained / "artifacts" / "train" / EXPERIMENT / "models" / "seed-0"
        cmd = [sys.executable, "-c", REGISTER, str(trained), str(model_dir)]
        # a stranger: one line naming the refusal, nothing registered
        r = subprocess.run(cmd, cwd=tmp_path, env=stage_env(trained, MLFLOW_TRACKING_URI=server.uri),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and "401" in r.stderr
        # a member, with her own password: registers, and the version is hers
        member = stage_env(trained, MLFLOW_TRACKING_URI=server.uri, MLFLOW_TRACKING_USERNAME="alice",
                           MLFLOW_TRACKING_PASSWORD="alice-pw-1234567")
        r = subprocess.run(cmd, cwd=tmp_path, env=member, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "registered version 1" in r.stdout
        assert team.postgres.query("mlflow_authed", "SELECT version FROM model_versions WHERE name = 'gm-gan-authed'") \
            == [(1,)]
        assert ("alice",) in team.postgres.query("mlflow_users", "SELECT username FROM users")
        # a stage run by a stranger says what to set, in one line
        r = run_stage(trained, "evaluate", "train", EXPERIMENT,
                      env=stage_env(trained, MLFLOW_TRACKING_URI=server.uri), timeout=300)
        assert r.returncode == 2 and "MLFLOW_TRACKING_USERNAME" in last_line(r.stderr), r.stderr[-2000:]
    finally:
        server.stop()


def test_gm_server_starts_postgresql_and_mlflow_and_stops_both(tmp_path):
    """The documented command (`make server` runs it): up with auth, refusing strangers, down on SIGTERM."""
    import signal
    import tempfile
    import time
    import urllib.error
    import urllib.request
    from pathlib import Path

    from gm.chaos import CHECKOUT

    state = Path(tempfile.mkdtemp(prefix="gm-server-test-"))  # a folder the postgres user can enter
    state.chmod(0o755)
    port, pg_port = free_ports(2)
    cmd = [sys.executable, "-m", "gm.cli", "server", "--dir", str(state / "s"), "--port", str(port),
           "--pg-port", str(pg_port), "--auth"]
    proc = subprocess.Popen(cmd, cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line, deadline = "", time.monotonic() + 120
        while "use it:" not in line:
            assert proc.poll() is None and time.monotonic() < deadline, f"gm server did not come up: {line}"
            line = proc.stdout.readline()
        assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in line
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1")
        assert (state / "s" / "admin.password").stat().st_mode & 0o077 == 0  # the secret is its owner's only
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert not (state / "s" / "postgres" / "postmaster.pid").exists()  # PostgreSQL was stopped with it
    shutil.rmtree(state, ignore_errors=True)
