"""RealNVP (Dinh et al. 2017): masks, the multi-scale layout, exact inverses and log-dets against
autograd Jacobians, a normalised density, sampling, config errors and training on digits."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gm.core.config import ConfigError, build
from gm.data.dataspec import DataSpec
from gm.flows.dequantization import DequantizationConfig
from gm.flows.image import ActNorm, AffineCoupling, Squeeze, channel_mask, checkerboard_mask
from gm.models.base import Batch
from gm.models.realnvp import RealNVP, RealNVPConfig
from tests.helpers import SMALL_IMAGE, TOY, VEC3, perturb, seeded, train_single_group, train_steps
from tests.test_flow_families import log_abs_det_jacobian

DIGITS = DataSpec(shape=(1, 8, 8), kind="image", levels=17)

# (data, overrides, perturbation std): every layout, small enough for exact Jacobians in float64.
# The 16 couplings of 3 scales get a smaller perturbation: at 0.2 their Jacobian's condition number
# reaches 1e14 and slogdet itself loses the digits being compared.
CASES = {
    "vector-toy": (VEC3, {"n_layers": 4}, 0.2),
    "vector-image": (SMALL_IMAGE, {"arch": "vector", "n_layers": 3}, 0.2),
    "vector-no-actnorm": (VEC3, {"n_layers": 3, "actnorm": False}, 0.2),
    "multiscale-1": (SMALL_IMAGE, {"scales": 1}, 0.2),
    "multiscale-2": (SMALL_IMAGE, {"scales": 2}, 0.2),
    "multiscale-3": (DIGITS, {"scales": 3, "actnorm": False}, 0.05),
}


def realnvp(data: DataSpec, **overrides) -> RealNVP:
    torch.manual_seed(0)
    return RealNVP(build(RealNVPConfig, {"hidden": 8, "depth": 1, **overrides}, "test.realnvp"), data)


def model_batch(data: DataSpec, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Points in model space: dequantized levels for images, N(0, 4) for toys."""
    g = seeded(seed)
    if data.levels:
        levels = torch.randint(0, data.levels, (n, *data.shape), generator=g)
        return data.to_model(levels, generator=g).to(dtype)
    return 2 * torch.randn(n, *data.shape, generator=g, dtype=dtype)


def perturbed(name: str) -> RealNVP:
    """A float64 model in eval mode whose ActNorms are initialised and whose nets are non-trivial."""
    data, overrides, std = CASES[name]
    model = realnvp(data, **overrides).double()
    model.log_prob(model_batch(data, 32, seed=9))  # the data-dependent ActNorm init
    model.eval()
    perturb(model, std)
    return model


def couplings_in_density_order(model: RealNVP) -> list[AffineCoupling]:
    stacks = model.flow.steps if model.arch == "multiscale" else [model.flow]
    return [layer for stack in stacks for layer in reversed(stack.layers) if isinstance(layer, AffineCoupling)]


# --------------------------------------------------------------------------- architecture


def test_config_inherits_the_dequantization_fields_first():
    assert issubclass(RealNVPConfig, DequantizationConfig)
    names = [f.name for f in dataclasses.fields(RealNVPConfig)]
    base = [f.name for f in dataclasses.fields(DequantizationConfig)]
    assert names[:len(base)] == base
    assert {"arch", "scales", "n_layers", "hidden", "depth", "activation", "scale_factor", "actnorm", "lr",
            "weight_decay"} <= set(names)


def test_arch_auto_picks_multiscale_for_images_and_vector_otherwise():
    assert realnvp(DIGITS).arch == "multiscale"
    assert realnvp(TOY).arch == "vector"
    assert realnvp(DIGITS, arch="vector").arch == "vector"


