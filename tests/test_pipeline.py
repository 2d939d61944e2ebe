"""End to end: `dvc repro` of a tiny profile in a copy of the repo, then the registry from a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.conftest import env_for, tiny_params, write_params

pytestmark = pytest.mark.integration


def run(cmd, root, **kw):
    r = subprocess.run(cmd, cwd=root, env=env_for(root), capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_dvc_repro_trains_tunes_evaluates_and_registers(tmp_repo):
    root = tmp_repo
    write_params(root, tiny_params())
    run([sys.executable, "-m", "gm.cli", "data", "init"], root)
    # same bytes as the committed data.dvc: the raw data is clean on a fresh machine
    assert "data.dvc" not in run(["dvc", "status", "data.dvc"], root).stdout
    run(["dvc", "repro"], root, timeout=1200)

    # DVC: outputs, metrics and a lock that records the interpolated params
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert lock["train@vae-digits"]["params"]["params.yaml"]["experiments.vae-digits"]["family"] == "vae"
    assert "data" in {d["path"] for d in lock["prepare@digits"]["deps"]}
    ev = json.loads((root / "artifacts/eval/vae-digits/metrics.json").read_text())
    assert 0 < ev["test_bits_per_dim"] < 10 and ev["test_bound"] == 1.0
    assert ev["seeds"] == 2 and ev["test_bits_per_dim_std"] > 0 and set(ev["per_seed"]) == {"0", "1"}
    featurizer = json.loads((root / "artifacts/featurizer-metrics/digits.json").read_text())
    assert ev["featurizer"] == featurizer["hash"] and 0 <= ev["precision"] <= 1 and ev["fd"] > 0
    for kind in ("gmm", "kde"):  # baselines on the same split, by the same protocol
        base = json.loads((root / f"artifacts/eval/baseline-{kind}-digits/metrics.json").read_text())
        assert base["featurizer"] == featurizer["hash"] and base["seeds"] == 2
        assert 2.0 < base["test_bits_per_dim"] < 4.09
    toy = json.loads((root / "artifacts/eval/wgan_gp-ring8/metrics.json").read_text())
    assert 0 <= toy["modes"] <= 8 and toy["w1"] > 0
    best = json.loads((root / "artifacts/tune/vae-digits/best.json").read_text())
    assert best["overrides"]["model.beta"] in (0.5, 2.0)
    board = (root / "reports/leaderboard.md").read_text()
    assert board.count("PacGAN") >= 2 and "baseline-gmm-digits" in board and " ± " in board
    assert "nothing to reproduce" in run(["dvc", "repro"], root).stdout.lower() or \
        "up to date" in run(["dvc", "status"], root).stdout.lower()
    assert "metrics.json" in run(["dvc", "metrics", "show"], root).stdout

    # MLflow: runs tagged with commit and data hash, nested trials, registered models with champions
    check = textwrap.dedent("""
        import json, mlflow, numpy as np
        from mlflow import MlflowClient
        mlflow.set_tracking_uri("sqlite:///mlflow.db")  # the embedded default, in this copy of the repo
        c = MlflowClient()
        exp = c.get_experiment_by_name("gm-test")
        runs = c.search_runs([exp.experiment_id], max_results=200)
        names = {r.info.run_name: r for r in runs}
        train = names["train/vae-digits"]
        assert len(train.data.tags["mlflow.source.git.commit"]) >= 40
        assert train.data.tags["gm.data_md5"].endswith(".dir")
        parent = names["tune/vae-digits"].info.run_id
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
        assert len(children) == 2, len(children)
        out = {}
        for name in ("gm-vae-digits", "gm-wgan_gp-ring8"):
            versions = c.search_model_versions(f"name='{name}'")
            champ = c.get_model_version_by_alias(name, "champion")
            scores = {v.version: float(v.tags["gm.val_score"]) for v in versions}
            assert scores[champ.version] == min(scores.values()), (name, scores, champ.version)
            m = mlflow.pyfunc.load_model(f"models:/{name}@champion")
            x = m.predict({"n": 25, "seed": 0})
            out[name] = {"shape": list(x.shape), "again": bool((x == m.predict({"n": 25, "seed": 0})).all()),
                         "versions": len(versions)}
            if name == "gm-vae-digits":
                lp = m.predict({"log_prob": x})
                out[name]["log_prob"] = [len(lp), bool(np.isfinite(lp).all())]
                out[name]["bound"] = champ.tags["gm.log_prob"]
        print(json.dumps(out))
    """)
    r = run([sys.executable, "-c", check], root)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["gm-wgan_gp-ring8"]["shape"] == [25, 2] and out["gm-wgan_gp-ring8"]["again"]
    assert out["gm-vae-digits"]["shape"] == [25, 1, 8, 8]
    assert out["gm-vae-digits"]["versions"] == 3  # two trained seeds and the tuned model
    assert out["gm-vae-digits"]["log_prob"] == [25, True]
    assert "bound" in out["gm-vae-digits"]["bound"]
