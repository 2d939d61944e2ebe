"""The classifier (Inception) score and the mode statistics of the `classes` metric, against closed forms
and hand computations; the featurizer's class probabilities reach them through evaluation's inputs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gm.core.registry import METRICS
from gm.data.dataspec import DataSpec
from gm.evaluation import EvaluateParams, FeatureSpace, compute_metrics, evaluation_inputs
from gm.featurizer import FeatureNet, FeaturizerConfig, predict, predict_proba
from gm.metrics.images import class_metrics, classifier_score, classifier_scores, mode_histogram_metrics
from gm.models.base import Capabilities


def test_uniform_predictions_score_one():
    assert classifier_score(np.full((50, 7), 1 / 7)) == pytest.approx(1.0)


def test_identical_predictions_score_one_whatever_they_are():
    p = np.tile([0.7, 0.2, 0.1], (20, 1))
    assert classifier_score(p) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [2, 10, 1000])
def test_one_hot_predictions_spread_evenly_over_k_classes_score_k(k):
    p = np.eye(k)[np.arange(3 * k) % k]
    assert classifier_score(p) == pytest.approx(k)


def test_one_hot_on_some_classes_scores_the_number_of_classes_used():
    p = np.eye(10)[[0, 1, 2, 3] * 5]  # 4 of 10 classes, evenly: marginal 1/4 on each
    assert classifier_score(p) == pytest.approx(4.0)


def test_hand_computed_small_case():
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    # marginal (0.75, 0.25); KL row 1 = 0.5 log(0.5/0.75) + 0.5 log(0.5/0.25) = 0.5 log(4/3);
    # KL row 2 = log(1/0.75) = log(4/3); mean = 0.75 log(4/3); IS = (4/3)^0.75
    assert classifier_score(p) == pytest.approx((4 / 3) ** 0.75, rel=1e-12)


def test_unnormalised_rows_are_normalised_and_bad_shapes_refused():
    assert classifier_score(np.array([[1.0, 1.0], [2.0, 0.0]])) == pytest.approx((4 / 3) ** 0.75)
    with pytest.raises(ValueError, match="expected \\(N, K\\)"):
        classifier_score(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="expected \\(N, K\\)"):
        classifier_score(np.ones(3))


def test_registered_with_the_test_reference():
    m = METRICS["classifier_score"]
    assert m.kinds == ("image", "audio")  # wherever a featurizer classifies: images and audio clips
    assert set(m.consumes.values()) == {"sample_class_probs", "test_class_probs"}
    out = classifier_scores(np.eye(3)[[0, 1, 2]], np.full((4, 3), 1 / 3))
    assert out == {"classifier_score": pytest.approx(3.0), "classifier_score_test": pytest.approx(1.0)}


# ------------------------------------------------------------------------- mode statistics


def test_modes_covered_and_kl_to_uniform_by_hand():
    labels = np.array([0, 0, 0, 1, 2, 2])  # 3 of 4 modes; histogram (1/2, 1/6, 1/3, 0)
    out = mode_histogram_metrics(labels, 4)
    p = np.array([1 / 2, 1 / 6, 1 / 3])
    assert out["modes_covered"] == 3.0
    assert out["mode_kl"] == pytest.approx(float(np.sum(p * np.log(p / 0.25))))
    # KL to uniform is log K minus the entropy the `classes` metric reports
    assert out["mode_kl"] == pytest.approx(math.log(4) - class_metrics(labels, 4)["class_entropy"])
    assert METRICS["class_modes"].consumes == METRICS["classes"].consumes


def test_mode_kl_extremes_on_1000_modes():
    uniform = mode_histogram_metrics(np.arange(3000) % 1000, 1000)
    assert uniform["modes_covered"] == 1000.0 and uniform["mode_kl"] == pytest.approx(0.0, abs=1e-12)
    collapsed = mode_histogram_metrics(np.full(500, 417), 1000)
    assert collapsed["modes_covered"] == 1.0 and collapsed["mode_kl"] == pytest.approx(math.log(1000))


# ------------------------------------------------------------------- through the featurizer


def test_featurizer_probabilities_reach_the_metric():
    spec = DataSpec((1, 8, 8), "image", num_classes=5, levels=17)
    torch.manual_seed(0)
    net = FeatureNet(spec, 5, FeaturizerConfig(channels=(4,), feature_dim=8)).eval()
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 17, size=(40, 1, 8, 8)).astype(np.float32)
    test = rng.integers(0, 17, size=(30, 1, 8, 8)).astype(np.float32)
    probs = predict_proba(net, samples)
    assert probs.shape == (40, 5) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(probs.argmax(1), predict(net, samples))

    ev = SimpleNamespace(spec=spec, capabilities=Capabilities())
    space = FeatureSpace("h", net)
    inputs = evaluation_inputs(ev, samples, test, None, EvaluateParams(kid_subsets=2, kid_subset_size=20), space, 0)
    out = compute_metrics("image", inputs)
    assert out["classifier_score"] == pytest.approx(classifier_score(probs))
    assert out["classifier_score_test"] == pytest.approx(classifier_score(predict_proba(net, test)))
    assert 1.0 <= out["classifier_score"] <= 5.0
    assert {"modes_covered", "mode_kl"} <= set(out)

    pixels = evaluation_inputs(ev, samples, test, None, EvaluateParams(), FeatureSpace("pixels"), 0)
    assert not pixels.available("sample_class_probs") and not pixels.available("test_class_probs")


def _one_hot(labels, k):
    return np.eye(k)[np.asarray(labels)]


def test_the_perfect_sampler_reference_reshuffles_channels_of_test_stacks():
    from gm.data.stacked import stack_labels
    from gm.metrics.images import perfect_sampler_modes

    one = _one_hot(stack_labels(np.array([[1, 2, 3]] * 5)), 1000)
    assert perfect_sampler_modes(one, 10, 400, 0) == {"modes_covered_test": 1.0, "mode_kl_test": pytest.approx(np.log(1000))}
    # channel 0 from {1, 4}, channel 1 from {2, 5}, channel 2 from {3, 6}: 8 modes, none else
    two = _one_hot(stack_labels(np.array([[1, 2, 3], [4, 5, 6]] * 50)), 1000)
    out = perfect_sampler_modes(two, 10, 4000, 0)
    assert out["modes_covered_test"] == 8 and out["mode_kl_test"] == pytest.approx(np.log(1000 / 8), abs=0.01)


def test_the_perfect_sampler_reference_is_sampling_noise_with_a_perfect_classifier():
    # 2 channels of 10 classes: 100 modes, each exactly 30 times (the test split's own digit frequencies
    # carry over into the reference, so they are exactly uniform here)
    labels = np.repeat(np.arange(100), 30)
    n = 200_000
    out = perfect_sampler_modes_of(labels, n)
    assert out["modes_covered_test"] == 100
    assert out["mode_kl_test"] < 4 * 99 / (2 * n)  # E KL ≈ (K - 1)/(2N) for a uniform multinomial
    with pytest.raises(ValueError, match="per channel"):
        from gm.metrics.images import perfect_sampler_modes

        perfect_sampler_modes(_one_hot(labels, 100), 7, 10, 0)


def perfect_sampler_modes_of(labels, n):
    from gm.metrics.images import perfect_sampler_modes

    return perfect_sampler_modes(_one_hot(labels, 100), 10, n, 0)
