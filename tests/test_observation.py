"""Observation heads: discrete heads are probability mass functions over the data's levels,
and every head's model-space density turns into honest data-space numbers."""

from __future__ import annotations

import math

import pytest
import torch

from gm.core.config import ConfigError
from gm.data.dataspec import DataSpec
from gm.nn.observation import (
    bin_centres,
    discretized_logistic_mixture_log_prob,
    levels_of,
    make_observation,
)
from tests.helpers import seeded

SEVENTEEN = DataSpec(shape=(1,), kind="image", levels=17)
BINARY = DataSpec(shape=(1,), kind="image", levels=2)


def all_levels(data: DataSpec) -> torch.Tensor:
    return bin_centres(torch.arange(data.levels), data).view(-1, 1)  # (L, 1) model space


@pytest.mark.parametrize("name,data", [("categorical", SEVENTEEN), ("logistic", SEVENTEEN), ("bernoulli", BINARY)])
def test_discrete_heads_sum_to_one_over_the_levels(name, data):
    head = make_observation(name, data, components=3)
    params = torch.randn(1, head.params_per_dim, generator=seeded(0)) * 2  # one set of parameters
    x = all_levels(data)  # every level once
    log_density = head.log_prob(params.expand(len(x), -1), x)  # (L,) model-space densities
    # density × bin width (1/scale in model space) is the level's mass; the masses sum to 1.
    mass = (log_density - math.log(data.scale)).exp()
    assert mass.sum().item() == pytest.approx(1.0, abs=1e-5)
    # Any dequantized point of a bin scores the same as its centre.
    jitter = x + (torch.rand(x.shape, generator=seeded(1)) - 0.5) / data.scale * 0.99
    torch.testing.assert_close(head.log_prob(params.expand(len(x), -1), jitter), log_density)


def test_logistic_mixture_with_extreme_scales_still_sums_to_one():
    data = DataSpec(shape=(1,), kind="image", levels=256)
    v = torch.arange(256)
    for log_scale in (-7.0, -3.0, 0.0, 2.0):
        lp = discretized_logistic_mixture_log_prob(
            v, torch.zeros(256, 2), torch.tensor([[-0.3, 0.71]]).expand(256, 2),
            torch.full((256, 2), log_scale), data)
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-4), log_scale


def test_levels_of_inverts_the_dequantization():
    data = SEVENTEEN
    v = torch.arange(17).float().view(-1, 1)
    for u in (0.0, 0.5, 0.999):
        x = data.to_model(v + u - 0.5, dequantize=False)  # to_model adds 0.5 when not dequantizing
        assert torch.equal(levels_of(x, data).view(-1), torch.arange(17))


def test_gaussian_head_is_the_normal_density():
    head = make_observation("gaussian", DataSpec(shape=(2,), kind="toy"))
    with torch.no_grad():
        head.log_std.copy_(torch.tensor([0.0, math.log(2.0)]))
    x, m = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])
    expect = -0.5 * 1.0 - 0.5 * math.log(2 * math.pi) + (-0.5 * 1.0 - 0.5 * math.log(2 * math.pi) - math.log(2.0))
    assert head.log_prob(m, x).item() == pytest.approx(expect, rel=1e-6)


@pytest.mark.parametrize("name,data,match", [
    ("bernoulli", SEVENTEEN, "needs binary data"),
    ("categorical", DataSpec(shape=(2,), kind="toy"), "needs discrete data"),
    ("logistic", DataSpec(shape=(2,), kind="toy"), "needs discrete data"),
    ("poisson", SEVENTEEN, "expected one of"),
])
def test_heads_refuse_data_they_cannot_score(name, data, match):
    with pytest.raises(ConfigError, match=match):
        make_observation(name, data)


@pytest.mark.parametrize("name", ["categorical", "logistic"])
def test_discrete_samples_land_on_bin_centres(name):
    head = make_observation(name, SEVENTEEN, components=2)
    x = head.sample(torch.randn(500, head.params_per_dim, generator=seeded(2)), generator=seeded(3))
    torch.testing.assert_close(x, bin_centres(levels_of(x, SEVENTEEN), SEVENTEEN))


def test_gaussian_z_head_reads_its_std_from_the_network():
    # params per dimension: (mean, raw log s); log s = floor + softplus(raw − floor), ≈ raw well above it.
    head = make_observation("gaussian_z", DataSpec(shape=(2,), kind="toy"), min_log_std=-7.0)
    x = torch.tensor([[1.0, 3.0], [1.0, 3.0]])
    params = torch.tensor([[0.0, 0.0, 1.0, math.log(2.0)],  # dims: N(0, 1), N(1, 4)
                           [0.0, math.log(0.5), 1.0, 0.0]])  # the same means, other scales: another z
    log_s = -7.0 + torch.nn.functional.softplus(torch.tensor([[0.0, math.log(2.0)], [math.log(0.5), 0.0]]) + 7.0)
    s = log_s.double().exp()
    d = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    expect = (-0.5 * (d / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    got = head.log_prob(params, x)
    torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-6)
    assert got[0] != got[1]  # the variance, not only the mean, depends on the code
    torch.testing.assert_close(head.mean(params), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    draws = head.sample(params[:1].expand(20000, 4), generator=seeded(1))
    torch.testing.assert_close(draws.std(0), s[0].float(), rtol=0.03, atol=0)
    # the floor: a very negative raw log s stays at min_log_std, with a gradient
    raw = torch.tensor([[0.0, -50.0, 0.0, -50.0]], requires_grad=True)
    assert torch.allclose(head.log_std_of(raw), torch.tensor(-7.0))
    head.log_prob(raw, torch.zeros(1, 2)).sum().backward()
    assert raw.grad is not None and torch.isfinite(raw.grad).all()


def test_a_vae_with_the_gaussian_z_decoder_learns_a_code_dependent_variance():
    # Data whose noise depends on a latent factor: x = (c, c·ε) with c in {-2, 2}: a σ shared by every
    # code cannot fit both halves; σ(z) can. The ELBO of σ(z) ends above the constant-σ decoder's.
    from gm.core.config import build
    from gm.models.vae import VAE, VAEConfig
    from tests.helpers import train_single_group

    g = seeded(0)
    c = torch.where(torch.rand(512, generator=g) < 0.5, 0.2, 2.0)
    x = torch.stack([c, c * torch.randn(512, generator=g)], 1)
    elbos = {}
    for decoder in ("gaussian", "gaussian_z"):
        torch.manual_seed(0)
        model = VAE(build(VAEConfig, {"z_dim": 2, "hidden": 32, "depth": 2, "lr": 3e-3, "decoder": decoder}, "m"),
                    DataSpec(shape=(2,), kind="toy"))
        train_single_group(model, x, 400)
        with torch.no_grad():
            elbos[decoder] = float(model.elbo(x, seeded(1)).mean())
    assert elbos["gaussian_z"] > elbos["gaussian"] + 0.3, elbos
