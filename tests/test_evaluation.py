"""The evaluation protocol on real data: image metrics in a feature space, seeds aggregated."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from gm.evaluation import PIXELS, EvaluateParams, FeatureSpace, image_metrics


def test_image_metrics_separate_real_digits_from_noise_in_pixel_space():
    x = load_digits().images[:, None]  # (1797, 1, 8, 8), values 0..16
    idx = np.random.default_rng(17).permutation(len(x))
    test, held = x[idx[:600]], x[idx[600:1200]]
    noise = np.random.default_rng(18).integers(0, 17, size=held.shape).astype(np.float64)
    params = EvaluateParams(kid_subsets=10, kid_subset_size=300)
    space = FeatureSpace(PIXELS)
    real = image_metrics(held, test, space, params, seed=0, num_classes=10)
    fake = image_metrics(noise, test, space, params, seed=0, num_classes=10)
    assert {"fd", "kid", "kid_std", "precision", "recall", "density", "coverage"} <= set(real)
    assert "class_coverage" not in real  # pixels have no classifier
    assert real["fd"] < 0.1 * fake["fd"] and real["kid"] < 0.1 * fake["kid"]
    assert real["precision"] > 0.5 and fake["precision"] < 0.05 and fake["coverage"] < 0.05
