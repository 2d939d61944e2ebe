"""Image flow layers (gm.flows.image) and the flow families NICE, Glow, MAF, IAF and planar/radial:
exact inverses, log-dets against autograd Jacobians, normalised densities, training."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from gm.core.config import ConfigError, build
from gm.data.dataspec import DataSpec
from gm.flows.image import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    FactorOut,
    InvConv1x1,
    MultiScaleFlow,
    Squeeze,
    channel_mask,
    checkerboard_mask,
    coupling_conv_net,
)
from gm.models.base import GenerativeModel
from gm.nn.mlp import mlp
from gm.core.numerics import normal_log_prob
from gm.core.registry import FAMILIES
from tests.helpers import DIGITS as IMAGE, SMALL_IMAGE, TOY, VEC3, perturb, seeded, train_single_group


# (family, config overrides): small enough for exact Jacobians, every variant of every family.
VARIANTS = {
    "nice": ("nice", {"hidden": 16, "depth": 2}),
    "nice-logistic": ("nice", {"hidden": 16, "depth": 2, "prior": "logistic"}),
    "maf": ("maf", {"hidden": 16, "depth": 2, "n_layers": 3}),
    "maf-bn": ("maf", {"hidden": 16, "depth": 2, "n_layers": 3, "batch_norm": True}),
    "iaf": ("iaf", {"hidden": 16, "depth": 2, "n_layers": 3}),
    "planar": ("planar", {"n_layers": 6}),
    "radial": ("planar", {"n_layers": 6, "kind": "radial"}),
    "glow": ("glow", {"hidden": 16, "depth": 2, "levels": 1, "steps_per_level": 3}),
    "glow-tanh": ("glow", {"hidden": 16, "depth": 1, "levels": 1, "steps_per_level": 3, "scale": "tanh"}),
    "glow-additive": ("glow", {"hidden": 16, "depth": 1, "levels": 1, "steps_per_level": 3, "coupling": "additive"}),
}


def build_family(family: str, data: DataSpec, **overrides) -> GenerativeModel:
    cls = FAMILIES[family]
    torch.manual_seed(0)
    return cls(build(cls.config_cls, overrides, f"test.{family}"), data)


def variant(name: str, data: DataSpec) -> GenerativeModel:
    family, overrides = VARIANTS[name]
    return build_family(family, data, **overrides)


def log_abs_det_jacobian(fn, x: torch.Tensor) -> float:
    """log|det ∂fn(x)/∂x| for one input x (1, *shape), both flattened."""
    jac = jacobian(lambda v: fn(v.view_as(x)).flatten(), x.flatten())
    return torch.linalg.slogdet(jac)[1].item()


# --------------------------------------------------------------------------- layers


def random_actnorm(channels: int) -> ActNorm:
    layer = ActNorm(channels).double()
    layer.initialize(3 + 2 * torch.randn(16, channels, 2, 2, dtype=torch.float64, generator=seeded(9)))
    return layer


def conv_coupling(kind: str, mask: torch.Tensor, scale: str = "sigmoid"):
    c = mask.shape[0]
    if kind == "additive":
        return AdditiveCoupling(mask, coupling_conv_net(c, c, 8, 2))
    return AffineCoupling(mask, coupling_conv_net(c, 2 * c, 8, 2), scale)


IMAGE_LAYERS = {  # each acts on (1, 4, 2, 2)
    "actnorm": lambda: random_actnorm(4),
    "invconv": lambda: InvConv1x1(4),
    "affine-checkerboard-sigmoid": lambda: conv_coupling("affine", checkerboard_mask(4, 2, 2)),
    "affine-channel-tanh": lambda: conv_coupling("affine", channel_mask(4, 2, 2), "tanh"),
    "affine-channel-sigmoid-odd": lambda: conv_coupling("affine", channel_mask(4, 2, 2, parity=1)),
    "additive-checkerboard": lambda: conv_coupling("additive", checkerboard_mask(4, 2, 2, parity=1)),
    "additive-channel": lambda: conv_coupling("additive", channel_mask(4, 2, 2)),
    "squeeze": lambda: Squeeze(),
    "factor-out-learned": lambda: FactorOut(4, learned_prior=True),
    "factor-out-plain": lambda: FactorOut(4, learned_prior=False),
}
VECTOR_LAYERS = {  # each acts on (1, 3)
    "actnorm1d": lambda: ActNorm(3),
    "lu-linear": lambda: InvConv1x1(3),
    "affine-mlp": lambda: AffineCoupling(channel_mask(3), mlp(3, 6, 8, 2)),
    "additive-mlp": lambda: AdditiveCoupling(1 - channel_mask(3), mlp(3, 3, 8, 2)),
}


@pytest.mark.parametrize("name", [*IMAGE_LAYERS, *VECTOR_LAYERS])
def test_layer_inverse_and_logdet_match_the_jacobian(name):
    torch.manual_seed(0)
    factory = IMAGE_LAYERS.get(name) or VECTOR_LAYERS[name]
    layer = factory().double().eval()
    perturb(layer, 0.3)  # zero-initialised nets and identity-initialised scales become non-trivial
    shape = (1, 4, 2, 2) if name in IMAGE_LAYERS else (1, 3)
    x = torch.randn(shape, dtype=torch.float64, generator=seeded(1))
    z, ld_inv = layer.inverse(x)
    back, ld_fwd = layer(z)
    assert back.shape == x.shape and ld_inv.shape == (1,) and ld_fwd.shape == (1,)
    assert (back - x).abs().max() < 1e-10
    assert ld_inv.item() == pytest.approx(-ld_fwd.item(), abs=1e-10)
    assert ld_inv.item() == pytest.approx(log_abs_det_jacobian(lambda v: layer.inverse(v)[0], x), abs=1e-8)
    assert ld_fwd.item() == pytest.approx(log_abs_det_jacobian(lambda v: layer(v)[0], z), abs=1e-8)
    if name not in ("squeeze", "factor-out-plain", "additive-checkerboard", "additive-channel", "additive-mlp"):
        assert abs(ld_inv.item()) > 1e-3, "the perturbed layer should not be volume preserving"


def test_actnorm_data_dependent_init_standardises_the_first_batch():
    x = torch.randn(64, 3, 4, 4, generator=seeded(0)) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1) \
        + torch.tensor([-4.0, 0.0, 9.0]).view(1, 3, 1, 1)
    layer = ActNorm(3)
    layer.eval()
    layer.inverse(x)
    assert not layer.initialized and (layer.log_scale == 0).all(), "no init outside training mode"
    layer.train()
    z, logdet = layer.inverse(x)
    assert layer.initialized
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.var((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.allclose(logdet, torch.full((64,), -16 * math.log(0.5 * 2.0 * 7.0)), rtol=2e-2)
    params = [p.detach().clone() for p in layer.parameters()]
    layer.inverse(x + 100)  # a later batch must not re-initialise
    assert all(torch.equal(a, b) for a, b in zip(params, layer.parameters()))
    state = layer.state_dict()
    assert bool(state["initialized"])
    fresh = ActNorm(3)
    fresh.load_state_dict(state)
    assert fresh.initialized and torch.equal(fresh.inverse(x)[0], z)  # loaded: no re-init in train mode


def test_invconv_lu_weight_and_logdet():
    torch.manual_seed(0)
    layer = InvConv1x1(5).double()
    perturb(layer, 0.3)
    perm, lower, upper = layer.factors()
    assert torch.equal(torch.tril(lower, -1) + torch.eye(5, dtype=torch.float64), lower)
    assert torch.equal(torch.triu(upper), upper)
    w = layer.weight()
    assert torch.allclose(w, perm @ lower @ upper)
    assert torch.allclose(layer.inverse_weight() @ w, torch.eye(5, dtype=torch.float64), atol=1e-10)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, generator=seeded(0))
    _, logdet = layer.inverse(x)
    expected = 3 * 4 * torch.linalg.slogdet(w)[1]
    assert torch.allclose(logdet, expected.expand(2), atol=1e-10)
    assert {"perm", "sign_s"} <= set(layer.state_dict()), "P and sign(s) come from the random init: saved"


def test_squeeze_moves_each_2x2_block_into_channels():
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).view(1, 2, 4, 6)
    z, _ = Squeeze().inverse(x)
    assert z.shape == (1, 8, 2, 3)
    assert z[0, :4, 0, 0].tolist() == x[0, 0, :2, :2].flatten().tolist()
    assert z[0, 4:, 1, 2].tolist() == x[0, 1, 2:, 4:].flatten().tolist()
    assert torch.equal(Squeeze()(z)[0], x)


def test_masks_are_complementary():
    board = checkerboard_mask(3, 4, 4)
    assert board.shape == (3, 4, 4) and board[0, 0, 0] == 1 and board[0, 0, 1] == 0 and board.sum() == 24
    assert torch.equal(board + checkerboard_mask(3, 4, 4, parity=1), torch.ones(3, 4, 4))
    chan = channel_mask(4, 2, 2)
    assert chan[:2].eq(1).all() and chan[2:].eq(0).all()
    assert torch.equal(chan + channel_mask(4, 2, 2, parity=1), torch.ones(4, 2, 2))
    assert channel_mask(2).tolist() == [1.0, 0.0]


def test_multiscale_latent_layout():
    flow = MultiScaleFlow((1, 8, 8), 3, lambda c, h, w: [ActNorm(c)])
    assert flow.latent_shapes == [(2, 4, 4), (4, 2, 2), (16, 1, 1)] and flow.latent_dim == 64
    with pytest.raises(ValueError, match="divisible"):
        MultiScaleFlow((1, 8, 8), 4, lambda c, h, w: [ActNorm(c)])


# --------------------------------------------------------------------------- families: transforms


def check_transform(model: GenerativeModel, x: torch.Tensor) -> None:
    """forward_and_logdet's log-det is the Jacobian's, and `inverse` undoes it (float64)."""
    z, logdet = model.forward_and_logdet(x)
    assert z.shape == (x.shape[0], model.data.dim) and logdet.shape == (x.shape[0],)
    assert abs(logdet[0].item()) > 1e-2, "the perturbed flow should not be volume preserving"
    for i in range(x.shape[0]):
        expected = log_abs_det_jacobian(lambda v: model.forward_and_logdet(v)[0], x[i:i + 1])
        assert logdet[i].item() == pytest.approx(expected, abs=1e-7)
    assert (model.inverse(z) - x).abs().max() < 1e-5
    base = getattr(model, "prior_log_prob", lambda u: normal_log_prob(u).sum(-1))  # NICE's may be logistic
    assert torch.allclose(model.log_prob(x), base(z) + logdet)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_family_transform_is_exact_on_vectors(name):
    model = variant(name, VEC3).double().eval()
    perturb(model, 0.2)
    check_transform(model, torch.randn(2, 3, dtype=torch.float64, generator=seeded(2)))


@pytest.mark.parametrize("overrides", [{}, {"coupling": "additive", "learned_prior": False, "scale": "tanh"}])
def test_glow_multiscale_transform_is_exact(overrides):
    model = build_family("glow", SMALL_IMAGE, hidden=8, depth=2, levels=2, steps_per_level=2, **overrides).double()
    assert model.arch == "multiscale"
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=seeded(3)) * 2 - 1
    model.log_prob(torch.rand(16, 1, 4, 4, dtype=torch.float64, generator=seeded(4)) * 2 - 1)  # ActNorm init
    model.eval()
    perturb(model, 0.1)
    check_transform(model, x)


# --------------------------------------------------------------------------- families: densities


# Perturbed flows whose mass reaches past ±6 (up to 35% for glow-tanh; the logistic prior alone
# puts 1% there): integrated over [-20, 20]² instead.
WIDE_TAILS = {"nice-logistic", "maf", "glow", "glow-tanh"}


@torch.no_grad()
@pytest.mark.parametrize("name", list(VARIANTS))
def test_density_integrates_to_one_on_a_toy(name):
    model = variant(name, TOY).double().eval()
    perturb(model, 0.2)
    axis = torch.linspace(-6, 6, 200, dtype=torch.float64)
    if name in WIDE_TAILS:
        axis = torch.linspace(-20, 20, 500, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)  # (G², 2), x-major
    density = model.log_prob(grid).exp().view(axis.numel(), axis.numel())
    mass = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis)
    assert mass.item() == pytest.approx(1.0, abs=2e-2)


def toy_batch(n: int = 256, seed: int = 0) -> torch.Tensor:
    """A shifted, correlated Gaussian: a per-dimension affine alone cannot fit it."""
    eps = torch.randn(n, 2, generator=seeded(seed))
    return torch.tensor([3.0, -2.0]) + eps @ torch.tensor([[0.5, 0.0], [1.2, 0.6]]).T


@pytest.mark.parametrize("name", ["nice", "maf", "maf-bn", "iaf", "planar", "radial", "glow"])
def test_family_trains_on_a_toy_batch_and_samples(name):
    model = variant(name, TOY)
    x = toy_batch()
    losses = train_single_group(model, x, steps=30)
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-5:]) < losses[0] - 0.02, losses  # a fixed batch: the loss is deterministic
    model.eval()
    samples = model.sample(17, generator=seeded(0))
    assert samples.shape == (17, 2) and torch.isfinite(samples).all()
    assert model.log_prob(x[:5]).shape == (5,)


def test_glow_trains_on_discrete_images():
    model = build_family("glow", IMAGE, hidden=16, depth=2, levels=2, steps_per_level=2)
    assert model.arch == "multiscale" and model.flow.latent_dim == 64
    g = seeded(0)
    x = IMAGE.to_model(torch.randint(0, 17, (32, 1, 8, 8), generator=g), generator=g)
    losses = train_single_group(model, x, steps=4)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert all(bool(m.initialized) for m in model.modules() if isinstance(m, ActNorm))
    samples = model.sample(6, generator=seeded(1))
    assert samples.shape == (6, 1, 8, 8) and samples.min() >= -1 and samples.max() < 1


def test_glow_refuses_data_it_cannot_squeeze():
    with pytest.raises(ConfigError, match="^levels:"):
        build_family("glow", IMAGE, levels=4)  # 8×8 holds 3 squeezes at most
    with pytest.raises(ConfigError, match="^arch:"):
        build_family("glow", TOY, arch="multiscale")
    assert build_family("glow", IMAGE, arch="vector", levels=1, steps_per_level=1).arch == "vector"


@pytest.mark.parametrize("family,bad", [
    ("nice", {"n_layers": 0}), ("nice", {"prior": "laplace"}), ("maf", {"log_scale_bound": 0}),
    ("iaf", {"depth": 0}), ("planar", {"kind": "sylvester"}), ("glow", {"steps_per_level": 0}),
    ("glow", {"scale": "exp"}),
])
def test_bad_flow_configs_raise(family, bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        build(FAMILIES[family].config_cls, bad, "x")
