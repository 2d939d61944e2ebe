"""The featurizer: accuracy on digits, determinism, hashing, storage, other image sizes, the stage."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from gm.core.config import ConfigError, build
from gm.data.dataspec import DataSpec
from tests.helpers import DIGITS
from gm.featurizer import (FeaturizerConfig, check_same_featurizer, featurizer_hash, features,
                           load_featurizer, predict, save_featurizer, train_featurizer)

torch.set_num_threads(1)

QUICK = FeaturizerConfig(epochs=12)  # ~0.98 test accuracy on digits in a couple of seconds


@pytest.fixture(scope="module")
def digits():
    """sklearn's digits in data space (N, 1, 8, 8), levels 17, a fixed train/val/test split."""
    d = load_digits()
    x, y = d.data.reshape(-1, 1, 8, 8).astype(np.float32), d.target.astype(np.int64)
    p = np.random.default_rng(0).permutation(len(x))
    te, va, tr = p[:360], p[360:540], p[540:]
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x[te], y[te])}


@pytest.fixture(scope="module")
def trained(digits):
    net, metrics = train_featurizer(*digits["train"], *digits["val"], DIGITS, 10, QUICK)
    return net, metrics


def test_digits_accuracy(trained, digits):
    net, metrics = trained
    x, y = digits["test"]
    assert (predict(net, x) == y).mean() >= 0.95
    assert set(metrics) == {"train_accuracy", "val_accuracy", "best_epoch", "epochs", "seconds"}
    assert 1 <= metrics["best_epoch"] <= QUICK.epochs == metrics["epochs"]
    assert metrics["val_accuracy"] == (predict(net, digits["val"][0]) == digits["val"][1]).mean()
    assert not net.training


def test_deterministic_given_seed(digits):
    (x, y), (vx, vy) = digits["train"], digits["val"]
    cfg = FeaturizerConfig(channels=(8, 16), feature_dim=16, epochs=2)
    threads = torch.get_num_threads()
    a, _ = train_featurizer(x[:400], y[:400], vx, vy, DIGITS, 10, cfg)
    b, _ = train_featurizer(x[:400], y[:400], vx, vy, DIGITS, 10, cfg)
    c, _ = train_featurizer(x[:400], y[:400], vx, vy, DIGITS, 10, dataclasses.replace(cfg, seed=1))
    assert featurizer_hash(a) == featurizer_hash(b)
    assert featurizer_hash(a) != featurizer_hash(c)
    # global state is restored for the caller
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_save_load_round_trip_and_tampering(trained, digits, tmp_path):
    net, _ = trained
    x = digits["test"][0]
    digest = save_featurizer(net, tmp_path / "model", {"test_accuracy": 0.5})
    assert digest == featurizer_hash(net) and len(digest) == 64
    ident = json.loads((tmp_path / "model" / "featurizer.json").read_text())
    assert ident["hash"] == digest and ident["short_hash"] == digest[:16] and ident["test_accuracy"] == 0.5

    loaded, loaded_hash = load_featurizer(tmp_path / "model")
    assert loaded_hash == digest and not loaded.training
    np.testing.assert_array_equal(features(loaded, x), features(net, x))

    state = torch.load(tmp_path / "model" / "weights.pt", weights_only=True)
    state["classifier.bias"][0] += 1e-3
    torch.save(state, tmp_path / "model" / "weights.pt")
    with pytest.raises(ValueError, match="weights.pt"):
        load_featurizer(tmp_path / "model")


def test_missing_featurizer_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dvc repro featurize@digits"):
        load_featurizer(tmp_path / "digits" / "model")
    (tmp_path / "digits" / "model").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"config.json.*featurize@digits"):
        load_featurizer(tmp_path / "digits" / "model")


def test_features_and_predict(trained, digits):
    net, _ = trained
    x = digits["test"][0][:100]
    f = features(net, x, batch_size=32)
    assert f.shape == (100, QUICK.feature_dim) and f.dtype == np.float64 and np.isfinite(f).all()
    assert f.std(axis=0).max() > 0  # not a constant map
    np.testing.assert_array_equal(features(net, x.reshape(100, -1)), f)  # flattened samples too
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
    np.testing.assert_array_equal(predict(net, x), logits.argmax(1).numpy())
    assert predict(net, x).dtype == np.int64


