"""Model cards and `gm models`: cards read back from a real sqlite MLflow store, the champion pinned by hand
and kept by the next registration, and (integration) the whole command line against a workspace whose
stages ran, with `gm models serve` answering samples and log-likelihoods over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from gm import cards, catalog, tracking
from gm.core.layout import Layout
from gm.data.dataspec import DataSpec
from gm.models.base import build_model, load_model, save_model
from gm.params import parse_params

NAME = "gm-maf-ring8"
MAF = {"n_layers": 2, "hidden": 16}  # differs from MAF's defaults (5 layers of 100) in two knobs


def experiment(**model):
    """The experiment `maf-ring8` as params.yaml would give it (the tiny profile's train section)."""
    from gm.chaos import tiny_params

    raw = tiny_params({"maf-ring8": {"family": "maf", "dataset": "ring8", "model": {**MAF, **model}}})
    return parse_params(raw).experiments["maf-ring8"]


def register(root: Path, prepared: Path, score: float, seed: int = 0, card: bool = True) -> int:
    """A tiny MAF exported, registered in a seed run tagged as the train stage tags it, and its card."""
    import torch

    exp = experiment()
    torch.manual_seed(seed)
    folder = save_model(build_model("maf", exp.model, DataSpec(shape=(2,), kind="toy")), root / f"model-{seed}")
    tags = tracking.stage_tags("train", "maf-ring8", root, "ring8", **{"gm.family": "maf"})
    with tracking.run(f"train/maf-ring8/seed{seed}", {**tags, "gm.seed": str(seed)}):
        version = tracking.register_version(folder, "maf", "ring8", score, "val_nll", "exact",
                                            {"gm.source": "train", "gm.experiment": "maf-ring8", "gm.seed": str(seed)})
        if card:
            cards.card_at_registration(NAME, version, load_model(folder), Layout(prepared).prepared("ring8"),
                                       exp.to_dict())
    return version


def baseline_run(kind: str, dataset: str, metrics: dict) -> None:
    """A finished evaluation run of a baseline, named and tagged as the evaluate stage makes it."""
    tags = {"gm.stage": "evaluate", "gm.experiment": f"baseline-{kind}-{dataset}", "gm.dataset": dataset}
    with mlflow.start_run(run_name=f"evaluate/baseline-{kind}-{dataset}", tags=tags):
        mlflow.log_metrics(metrics)


def description(version: int | str) -> str:
    return mlflow.MlflowClient().get_model_version(NAME, str(version)).description or ""


def test_a_registered_version_carries_a_card_with_knobs_figures_and_lineage(store, prepared):
    v = register(store, prepared, 1.5)
    card = description(v)
    assert card.startswith(f"# Model card: {NAME} v{v}")
    assert "**maf** on **ring8**: MAF (Papamakarios et al. 2017)" in card
    # the knobs that differ from MAF's defaults, and only those (the seed is the version's own)
    assert "| model.hidden | 16 | 100 |" in card and "| model.n_layers | 2 | 5 |" in card
    assert "| train.steps | 60 | 2000 |" in card and "model.depth" not in card and "train.seed" not in card
    assert "Validation (val_nll, lower is better): 1.5" in card
    assert "This version is the champion" in card and "promoted: no champion before" in card
    run = mlflow.get_run(mlflow.MlflowClient().get_model_version(NAME, str(v)).run_id)
    assert f"- Git commit: `{run.data.tags['mlflow.source.git.commit']}`" in card
    assert "- DVC stage: `train@maf-ring8`" in card and run.info.run_id in card
    # the figures are artifacts of the version's run, named in the card, and real PNGs
    for name in ("samples.png", "density.png"):
        assert f"`card/{name}`" in card
        png = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=f"card/{name}"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "Not evaluated on the test split yet" in card
    # the registered model's own page says what it is, its champion and each version
    summary = mlflow.MlflowClient().get_registered_model(NAME).description
    assert summary.startswith(f"# {NAME}") and "**maf** on **ring8**" in summary
    assert f"Champion: v{v} (the best validation score so far)" in summary
    assert f"| v{v} (champion) | train maf-ring8 seed 0 | 1.5 |" in summary


def test_the_card_shows_test_metrics_beside_the_latest_baselines_of_its_dataset(store, prepared):
    v = register(store, prepared, 1.5)
    baseline_run("gmm", "ring8", {"w1": 0.9, "test_nll": 5.0})  # an earlier evaluation of the same baseline
    time.sleep(0.01)
    baseline_run("gmm", "ring8", {"w1": 0.5, "test_nll": 2.0})
    baseline_run("kde", "ring8", {"w1": 0.7, "test_bound": 0.0})
    baseline_run("gmm", "grid25", {"w1": 9.0})  # another dataset's: not on this card
    tracking.tag_version(NAME, v, {"gm.test.w1": "0.3", "gm.test.test_nll": "1.25", "gm.test.sample_seconds": "0.1",
                                   "gm.test.test_bound": "1.0"})
    cards.write_card(NAME, v)
    card = description(v)
    assert "| metric | v1 | baseline-gmm-ring8 | baseline-kde-ring8 |" in card
    assert "| w1 | 0.3 | 0.5 | 0.7 |" in card and "| test_nll | 1.25 | 2 | — |" in card
    assert "| test_bound | lower bound | — | exact |" in card  # a flag reads as what it means
    assert "sample_seconds" not in card and "grid25" not in card


def test_writing_a_card_again_changes_nothing(store, prepared):
    v = register(store, prepared, 1.0)
    client = mlflow.MlflowClient()
    before = client.get_model_version(NAME, str(v))
    model_before = client.get_registered_model(NAME)
    assert cards.write_card(NAME, v).startswith("# Model card")
    assert cards.write_cards([NAME, "gm-no-such-model"]) == 1
    after = client.get_model_version(NAME, str(v))
    assert after.description == before.description and after.last_updated_timestamp == before.last_updated_timestamp
    assert client.get_registered_model(NAME).last_updated_timestamp == model_before.last_updated_timestamp


def test_a_card_too_long_for_the_registry_is_cut_at_a_line_and_says_so():
    text = "# Model card\n" + "\n".join(f"| knob{i} | {i} | 0 |" for i in range(1000))
    cut = cards.fit(text)
    assert len(cut) <= cards.DESCRIPTION_LIMIT and cut.endswith("prints the whole card)")
    assert cut.split("\n\n…")[0] == text[: len(cut.split("\n\n…")[0])]  # whole lines of the original
    assert cards.fit("short") == "short"


def test_a_champion_promoted_by_hand_stays_until_unpinned(store, prepared):
    client = mlflow.MlflowClient()
    v1 = register(store, prepared, 1.0, seed=0, card=False)
    v2 = register(store, prepared, 0.5, seed=1, card=False)
    assert str(tracking.champion(NAME).version) == str(v2)
    line = catalog.promote(NAME, str(v1), "sharper rings", by="ana@lab")
    assert line.startswith(f"{NAME}: champion v{v1} (was v{v2}), pinned by ana@lab")
    tags = client.get_model_version(NAME, str(v1)).tags
    assert tags["gm.promoted_by"] == "ana@lab" and tags["gm.promotion_reason"] == "sharper rings"
    assert tags["gm.champion_decision"].startswith("promoted by hand by ana@lab on ")
    assert "Promoted by hand by ana@lab" in description(v1) and "pinned to v1" in description(v1)
    assert f"Champion: v{v1} (pinned by hand)" in client.get_registered_model(NAME).description
    # a better model registered next does not undo the choice, and says why
    v3 = register(store, prepared, 0.1, seed=2, card=False)
    assert str(tracking.champion(NAME).version) == str(v1)
    decision = client.get_model_version(NAME, str(v3)).tags["gm.champion_decision"]
    assert decision.startswith("kept v1: pinned by hand by ana@lab (score 0.1 against its 1)")
    assert f"gm models promote {NAME} --auto" in decision
    # unpinned: the best validation score is champion again
    assert catalog.unpin(NAME, by="bo@lab") == f"{NAME}: unpinned by bo@lab; champion v{v3} (best validation score)"
    assert str(tracking.champion(NAME).version) == str(v3)
    assert tracking.PIN not in client.get_registered_model(NAME).tags
    assert client.get_model_version(NAME, str(v3)).tags["gm.champion_decision"] == \
        "promoted: best validation score again after bo@lab unpinned v1"


def test_bad_references_and_outputs_are_one_line_naming_what_is_expected(store, prepared):
    register(store, prepared, 1.0, card=False)
    with pytest.raises(ValueError, match=r"^model: expected NAME, NAME@alias or NAME/version"):
        catalog.parse_ref("gm-x@@y")
    with pytest.raises(KeyError, match=rf"no registered model 'gm-nope'; registered: {NAME}"):
        catalog.resolve("gm-nope")
    with pytest.raises(KeyError, match=rf"{NAME} has no version 7; its versions: 1"):
        catalog.resolve(f"{NAME}/7")
    with pytest.raises(KeyError, match="has no alias @staging"):
        catalog.resolve(f"{NAME}@staging")
    with pytest.raises(ValueError, match=r"^-o: expected a file ending in .png, .wav, .npy, got x.jpg"):
        catalog.sample_to(NAME, 4, Path("x.jpg"))
    with pytest.raises(ValueError, match="not audio; use .png or .npy"):
        catalog.sample_to(NAME, 4, store / "x.wav")
    with pytest.raises(ValueError, match="--reason: expected why"):
        catalog.promote(NAME, "1", "  ")


def test_samples_of_a_version_as_an_array_and_a_scatter(store, prepared):
    register(store, prepared, 1.0, card=False)
    line = catalog.sample_to(f"{NAME}@champion", 16, store / "x.npy", seed=3, root=prepared)
    x = np.load(store / "x.npy")
    assert x.shape == (16, 2) and np.isfinite(x).all() and line.startswith(f"{store / 'x.npy'}: 16 samples (2,)")
    catalog.sample_to(f"{NAME}/1", 16, store / "y.npy", seed=3)
    assert (np.load(store / "y.npy") == x).all()  # same seed, same samples
    catalog.sample_to(NAME, 16, store / "grid.png", root=prepared)
    assert (store / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_samples_without_test_data_are_a_grid_a_scatter_or_spectrograms(tmp_path):
    """What `gm models sample -o x.png` draws where the prepared data is not at hand."""
    rng = np.random.default_rng(0)
    kinds = {"image": (rng.integers(0, 17, (16, 1, 8, 8)), {"kind": "image", "levels": 17}),
             "toy": (rng.normal(size=(16, 2)), {"kind": "toy"}),
             "audio": (rng.integers(0, 256, (4, 1, 400)), {"kind": "audio", "levels": 256})}
    for kind, (x, meta) in kinds.items():
        path = cards.render_samples(tmp_path / f"{kind}.png", x.astype(np.float32), meta, kind)
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 2000, kind


# ------------------------------------------------------------------------------ the command line, for real


def gm(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    from gm.chaos import stage_env

    r = subprocess.run([sys.executable, "-m", "gm.cli", "--root", str(root), "models", *args], cwd=root,
                       env=stage_env(root), capture_output=True, text=True, timeout=300)
    assert not check or r.returncode == 0, f"gm models {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def post(port: int, payload: dict) -> np.ndarray:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        return np.asarray(json.loads(r.read())["predictions"], dtype=np.float64)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A workspace whose train (two seeds of a tiny MAF), evaluate, baseline and report stages ran."""
    from gm.chaos import run_stage, tiny_params, workspace

    params = tiny_params({"maf-ring8": {"family": "maf", "dataset": "ring8", "model": MAF, "train": {"seeds": 2}}})
    root = workspace(tmp_path_factory.mktemp("catalog") / "ws", params)
    for stage, args in (("train", ("maf-ring8",)), ("evaluate", ("train", "maf-ring8")),
                        ("evaluate", ("baseline", "ring8")), ("report", ())):
        r = run_stage(root, stage, *args)
        assert r.returncode == 0, f"{stage} {args} failed:\n{r.stderr[-3000:]}"
    return root


@pytest.mark.integration
@pytest.mark.journey  # minutes: the slower tier (make test-chaos), beside the README walk-through
def test_gm_models_lists_shows_compares_promotes_and_samples(evaluated):
    root = evaluated
    listed = gm(root, "ls").stdout.splitlines()
    assert listed[0].split() == ["model", "family", "dataset", "versions", "champion", "validation", "test",
                                 "(champion)"]
    row = next(line for line in listed if line.startswith(NAME)).split()
    assert row[1:4] == ["maf", "ring8", "2"] and row[4] in ("v1", "v2") and row[5].startswith("val_")
    champion = row[4][1:]
    # the report stage wrote every card again: test metrics beside both baselines
    card = gm(root, "show", NAME).stdout
    assert card.startswith(f"# Model card: {NAME} v{champion}") and "This version is the champion" in card
    assert "baseline-gmm-ring8 | baseline-kde-ring8 |" in card and "| w1 |" in card
    assert "- DVC stage: `train@maf-ring8`" in card
    uri = f"sqlite:///{root}/mlflow.db"
    stored = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(NAME, champion).description
    assert stored.rstrip("\n") == card.rstrip("\n")  # the description is the card
    compared = gm(root, "compare", NAME, "1", "2").stdout
    assert compared.splitlines()[0].split() == ["v1", "v2"]
    assert any(line.startswith("*") and "validation score" in line for line in compared.splitlines())
    assert any(line.split()[:3] == ["model.hidden", "16", "16"] for line in compared.splitlines())
    other = "1" if champion == "2" else "2"
    promoted = gm(root, "promote", NAME, other, "--reason", "smoother density").stdout
    assert f"champion v{other} (was v{champion}), pinned by" in promoted
    assert gm(root, "show", f"{NAME}@champion").stdout.startswith(f"# Model card: {NAME} v{other}")
    assert f"champion v{champion}" in gm(root, "promote", NAME, "--auto").stdout
    out = root / "out"
    gm(root, "sample", NAME, "-n", "16", "-o", str(out / "grid.png"))
    gm(root, "sample", f"{NAME}/{champion}", "-n", "5", "--seed", "4", "-o", str(out / "x.npy"))
    assert (out / "grid.png").read_bytes()[:4] == b"\x89PNG" and np.load(out / "x.npy").shape == (5, 2)
    bad = gm(root, "show", "gm-nope", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: model: no registered model 'gm-nope'")


@pytest.mark.integration
@pytest.mark.journey  # minutes: the slower tier (make test-chaos), beside the README walk-through
def test_gm_models_serve_answers_the_readme_requests_on_loopback(evaluated):
    from gm.chaos import stage_env
    from gm.server import spawn_server, stop_group
    from gm.training.cluster import free_port

    root, port = evaluated, free_port()
    # a file, not a pipe, for its output (a full pipe would stall the server); bounded wait for /health
    server = spawn_server([sys.executable, "-m", "gm.cli", "--root", str(root), "models", "serve", NAME, "--port",
                           str(port)], stage_env(root), root / "serve.log", f"http://127.0.0.1:{port}", 180,
                          "gm models serve", cwd=root)
    try:
        # the README's requests: samples, then log-likelihoods of data
        x = post(port, {"inputs": [{"n": 4, "seed": 0}]})
        assert x.shape == (4, 2) and np.isfinite(x).all()
        assert (post(port, {"inputs": [{"n": 4, "seed": 0}]}) == x).all()  # same seed, same samples
        assert not (post(port, {"inputs": [{"n": 4, "seed": 1}]}) == x).all()
        lp = post(port, {"inputs": [{"log_prob": [[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071]]}]})
        assert lp.shape == (3,) and np.isfinite(lp).all()
        with pytest.raises(urllib.error.HTTPError) as refused:  # a malformed request is refused, not crashed on
            post(port, {"inputs": [{"n": "four"}]})
        assert refused.value.code == 400
        # loopback only: the server is not on the machine's other addresses
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listening.strip() and all("127.0.0.1:" in line for line in listening.strip().splitlines())
    finally:
        stop_group(server)
