"""End to end: one `gm repro` (dvc repro with one shared Ray, as `make run`) of a tiny profile in a copy of the repo (a module fixture), then one
test per stage or concern, and the registry read from a fresh process.

The repro runs with --keep-going: a failing stage fails its own test and the tests of the stages
after it (each with the repro's tail), while the stages that do not depend on it are still checked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from gm.core.layout import Layout, baseline_label
from tests.helpers import copy_repo, env_for, tiny_params, write_params

LAYOUT = Layout(Path())  # paths relative to a pipeline root

pytestmark = pytest.mark.integration


def run(cmd, root, **kw):
    r = subprocess.run(cmd, cwd=root, env=env_for(root), capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{tail(r)}"
    return r


def tail(r) -> str:
    return f"{(r.stdout or '')[-3000:]}\n{(r.stderr or '')[-3000:]}"


@dataclass
class Repro:
    root: Path
    data_status: str = ""  # `dvc status data.dvc` after `gm data init`
    failure: str | None = None  # what went wrong, with the tail of its output
    tracking: dict = field(default_factory=dict)  # what the fresh-process MLflow reader saw

    def path(self, relative: str | Path) -> Path:
        """An output of the pipeline; a missing one fails the test with why the repro did not make it."""
        p = self.root / relative
        if not p.exists():
            why = self.failure or "dvc repro succeeded but did not write it"
            pytest.fail(f"{relative} is missing: {why}", pytrace=False)
        return p

    def json(self, relative: str | Path) -> dict:
        return json.loads(self.path(relative).read_text())


def repro_in(root: Path, params: dict) -> Repro:
    """`gm data init` and `gm repro --keep-going` (dvc repro with one shared Ray) of `params` in `root`, a
    fresh copy of the repository; what failed is recorded, not raised, so each test reports its own part."""
    out = Repro(root)
    write_params(out.root, params)
    try:
        run([sys.executable, "-m", "gm.cli", "data", "init"], out.root)
        out.data_status = run(["dvc", "status", "data.dvc"], out.root).stdout
        r = subprocess.run([sys.executable, "-m", "gm.cli", "repro", "--keep-going"], cwd=out.root, env=env_for(out.root),
                           capture_output=True, text=True, timeout=1200)
        if r.returncode != 0:
            out.failure = f"dvc repro failed (exit {r.returncode}):\n{tail(r)}"
    except AssertionError as e:
        out.failure = str(e)
    except subprocess.TimeoutExpired as e:
        out.failure = f"dvc repro timed out after {e.timeout} s:\n{tail(e)}"
    return out


@pytest.fixture(scope="module")
def repro(tmp_path_factory) -> Repro:
    """The tiny profile, once, in a fresh copy of the repository."""
    return repro_in(copy_repo(tmp_path_factory.mktemp("pipeline") / "repo"), tiny_params())


def test_dvc_repro_runs_every_stage(repro):
    assert repro.failure is None, repro.failure


def test_raw_data_is_clean_and_the_lock_records_the_interpolated_params(repro):
    # same bytes as the committed data.dvc: the raw data is clean on a fresh machine
    assert "data.dvc" not in repro.data_status
    lock = yaml.safe_load(repro.path("dvc.lock").read_text())["stages"]
    if "train@vae-digits" not in lock or "prepare@digits" not in lock:
        pytest.fail(f"dvc.lock lacks train@vae-digits or prepare@digits: {repro.failure}", pytrace=False)
    assert lock["train@vae-digits"]["params"]["params.yaml"]["experiments.vae-digits"]["family"] == "vae"
    assert "data" in {d["path"] for d in lock["prepare@digits"]["deps"]}


def test_tune_exports_the_better_trial(repro):
    best = repro.json(LAYOUT.tune("vae-digits").best)
    assert best["overrides"]["model.beta"] in (0.5, 2.0)


def test_evaluate_scores_seeds_and_baselines_on_one_split_and_protocol(repro):
    ev = repro.json(LAYOUT.eval("vae-digits").metrics)
    assert 0 < ev["test_bits_per_dim"] < 10 and ev["test_bound"] == 1.0
    assert ev["seeds"] == 2 and ev["test_bits_per_dim_std"] > 0 and set(ev["per_seed"]) == {"0", "1"}
    featurizer = repro.json(LAYOUT.featurizer_metrics("digits"))
    assert ev["featurizer"] == featurizer["hash"] and 0 <= ev["precision"] <= 1 and ev["fd"] > 0
    for kind in ("gmm", "kde"):  # baselines on the same split, by the same protocol
        base = repro.json(LAYOUT.eval(baseline_label(kind, "digits")).metrics)
        assert base["featurizer"] == featurizer["hash"] and base["seeds"] == 2
        assert 2.0 < base["test_bits_per_dim"] < 4.09
    toy = repro.json(LAYOUT.eval("wgan_gp-ring8").metrics)
    assert 0 <= toy["modes"] <= 8 and toy["w1"] > 0


def test_report_ranks_models_beside_the_baselines(repro):
    board = repro.path("reports/leaderboard.md").read_text()
    assert board.count("PacGAN") >= 2 and "baseline-gmm-digits" in board and " ± " in board


# MLflow, read from a fresh process: runs tagged with commit and data hash, nested trials, registered
# models with champions that load and predict
READ_TRACKING = textwrap.dedent("""
    import json, traceback, mlflow, numpy as np
    from mlflow import MlflowClient
    mlflow.set_tracking_uri("sqlite:///mlflow.db")  # the embedded default, in this copy of the repo
    c = MlflowClient()
    out = {}

    def part(key, fn):
        try:
            out[key] = fn()
        except Exception:
            out[key] = {"error": traceback.format_exc()[-2000:]}

    try:
        runs = c.search_runs([c.get_experiment_by_name("gm-test").experiment_id], max_results=200)
    except Exception:  # no experiment: every part below fails with its own KeyError
        runs = []
    names = {r.info.run_name: r for r in runs}

    def train():
        tags = names["train/vae-digits"].data.tags
        return {"commit": tags["mlflow.source.git.commit"], "data_md5": tags["gm.data_md5"]}

    def tune():
        parent = names["tune/vae-digits"].info.run_id
        return {"children": sum(r.data.tags.get("mlflow.parentRunId") == parent for r in runs)}

    def registered(name):
        versions = c.search_model_versions(f"name='{name}'")
        champ = c.get_model_version_by_alias(name, "champion")
        m = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        x = m.predict([{"n": 25, "seed": 0}])
        got = {"scores": {str(v.version): float(v.tags["gm.val_score"]) for v in versions},
               "champion": str(champ.version),
               "shape": list(x.shape), "again": bool((x == m.predict([{"n": 25, "seed": 0}])).all()),
               "versions": len(versions)}
        if name == "gm-vae-digits":
            lp = m.predict([{"log_prob": x.reshape(len(x), -1).tolist()}])
            got["log_prob"] = [len(lp), bool(np.isfinite(lp).all())]
            got["bound"] = champ.tags["gm.log_prob"]
        return got

    part("train", train)
    part("tune", tune)
    for name in ("gm-vae-digits", "gm-wgan_gp-ring8"):
        part(name, lambda: registered(name))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def tracking(repro) -> dict:
    if not (repro.root / "mlflow.db").exists():
        pytest.fail(f"mlflow.db is missing: {repro.failure or 'no stage logged to MLflow'}", pytrace=False)
    r = run([sys.executable, "-c", READ_TRACKING], repro.root)
    return json.loads(r.stdout.strip().splitlines()[-1])


