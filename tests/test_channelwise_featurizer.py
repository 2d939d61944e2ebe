"""The channel-wise featurizer of stacked digits: one digit classifier reads every channel alone, and an image's
class (its mode, of 1,000) is its channels' digits; the joint log-probability is the sum of the channels'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gm.data.dataspec import DataSpec
from gm.featurizer import FeatureNet, FeaturizerConfig, load_featurizer, predict, predict_proba, save_featurizer

STACKED = DataSpec(shape=(3, 8, 8), kind="image", num_classes=1000, levels=17)
CFG = FeaturizerConfig(channels=(8,), feature_dim=16)


def net() -> FeatureNet:
    torch.manual_seed(0)
    return FeatureNet(STACKED, 10, CFG, channelwise=True).eval()


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 17, (n, *STACKED.shape), generator=torch.Generator().manual_seed(seed)).float()


def test_the_joint_log_probability_is_the_sum_of_the_channels():
    f, x = net(), images()
    with torch.no_grad():
        joint = f(x)  # (4, 1000)
        alone = [F.log_softmax(f.classifier(f.feature(f.conv(((x[:, c:c + 1] - 8) / 8)).mean(dim=(2, 3)))), 1)
                 for c in range(3)]  # each channel through the shared layers, by hand
    assert joint.shape == (4, 1000)
    d1, d2, d3 = 3, 7, 1
    torch.testing.assert_close(joint[:, 100 * d1 + 10 * d2 + d3], alone[0][:, d1] + alone[1][:, d2] + alone[2][:, d3])
    torch.testing.assert_close(torch.logsumexp(joint, 1), torch.zeros(4), atol=1e-5, rtol=0)
    best = torch.stack([a.argmax(1) for a in alone], 1)
    assert torch.equal(joint.argmax(1), best[:, 0] * 100 + best[:, 1] * 10 + best[:, 2])
    assert (predict(f, x.numpy()) == (best[:, 0] * 100 + best[:, 1] * 10 + best[:, 2]).numpy()).all()
    assert predict_proba(f, x.numpy()).shape == (4, 1000)


def test_an_images_features_are_its_channels_side_by_side():
    f, x = net(), images()
    with torch.no_grad():
        feats = f.embed(x)
        first = f.feature(f.conv((x[:, :1] - 8) / 8).mean(dim=(2, 3)))
    assert feats.shape == (4, 3 * CFG.feature_dim) == (4, f.embed_dim)
    torch.testing.assert_close(feats[:, :CFG.feature_dim], first)


def test_saved_and_loaded_channelwise_and_the_plain_config_unchanged(tmp_path):
    f = net()
    digest = save_featurizer(f, tmp_path / "m", {})
    g, loaded = load_featurizer(tmp_path / "m")
    assert g.channelwise and loaded == digest and g.classes == 1000
    plain = FeatureNet(DataSpec(shape=(1, 8, 8), kind="image", num_classes=10, levels=17), 10, CFG)
    assert "channelwise" not in plain.config_dict() and plain.classes == 10  # earlier featurizers' hashes stand


def test_labels_must_be_modes():
    from gm.featurizer import train_featurizer

    x, y = images(2).numpy(), np.array([3, 1000])
    with pytest.raises(ValueError, match=r"labels span 3..1000; expected 0..999"):
        train_featurizer(x, y, x, y, STACKED, 10, CFG, channelwise=True)


def test_it_learns_the_modes_of_real_stacked_digits(tmp_path):
    from gm.core.layout import Layout
    from gm.data.bootstrap import materialise_default_data
    from gm.data.io import data_spec, read_meta, read_split
    from gm.featurizer import train_featurizer
    from gm.params import parse_params
    from gm.stages.prepare import prepare

    materialise_default_data(tmp_path)
    raw = {"data": {"seed": 0, "val_fraction": 0.1, "test_fraction": 0.2, "datasets": {"stk": {
        "source": "stacked_digits", "path": "data/digits/digits.csv.gz", "n": 3000, "size": 8}}}, "experiments": {}}
    p = parse_params(raw, tmp_path / "params.yaml")
    prepare("stk", p.datasets["stk"], tmp_path, Layout(tmp_path).prepared_root, 0, 0.1, 0.2)
    d = Layout(tmp_path).prepared("stk")
    assert read_meta(d)["channel_classes"] == 10
    (tx, ty), (vx, vy), (sx, sy) = (read_split(d, s) for s in ("train", "val", "test"))
    f, _ = train_featurizer(tx, ty, vx, vy, data_spec(d), 10, FeaturizerConfig(epochs=3), channelwise=True)
    # chance is 1 in 1,000; a joint 1,000-way classifier reached 12.7 % in 15 epochs of 20,000 stacks
    assert (predict(f, sx) == sy).mean() > 0.6