@pytest.mark.parametrize("scales,latent_shapes", [
    (1, [(1, 8, 8)]),
    (2, [(2, 4, 4), (2, 4, 4)]),
    (3, [(2, 4, 4), (4, 2, 2), (4, 2, 2)]),
])
def test_multiscale_layout_follows_section_3_6(scales, latent_shapes):
    model = realnvp(DIGITS, scales=scales)
    assert model.flow.latent_shapes == latent_shapes and model.flow.latent_dim == 64
    # each scale but the last: 3 checkerboard couplings, squeeze, 3 channel-wise; the last: 4 checkerboard
    c, h, w = 1, 8, 8
    for level, stack in enumerate(model.flow.steps):
        layers = list(reversed(stack.layers))  # density order
        couplings = [layer for layer in layers if isinstance(layer, AffineCoupling)]
        assert sum(isinstance(layer, ActNorm) for layer in layers) == len(couplings)  # actnorm: true
        if level < scales - 1:
            assert len(couplings) == 6 and sum(isinstance(layer, Squeeze) for layer in layers) == 1
            for i, layer in enumerate(couplings[:3]):
                assert torch.equal(layer.mask, checkerboard_mask(c, h, w, parity=i % 2))
            for i, layer in enumerate(couplings[3:]):
                assert torch.equal(layer.mask, channel_mask(4 * c, h // 2, w // 2, parity=i % 2))
            c, h, w = 2 * c, h // 2, w // 2  # squeezed to 4C, half factored out
        else:
            assert len(couplings) == 4 and not any(isinstance(layer, Squeeze) for layer in layers)
            for i, layer in enumerate(couplings):
                assert torch.equal(layer.mask, checkerboard_mask(c, h, w, parity=i % 2))
        assert all(layer.scale == "tanh" and layer.bound == model.config.scale_factor for layer in couplings)


def test_vector_masks_alternate_even_and_odd():
    model = realnvp(VEC3, n_layers=4, actnorm=False)
    masks = [layer.mask.tolist() for layer in couplings_in_density_order(model)]
    assert masks == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]] * 2
    assert len(model.flow.layers) == 4


@pytest.mark.parametrize("name", ["multiscale-2", "multiscale-3", "vector-toy", "vector-image"])
def test_every_coupling_passes_its_masked_half_unchanged(name):
    model = perturbed(name)
    for layer in couplings_in_density_order(model):  # checkerboard and channel-wise masks alike
        shape = (5, *layer.mask.shape)
        x = torch.randn(shape, dtype=torch.float64, generator=seeded(4))
        y, _ = layer.inverse(x)
        keep = layer.mask.bool().expand(shape)
        assert abs(2 * layer.mask.sum().item() - layer.mask.numel()) <= 1  # half passes, half is transformed
        assert torch.equal(y[keep], x[keep])
        assert (y[~keep] - x[~keep]).abs().min() > 0


def test_untrained_flow_is_the_identity_up_to_actnorm():
    model = realnvp(DIGITS, actnorm=False)
    x = model_batch(DIGITS, 4, seed=0, dtype=torch.float32)
    z, logdet = model.forward_and_logdet(x)
    assert torch.equal(logdet, torch.zeros(4))  # zero last layers: every coupling starts at the identity
    assert torch.equal(torch.sort(z, 1).values, torch.sort(x.flatten(1), 1).values)  # squeezes only permute


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("name", list(CASES))
def test_inverse_is_exact_and_logdet_is_the_jacobian(name):
    model = perturbed(name)
    data = model.data
    x = model_batch(data, 3, seed=1)
    z, logdet = model.forward_and_logdet(x)
    assert z.shape == (3, data.dim) and logdet.shape == (3,)
    assert logdet.abs().min() > 1e-2, "the perturbed flow should not be volume preserving"
    for i in range(3):
        expected = log_abs_det_jacobian(lambda v: model.forward_and_logdet(v)[0], x[i:i + 1])
        assert logdet[i].item() == pytest.approx(expected, abs=1e-7)
    assert (model.inverse(z) - x).abs().max() < 1e-5
    if model.arch == "multiscale":
        _, sample_logdet = model.flow.from_latent(z)
        assert torch.allclose(sample_logdet, -logdet, atol=1e-8)
    else:
        _, sample_logdet = model.flow(z)
        assert torch.allclose(sample_logdet, -logdet, atol=1e-8)


@torch.no_grad()
def test_vector_density_integrates_to_one():
    model = realnvp(TOY, hidden=16, n_layers=4).double()
    model.log_prob(model_batch(TOY, 64, seed=3))  # ActNorm init
    model.eval()
    perturb(model, 0.2)
    # The perturbed flow has heavy-ish tails, hence the wide grid.
    axis = torch.linspace(-40, 40, 801, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)  # (G², 2)
    mass = model.log_prob(grid).exp().sum() * (axis[1] - axis[0]) ** 2
    assert mass.item() == pytest.approx(1.0, abs=5e-3)


@pytest.mark.parametrize("name", list(CASES))
def test_samples_are_finite_and_shaped_like_the_data(name):
    model = perturbed(name).float()
    x = model.sample(16, generator=seeded(0))
    assert x.shape == (16, *model.data.shape) and torch.isfinite(x).all()
    if model.data.levels:
        assert x.min() >= -1 and x.max() < 1


# --------------------------------------------------------------------------- config