def test_discrete_inputs_map_without_noise(trained):
    net, _ = trained
    x = torch.arange(17, dtype=torch.float32).repeat(4)[:64].view(1, 1, 8, 8)
    torch.testing.assert_close(net.normalise(x), x / 16 * 2 - 1)
    with pytest.raises(ValueError, match="expects"):
        net.normalise(torch.zeros(2, 1, 7, 7))


@pytest.mark.parametrize("levels", [256, None])
def test_28x28_images(levels):
    rng = np.random.default_rng(0)
    data = DataSpec(shape=(1, 28, 28), kind="image", num_classes=10, levels=levels)
    x = rng.integers(0, 256, size=(48, 1, 28, 28)).astype(np.float32)
    if levels is None:
        x = x / 10 + 3  # continuous: standardised with the training mean and std
    y = rng.integers(0, 10, size=48)
    cfg = FeaturizerConfig(channels=(8, 16), feature_dim=32, epochs=1, batch_size=16, augment_shift=2)
    net, metrics = train_featurizer(x[:32], y[:32], x[32:], y[32:], data, 10, cfg)
    assert net(torch.from_numpy(x)).shape == (48, 10)
    assert features(net, x).shape == (48, 32)
    if levels is None:
        assert float(net.mean) == pytest.approx(x[:32].mean(), rel=1e-5)
        assert float(net.std) == pytest.approx(x[:32].std(), rel=1e-4)


def test_config_bounds():
    with pytest.raises(ConfigError, match="featurize.dropout"):
        build(FeaturizerConfig, {"dropout": 1.0}, "featurize")
    with pytest.raises(ConfigError, match="featurize.channels"):
        build(FeaturizerConfig, {"channels": []}, "featurize")
    assert build(FeaturizerConfig, {"channels": [4, 8]}, "featurize").channels == (4, 8)


def test_check_same_featurizer():
    check_same_featurizer({"vae-digits": "a" * 64, "gan-digits": "a" * 64})
    check_same_featurizer({})
    with pytest.raises(ValueError, match=r"bbbbbbbbbbbbbbbb: gan-digits") as e:
        check_same_featurizer({"vae-digits": "a" * 64, "gan-digits": "b" * 64})
    assert "aaaaaaaaaaaaaaaa: vae-digits" in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory):
    """A root with prepared digits and ring8 (as the prepare stage writes them)."""
    from gm.data.bootstrap import materialise_default_data
    from gm.data.sources import build_source
    from gm.core.layout import Layout
    from gm.stages.prepare import prepare

    root = tmp_path_factory.mktemp("featurize")
    materialise_default_data(root)
    for name, cfg in {"digits": {"source": "digits"}, "ring8": {"source": "ring8", "n": 500}}.items():
        prepare(name, build_source(name, cfg), root, Layout(root).prepared_root, 0, 0.1, 0.2)
    return root


def test_toys_are_compared_in_their_own_space(prepared_root):
    from gm.core.layout import Layout
    from gm.evaluation import load_feature_space
    from gm.stages.featurize import featurize

    assert featurize("ring8", prepared_root, QUICK) == {"space": "pixels"}
    space = load_feature_space(Layout(prepared_root).featurizer("ring8"))
    assert space.hash == "pixels" and space.net is None
    x = np.arange(6.0).reshape(3, 2)
    assert (space.features(x) == x).all() and space.predict(x) is None


def test_stage_writes_model_and_metrics(prepared_root):
    from gm.core.layout import Layout
    from gm.stages.featurize import featurize

    summary = featurize("digits", prepared_root, QUICK)
    out = Layout(prepared_root).featurizer("digits")
    metrics = json.loads(Layout(prepared_root).featurizer_metrics("digits").read_text())
    assert set(metrics) >= {"test_accuracy", "val_accuracy", "train_accuracy", "hash", "seconds", "num_params"}
    assert metrics["test_accuracy"] >= 0.9 and metrics == json.loads(json.dumps(summary))
    net, digest = load_featurizer(out / "model")
    assert digest == metrics["hash"]
    assert metrics["num_params"] == sum(p.numel() for p in net.parameters())
    from gm.evaluation import load_feature_space

    space = load_feature_space(out)
    assert space.hash == digest and space.predict(np.zeros((2, 1, 8, 8))).shape == (2,)
    ident = json.loads((out / "model" / "featurizer.json").read_text())
    assert ident["test_accuracy"] == metrics["test_accuracy"] and "seconds" not in ident