def part(tracking: dict, key: str, repro: Repro) -> dict:
    got = tracking[key]
    if "error" in got:
        pytest.fail(f"reading {key} from MLflow failed:\n{got['error']}\n(dvc repro: {repro.failure or 'ok'})",
                    pytrace=False)
    return got


def test_train_runs_carry_the_commit_and_the_data_hash(repro, tracking):
    train = part(tracking, "train", repro)
    assert len(train["commit"]) >= 40
    assert train["data_md5"].endswith(".dir")


def test_tune_nests_its_trials_under_the_sweep_run(repro, tracking):
    assert part(tracking, "tune", repro)["children"] == 2


def test_registry_champions_load_and_predict_in_a_fresh_process(repro, tracking):
    for name in ("gm-vae-digits", "gm-wgan_gp-ring8"):
        got = part(tracking, name, repro)
        scores = got["scores"]
        assert scores[got["champion"]] == min(scores.values()), (name, scores, got["champion"])
    toy, vae = tracking["gm-wgan_gp-ring8"], tracking["gm-vae-digits"]
    assert toy["shape"] == [25, 2] and toy["again"]
    assert vae["shape"] == [25, 1, 8, 8]
    assert vae["versions"] == 3  # two trained seeds and the tuned model
    assert vae["log_prob"] == [25, True]
    assert "bound" in vae["bound"]