def test_scales_that_do_not_fit_the_image_are_a_config_error():
    with pytest.raises(ConfigError, match="^scales:"):
        realnvp(DIGITS, scales=4)  # 3 squeezes would leave a 1×1 grid: no checkerboard
    with pytest.raises(ConfigError, match="^scales:"):
        realnvp(SMALL_IMAGE, scales=3)
    with pytest.raises(ConfigError, match="^arch:"):
        realnvp(TOY, arch="multiscale")
    assert realnvp(DIGITS, scales=3).flow.latent_dim == 64


@pytest.mark.parametrize("bad", [{"scales": 0}, {"scale_factor": 0.0}, {"arch": "conv"}, {"n_layers": 0}])
def test_bad_configs_raise(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        build(RealNVPConfig, bad, "x")


@pytest.mark.parametrize("data", [TOY, DIGITS])
def test_weight_decay_applies_to_the_flow_group(data):
    model = realnvp(data, weight_decay=5e-5)
    (group,) = model.step_groups()
    assert (group.name, group.weight_decay, group.lr) == ("flow", 5e-5, 1e-3)
    assert group.make_optimizer().param_groups[0]["weight_decay"] == 5e-5


# --------------------------------------------------------------------------- training


def test_learns_a_shifted_correlated_gaussian():
    # x = mean + L·ε: a per-dimension affine (ActNorm alone) reaches at best an NLL of 2.44 nats
    # here, so getting near the entropy (1.63) needs the couplings to learn x1 given x0.
    mean, chol = torch.tensor([3.0, -2.0]), torch.tensor([[0.5, 0.0], [1.2, 0.6]])
    g = seeded(0)

    def draw(n: int) -> torch.Tensor:
        return mean + torch.randn(n, 2, generator=g) @ chol.T  # (n, 2)

    test_x = draw(2000)
    model = realnvp(TOY, hidden=32, depth=2, n_layers=2, lr=3e-3, actnorm=False)
    with torch.no_grad():
        before = -model.log_prob(test_x).mean().item()
    train_steps(model, lambda: Batch(draw(128)), steps=300)
    with torch.no_grad():
        after = -model.log_prob(test_x).mean().item()
    entropy = math.log(2 * math.pi * math.e) + torch.logdet(chol).item()  # the best achievable NLL
    assert before > entropy + 5
    assert after < entropy + 0.2, (before, after, entropy)


def test_multiscale_trains_on_digits():
    from sklearn.datasets import load_digits

    pixels = torch.from_numpy(load_digits().data).view(-1, 1, 8, 8)  # (1797, 1, 8, 8), levels 0..16
    perm = torch.randperm(len(pixels), generator=seeded(0))
    train_px, test_px = pixels[perm[:1400]], pixels[perm[1400:]]
    g = seeded(1)
    test_x = DIGITS.to_model(test_px, generator=g)
    model = realnvp(DIGITS, hidden=16, depth=1, scales=2, lr=3e-3)

    def bits_per_dim() -> float:  # held-out, in data space
        with torch.no_grad():
            nll = -(model.log_prob(test_x) + DIGITS.log_det_to_model).mean().item()
        return nll / (DIGITS.dim * math.log(2))

    model.log_prob(DIGITS.to_model(train_px[:256], generator=g))  # the data-dependent ActNorm init
    before = bits_per_dim()
    (group,) = model.step_groups()
    opt = group.make_optimizer()
    for _ in range(200):
        idx = torch.randint(0, len(train_px), (32,), generator=g)
        out = model.loss(Batch(DIGITS.to_model(train_px[idx], generator=g)), "flow")
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = bits_per_dim()
    # from ~4.6 (ActNorm alone) to ~2.6; a Gaussian mixture reaches 2.74 bits/dim on digits
    assert before > 4 and after < 3.0, (before, after)
    samples = model.sample(8, generator=seeded(2))
    assert samples.shape == (8, 1, 8, 8) and samples.min() >= -1 and samples.max() < 1


def test_one_fixed_batch_step_lowers_the_loss():
    x = model_batch(DIGITS, 32, seed=5, dtype=torch.float32)
    losses = train_single_group(realnvp(DIGITS), x, steps=5)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize("data,overrides", [
    (SMALL_IMAGE, {"scales": 2}), (DataSpec(shape=(2,), kind="toy", levels=5), {}),
])
def test_variational_dequantization_is_inherited(data, overrides):
    model = realnvp(data, dequantization="variational", dequant_layers=1, dequant_hidden=8, **overrides)
    assert model.likelihood == "bound" and model.dequantizer is not None
    x = model_batch(data, 8, seed=6, dtype=torch.float32)
    out = model.loss(Batch(x), "flow")
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.dequantizer.parameters())
    (group,) = model.step_groups()
    assert {id(p) for p in model.dequantizer.parameters()} <= {id(p) for p in group.params}
    assert model.log_prob(x).shape == (8,)
