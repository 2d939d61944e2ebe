"""The evaluation protocol on real data: image metrics in a feature space, seeds aggregated."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.datasets import load_digits

from gm.evaluation import PIXELS, EvaluateParams, FeatureSpace, ModelSampler, compute_metrics, evaluation_inputs
from gm.models.base import Capabilities
from tests.helpers import DIGITS


def metrics_of(ev, samples: np.ndarray, test: np.ndarray, params: EvaluateParams) -> dict:
    """What evaluation reports for `samples` of `ev` against `test`, in pixel space."""
    return compute_metrics(ev.spec.kind, evaluation_inputs(ev, samples, test, None, params, FeatureSpace(PIXELS), 0))


def test_image_metrics_separate_real_digits_from_noise_in_pixel_space():
    x = load_digits().images[:, None]  # (1797, 1, 8, 8), values 0..16
    idx = np.random.default_rng(17).permutation(len(x))
    test, held = x[idx[:600]], x[idx[600:1200]]
    noise = np.random.default_rng(18).integers(0, 17, size=held.shape).astype(np.float64)
    params = EvaluateParams(kid_subsets=10, kid_subset_size=300)
    implicit = SimpleNamespace(spec=DIGITS, capabilities=Capabilities())  # samples only
    real = metrics_of(implicit, held, test, params)
    fake = metrics_of(implicit, noise, test, params)
    assert {"fd", "kid", "kid_std", "precision", "recall", "density", "coverage"} <= set(real)
    assert "class_coverage" not in real  # pixels have no classifier
    assert real["fd"] < 0.1 * fake["fd"] and real["kid"] < 0.1 * fake["kid"]
    assert real["precision"] > 0.5 and fake["precision"] < 0.05 and fake["coverage"] < 0.05


def test_family_specific_test_metrics():
    import torch

    import gm.models  # noqa: F401
    from gm.core.config import build
    from gm.core.registry import FAMILIES

    x = np.random.default_rng(0).integers(0, 17, size=(20, 1, 8, 8)).astype(np.float32)
    unusable = np.full_like(x, np.nan)  # leaves out the sample metrics
    params = EvaluateParams()

    def specific(family, **cfg):
        torch.manual_seed(0)
        cls = FAMILIES[family]
        sampler = ModelSampler(cls(build(cls.config_cls, {"hidden": 16, **cfg}, "m"), DIGITS).eval())
        out = metrics_of(sampler, unusable, x, params)
        return sampler, {k: v for k, v in out.items() if k in ("test_recon_mse", "codebook_perplexity")}

    vae, vae_metrics = specific("vae", decoder="logistic", iwae_k=2)
    recon = vae.reconstruct(x, 0)
    assert recon.shape == x.shape and set(np.unique(recon)) <= set(range(17))  # back on the 17 levels
    assert vae_metrics == {"test_recon_mse": pytest.approx(float(np.mean((recon - x) ** 2)))}
    _, vq = specific("vqvae", codebook_size=8)
    assert set(vq) == {"test_recon_mse", "codebook_perplexity"} and 1.0 <= vq["codebook_perplexity"] <= 8.0
    assert specific("gan", arch="dcgan")[1] == {}


class _Gaussian2D:
    """An exact 2-D density in closed form: N(mu, sd^2 I)."""

    likelihood = "exact"
    mu, sd = np.array([1.0, -0.5]), 0.7

    def log_prob(self, x, seed):
        return -0.5 * (((x - self.mu) / self.sd) ** 2).sum(1) - np.log(2 * np.pi * self.sd**2)


def test_density_grid_of_a_known_gaussian_integrates_to_one_and_peaks_at_its_mean(tmp_path):
    from gm.evaluation import density_grid, plot_density

    g = _Gaussian2D()
    xs, ys, p = density_grid(g, g.mu - 6 * g.sd, g.mu + 6 * g.sd, n=241)
    assert p.shape == (241, 241)
    assert np.trapezoid(np.trapezoid(p, xs, axis=1), ys) == pytest.approx(1.0, abs=1e-3)
    i, j = np.unravel_index(p.argmax(), p.shape)
    assert (xs[j], ys[i]) == pytest.approx(tuple(g.mu), abs=float(xs[1] - xs[0]))  # rows y, columns x
    test = np.random.default_rng(0).normal(g.mu, g.sd, size=(2000, 2))
    assert plot_density(tmp_path / "density.png", g, test, "gaussian").stat().st_size > 5000
