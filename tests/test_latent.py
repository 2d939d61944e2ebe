"""The latent-variable base: closed forms of the VAE's pieces and every decoder head on digits."""

from __future__ import annotations

import pytest
import torch

import gm.models  # noqa: F401  (fills the registry)
from gm.core.config import build
from gm.data.dataspec import DataSpec
from gm.models._latent import gaussian_kl, gaussian_posterior_sample
from gm.core.registry import FAMILIES
from gm.core.numerics import normal_log_prob
from tests.helpers import DIGITS, seeded, train_single_group



def test_analytic_gaussian_kl_equals_its_monte_carlo_estimate():
    mu = torch.tensor([[0.5, -1.0, 2.0]])
    logvar = torch.tensor([[0.0, -1.5, 0.7]])
    z, log_q = gaussian_posterior_sample(mu, logvar, 400_000, seeded(0))  # (k, 1, 3), (k, 1)
    mc = (log_q - normal_log_prob(z).sum(-1)).mean()
    se = (log_q - normal_log_prob(z).sum(-1)).std() / 400_000 ** 0.5
    assert abs(mc.item() - gaussian_kl(mu, logvar).sum().item()) < 5 * se.item()


def test_posterior_log_density_is_the_gaussian_density():
    import math

    mu, logvar = torch.tensor([[0.3, -0.2]]), torch.tensor([[0.4, -0.8]])
    z, log_q = gaussian_posterior_sample(mu, logvar, 5, seeded(1))
    # log N(z; μ, σ²) = -½((z - μ)/σ)² - log σ - ½ log 2π, written out (normal_log_prob is what the code uses).
    sigma = torch.exp(0.5 * logvar)
    expect = (-0.5 * ((z - mu) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(log_q, expect)
    torch.testing.assert_close(z, mu + sigma * torch.randn(5, 1, 2, generator=seeded(1)))


@pytest.mark.parametrize("decoder", ["gaussian", "categorical", "logistic"])
def test_vae_trains_with_every_head_on_digits(decoder):
    cls = FAMILIES["vae"]
    model = cls(build(cls.config_cls, {"hidden": 32, "z_dim": 4, "decoder": decoder, "decoder_components": 2,
                                       "iwae_k": 8}, "m"), DIGITS)
    x = DIGITS.to_model(torch.randint(0, 17, (16, 1, 8, 8), generator=seeded(2)), generator=seeded(3))
    losses = train_single_group(model, x, 30)
    assert losses[-1] < losses[0]
    with torch.no_grad():
        lp = model.log_prob(x)
        assert lp.shape == (16,) and torch.isfinite(lp).all()
        if decoder != "gaussian":  # a mass: log P(x) <= 0 in data space, i.e. lp + log_det <= 0
            assert (lp + DIGITS.log_det_to_model <= 1e-4).all()
        s = model.sample(5, generator=seeded(4))
        assert s.shape == (5, 1, 8, 8) and s.min() >= -1 and s.max() < 1
        assert model.reconstruct(x).shape == x.shape


def test_validation_reports_rate_and_distortion_of_a_vae():
    import math

    import numpy as np

    from gm.training.validate import validation_scores

    toy = DataSpec(shape=(2,), kind="toy")
    model = FAMILIES["vae"](build(FAMILIES["vae"].config_cls, {"hidden": 16, "z_dim": 2, "iwae_k": 4}, "m"), toy).eval()
    x = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    scores = validation_scores(model, toy, x, 100)
    # By hand, on the one draw per row the scores make (seed 0): rate = KL(N(μ, σ²) ‖ N(0, I)) in closed
    # form, distortion = -log N(x; G(z), s²) at z = μ + σε; toy data: model space is data space.
    xt = torch.from_numpy(x)
    with torch.no_grad():
        mu, logvar = (t.double() for t in model.encode(xt))
        sigma = torch.exp(0.5 * logvar)
        z = mu + sigma * torch.randn(300, 2, generator=seeded(0)).double()
        mean = model.decoder(z.float()).double()
    s = model.obs.log_std.detach().double().exp()
    rate = (-sigma.log() + (sigma ** 2 + mu ** 2) / 2 - 0.5).sum(-1).mean().item()
    distortion = (0.5 * ((xt.double() - mean) / s) ** 2 + s.log() + 0.5 * math.log(2 * math.pi)).sum(-1).mean().item()
    assert scores["val_rate"] == pytest.approx(rate, rel=1e-5)
    assert scores["val_distortion"] == pytest.approx(distortion, rel=1e-5)