def test_gm_sample_draws_from_a_registered_champion(repro, tmp_path):
    if repro.failure:
        pytest.fail(f"not checked: {repro.failure}", pytrace=False)
    out = tmp_path / "x.npy"
    run([sys.executable, "-m", "gm.cli", "--root", str(repro.root), "sample", "models:/gm-wgan_gp-ring8@champion",
         "-n", "6", "--seed", "2", "--out", str(out)], repro.root)
    x = np.load(out)
    assert x.shape == (6, 2) and np.isfinite(x).all()


def test_gm_models_lists_the_champions_ranks_them_and_shows_a_card(repro, tmp_path, capsys):
    # the README's first-session commands on the pipeline's store (all of them, as a shell runs them:
    # tests/test_walkthrough.py); in this process, to spare a start-up per command
    from gm.cli import main

    if repro.failure:
        pytest.fail(f"not checked: {repro.failure}", pytrace=False)

    def gm(*args):
        capsys.readouterr()
        main(["--root", str(repro.root), "models", *args])
        return capsys.readouterr().out

    listing = gm("ls")
    assert re.search(r"^gm-vae-digits\s+vae\s+digits\s+3\s+v\d", listing, re.M), listing
    best = gm("best")
    assert re.search(r"^digits\s+gm-vae-digits/\d+\s+fd\s", best, re.M), best
    assert re.search(r"^ring8\s+gm-wgan_gp-ring8/\d+\s+w1\s", best, re.M), best
    card = gm("show", "gm-vae-digits")  # the champion's card, with the test metrics the evaluate stage tagged
    assert card.startswith("# Model card: gm-vae-digits v") and "test_bits_per_dim" in card, card[:800]
    assert "baseline-gmm-digits" in card and "## Lineage" in card, card[-1500:]
    assert re.search(r"DVC stage: `(train|tune)@vae-digits`", card), card[-1500:]
    ref = gm("best", "--dataset", "digits", "--ref").strip()
    gm("sample", ref, "-n", "9", "-o", str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_ui_and_the_report_show_what_a_person_looks_for(repro):
    # make ui's server and headless Chromium on this store and reports/index.html (gm.browser, make ui-check):
    # every gm- model listed, each champion's alias, card and samples.png, the report's tables, images and links
    from tests.test_browser import assert_browser_sees

    if repro.failure:
        pytest.fail(f"not checked: {repro.failure}", pytrace=False)
    assert_browser_sees(repro.root)


def test_a_second_repro_has_nothing_to_do_and_metrics_show(repro):
    # last in the module: should it reproduce anything, the outputs checked above would change
    if repro.failure:
        pytest.fail(f"not checked: {repro.failure}", pytrace=False)
    root = repro.root
    assert "nothing to reproduce" in run(["dvc", "repro"], root).stdout.lower() or \
        "up to date" in run(["dvc", "status"], root).stdout.lower()
    assert "metrics.json" in run(["dvc", "metrics", "show"], root).stdout
