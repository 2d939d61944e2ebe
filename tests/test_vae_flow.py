"""Flow layers and the flow VAE: log-dets against autograd Jacobians, MADE's triangularity,
exact inverses, a flow prior that integrates to one, and honest, tightening bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from gm.core.config import ConfigError, build
from gm.flows import (
    MADE,
    FlowSequence,
    IAFLayer,
    MAFLayer,
    PlanarFlow,
    RadialFlow,
    iaf_flows,
    planar_flows,
)
from gm.models.base import load_model, save_model
from gm.models.vae_flow import VAEFlow, VAEFlowConfig
from tests.helpers import TOY, seeded, train_single_group

D = 4


@pytest.fixture(autouse=True)
def fixed_init():
    # Layers draw their initial weights from the global generator: the same ones whatever ran before.
    torch.manual_seed(0)


def perturb(module: nn.Module, std: float, seed: int = 0) -> nn.Module:
    """Random weights everywhere, so zero-initialised (identity) outputs are not trivial."""
    g = seeded(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def assert_log_det_is_jacobian(fn, z: torch.Tensor, log_det: torch.Tensor) -> None:
    """fn maps one row (D,) to (D,); log_det (B,) must be log|det ∂fn/∂z| row by row."""
    for i in range(z.shape[0]):
        sign, log_abs = torch.linalg.slogdet(jacobian(fn(i), z[i]))
        assert sign != 0
        assert log_abs.item() == pytest.approx(log_det[i].item(), abs=1e-8)


def planar_params(b: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    """Per-row (u, w, b) with wᵀu often far below -1, where û's correction matters."""
    return scale * torch.randn(b, 2 * D + 1, generator=seeded(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- layers


@pytest.mark.parametrize("amortized", [False, True])
def test_planar_log_det_is_the_jacobian(amortized):
    layer = perturb(PlanarFlow(D, amortized).double(), 1.0)
    z = torch.randn(5, D, generator=seeded(1), dtype=torch.float64)
    params = planar_params(5, 2) if amortized else None
    out, log_det = layer(z, params=params)
    assert out.shape == z.shape and log_det.shape == (5,)
    assert log_det.abs().max() > 0.05, "the layer should not be volume preserving"

    def row(i):
        return lambda v: layer(v[None], params=None if params is None else params[i:i + 1])[0][0]

    assert_log_det_is_jacobian(row, z, log_det)


def test_planar_u_hat_keeps_it_invertible():
    layer = PlanarFlow(D, amortized=True).double()
    params = planar_params(2000, 3, scale=5.0)
    u, w, _ = params.split([D, D, 1], -1)
    assert ((w * u).sum(-1) < -1).float().mean() > 0.2, "the draws should include non-invertible raw (u, w)"
    u_hat, w, _ = layer.parts(params)
    assert ((w * u_hat).sum(-1) >= -1 - 1e-12).all()  # = softplus(wᵀu) - 1, up to rounding
    # Invertible in fact: the bisection inverse recovers z, with the opposite log-det.
    z = 3 * torch.randn(2000, D, generator=seeded(4), dtype=torch.float64)
    x, log_det = layer(z, params=params)
    back, log_det_inv = layer.inverse(x, params=params)
    assert (back - z).abs().max() < 1e-8
    assert torch.allclose(log_det_inv, -log_det, atol=1e-8)


def test_planar_inverse_has_the_implicit_gradient():
    layer = perturb(PlanarFlow(D).double(), 1.0, seed=5)
    x = torch.randn(3, D, generator=seeded(6), dtype=torch.float64, requires_grad=True)
    z, _ = layer.inverse(x)
    jac_inv = jacobian(lambda v: layer.inverse(v[None])[0][0], x[0].detach())
    jac_fwd = jacobian(lambda v: layer(v[None])[0][0], z[0].detach())
    assert torch.allclose(jac_inv @ jac_fwd, torch.eye(D, dtype=torch.float64), atol=1e-8)


@pytest.mark.parametrize("amortized", [False, True])
def test_radial_log_det_is_the_jacobian(amortized):
    layer = perturb(RadialFlow(D, amortized).double(), 1.0)
    z = torch.randn(5, D, generator=seeded(1), dtype=torch.float64)
    params = 1.5 * torch.randn(5, D + 2, generator=seeded(2), dtype=torch.float64) if amortized else None
    _, log_det = layer(z, params=params)
    assert log_det.abs().max() > 0.05

    def row(i):
        return lambda v: layer(v[None], params=None if params is None else params[i:i + 1])[0][0]

    assert_log_det_is_jacobian(row, z, log_det)


def test_made_is_strictly_triangular_in_its_ordering():
    order = [2, 0, 4, 1, 3]
    # tanh: no dead ReLU units, so every allowed path carries a non-zero derivative.
    made = perturb(MADE(5, (16, 16), n_out=2, order=order, context_dim=3, activation="tanh").double(), 0.5)
    x = torch.randn(5, dtype=torch.float64, generator=seeded(0))
    h = torch.randn(3, dtype=torch.float64, generator=seeded(1))
    rank = torch.tensor(order)
    allowed = rank[None, :] < rank[:, None]  # (out d, in j): order[j] < order[d]
    for p in range(2):
        jac = jacobian(lambda v: made(v, h)[p], x)  # (D, D)
        assert (jac[~allowed] == 0).all(), f"output {p} depends on later inputs"
        assert (jac[allowed].abs() > 0).all(), "every earlier input should reach each output"
    # The context reaches every output, including the first in the ordering.
    jac_h = jacobian(lambda v: made(x, v)[0], h)  # (D, C)
    assert (jac_h.abs().sum(-1) > 0).all()


def test_made_refuses_a_bad_order_or_context():
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, (8,), order=[0, 0, 1])
    with pytest.raises(ValueError, match="context"):
        MADE(3, (8,))(torch.zeros(1, 3), torch.zeros(1, 2))


@pytest.mark.parametrize("cls", [IAFLayer, MAFLayer])
def test_autoregressive_log_det_is_the_jacobian_and_inverse_is_exact(cls):
    layer = perturb(cls(D, (16, 16), order=[3, 1, 0, 2], context_dim=2).double(), 0.4)
    z = torch.randn(4, D, generator=seeded(1), dtype=torch.float64)
    h = torch.randn(4, 2, generator=seeded(2), dtype=torch.float64)
    x, log_det = layer(z, h)
    assert log_det.abs().max() > 0.05
    assert_log_det_is_jacobian(lambda i: (lambda v: layer(v[None], h[i:i + 1])[0][0]), z, log_det)
    back, log_det_inv = layer.inverse(x, h)
    assert (back - z).abs().max() < 1e-10
    assert torch.allclose(log_det_inv, -log_det, atol=1e-10)


def test_iaf_starts_near_the_identity_and_maf_at_it():
    z = torch.randn(6, D, generator=seeded(0))
    x, log_det = IAFLayer(D, (8,))(z)
    sigma = torch.sigmoid(torch.tensor(2.0))
    assert torch.allclose(x, sigma * z) and torch.allclose(log_det, torch.full((6,), D * sigma.log().item()))
    x, log_det = MAFLayer(D, (8,))(z)
    assert torch.equal(x, z) and (log_det == 0).all()


def test_flow_sequence_sums_log_dets_splits_params_and_reverses_orders():
    torch.manual_seed(0)
    seq = perturb(iaf_flows(D, 3, (16,), context_dim=2).double(), 0.3)
    orders = [layer.made.order.tolist() for layer in seq.layers]
    assert orders == [[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]]
    z = torch.randn(5, D, generator=seeded(1), dtype=torch.float64)
    h = torch.randn(5, 2, generator=seeded(2), dtype=torch.float64)
    x, log_det = seq(z, h)
    step, total = z, torch.zeros(5, dtype=torch.float64)
    for layer in seq.layers:
        step, ld = layer(step, h)
        total = total + ld
    assert torch.allclose(x, step) and torch.allclose(log_det, total)
    back, log_det_inv = seq.inverse(x, h)
    assert (back - z).abs().max() < 1e-10 and torch.allclose(log_det_inv, -log_det)
    assert_log_det_is_jacobian(lambda i: (lambda v: seq(v[None], h[i:i + 1])[0][0]), z, log_det)

    planar = planar_flows(D, 3, amortized=True).double()
    assert planar.param_dim == 3 * (2 * D + 1)
    params = planar_params(5, 3).repeat(1, 3)[:, :planar.param_dim]
    _, ld_seq = planar(z, params=params)
    chunks = params.split(2 * D + 1, -1)
    step, total = z, 0
    for layer, p in zip(planar.layers, chunks):
        step, ld = layer(step, params=p)
        total = total + ld
    assert torch.allclose(ld_seq, total)
    # k draws per row: params (B, P) broadcast against z (k, B, D).
    zk = torch.randn(7, 5, D, generator=seeded(4), dtype=torch.float64)
    out_k, ld_k = planar(zk, params=params)
    assert out_k.shape == (7, 5, D) and ld_k.shape == (7, 5)
    assert torch.allclose(ld_k[3], planar(zk[3], params=params)[1])
    with pytest.raises(ValueError, match="context"):
        PlanarFlow(D)(z, context=h)
    assert FlowSequence()(z)[0] is z


# --------------------------------------------------------------------------- the flow prior


def flow_vae(**overrides) -> VAEFlow:
    raw = {"z_dim": 2, "hidden": 16, "depth": 1, "flow_hidden": 16, "flow_depth": 1, **overrides}
    config = build(VAEFlowConfig, raw, "test.vae_flow")
    torch.manual_seed(0)
    return VAEFlow(config, TOY)


@torch.no_grad()
def test_flow_prior_integrates_to_one_and_round_trips():
    model = flow_vae(prior_flow="maf", prior_layers=2).double()
    perturb(model.prior_flow, 0.3, seed=1)
    axis = torch.linspace(-12, 12, 481, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)  # (G², 2)
    density = model.prior_log_prob(grid).exp()
    assert (density.max() / density.min()) > 1e3
    mass = density.sum() * (axis[1] - axis[0]) ** 2
    assert mass.item() == pytest.approx(1.0, abs=2e-3)
    # Sampling inverts the density direction exactly, and the density is not N(0, I).
    u = torch.randn(64, 2, generator=seeded(2), dtype=torch.float64)
    z, log_det = model.prior_flow(u)
    back, log_det_inv = model.prior_flow.inverse(z)
    assert (back - u).abs().max() < 1e-10 and torch.allclose(log_det, -log_det_inv)
    gauss = -0.5 * (u.pow(2).sum(-1) + 2 * math.log(2 * math.pi))
    assert torch.allclose(model.prior_log_prob(z), gauss - log_det)
    assert log_det.abs().max() > 0.05


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("overrides", [
    {"posterior_flow": "planar", "posterior_layers": 4},
    {"posterior_flow": "iaf", "posterior_layers": 2, "context_dim": 4, "prior_flow": "maf"},
])
@torch.no_grad()
def test_iwae_bounds_tighten_in_k(overrides):
    model = flow_vae(**overrides)
    perturb(model, 0.3, seed=1)
    model.eval()
    x = 2 * torch.randn(4, 2, generator=seeded(0))
    reps = 300
    xr = x.repeat(reps, 1)  # (4·R, 2)
    elbo = model.elbo(xr, generator=seeded(1)).view(reps, 4)
    bounds = {k: model.iwae_bound(xr, k, generator=seeded(10 + k)).view(reps, 4) for k in (1, 4, 16, 64)}
    # L_1 is the ELBO in expectation; E L_k is non-decreasing in k (Burda et al. 2015, Thm. 1).
    se = ((elbo.var(0) + bounds[1].var(0)) / reps).sqrt()
    assert ((bounds[1].mean(0) - elbo.mean(0)).abs() < 5 * se).all()
    means = [bounds[k].mean(0) for k in (1, 4, 16, 64)]
    for lo, hi in zip(means, means[1:]):
        assert (hi >= lo - 0.02).all(), (lo, hi)
    assert (means[-1] > elbo.mean(0)).all()
    assert torch.isfinite(model.log_prob(x)).all()
    # Honest: z_dim = 2 lets quadrature give log p(x) = log ∫ p(x|z) p(z) dz, which E L_k may not
    # exceed and which L_k approaches; a wrong log q_K (e.g. the log-det's sign) breaks either.
    axis = torch.linspace(-10, 10, 401)
    grid = torch.cartesian_prod(axis, axis)[:, None, :]  # (G², 1, 2)
    log_joint = model.log_px(x, grid) + model.prior_log_prob(grid)  # (G², 4)
    log_px = torch.logsumexp(log_joint, 0) + 2 * math.log(axis[1] - axis[0])  # (4,)
    draws = model.iwae_bound(x.repeat(16, 1), 1000, generator=seeded(5)).view(16, 4)
    l1000, se = draws.mean(0), draws.std(0) / 4
    assert (l1000 <= log_px + 4 * se + 1e-3).all(), (l1000, se, log_px)
    assert ((log_px - l1000) < (log_px - elbo.mean(0)) / 2).all(), (l1000, log_px, elbo.mean(0))


def test_posterior_log_density_is_the_change_of_variables():
    # With the base's noise fixed, log q_K must equal log q_0(z_0) - Σ log|det| computed by hand.
    model = flow_vae(posterior_flow="radial", posterior_layers=3)
    x = torch.randn(5, 2, generator=seeded(0))
    z, log_q = model.posterior(x, generator=seeded(3))
    mu, logvar, params, _ = model.encode(x)
    eps = torch.randn(mu.shape, generator=seeded(3))
    z0 = mu + torch.exp(0.5 * logvar) * eps
    log_q0 = (-0.5 * (eps.pow(2) + math.log(2 * math.pi)) - 0.5 * logvar).sum(-1)
    zk, log_det = model.posterior_flow(z0, params=params)
    assert torch.allclose(z, zk) and torch.allclose(log_q, log_q0 - log_det, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    {"posterior_flow": "planar"},
    {"posterior_flow": "iaf", "prior_flow": "maf"},
    {"posterior_flow": "radial", "amortized": False, "beta": 0.5},
])
def test_vae_flow_trains_and_round_trips(overrides, tmp_path):
    model = flow_vae(lr=3e-3, iwae_k=8, **overrides)
    x = torch.randn(64, 2, generator=seeded(0)) * torch.tensor([2.0, 0.5]) + 1.0
    losses = train_single_group(model, x, 30)  # the loss itself: test_vae_flow_loss_by_hand
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    model.eval()
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert torch.equal(model.sample(6, generator=seeded(1)), loaded.sample(6, generator=seeded(1)))
    with torch.no_grad():
        lp = model.log_prob(x[:7])
        assert lp.shape == (7,) and torch.isfinite(lp).all()
        assert model.reconstruct(x[:3]).shape == (3, 2)


@pytest.mark.parametrize("overrides", [
    {"posterior_flow": "planar", "beta": 0.5},
    {"posterior_flow": "radial", "amortized": False, "beta": 2.0},
    {"posterior_flow": "iaf", "prior_flow": "maf", "beta": 0.5},
])
def test_vae_flow_loss_by_hand(overrides):
    # -log p(x|z_K) + β (log q_K(z_K|x) - log p(z_K)) on the ε the loss draws, with both log-dets from
    # autograd Jacobians: log q_K = log N(z_0; μ, σ²) - log|det ∂z_K/∂z_0| and, under a prior flow,
    # log p(z) = log N(u; 0, I) + log|det ∂u/∂z|, u its inverse of z.
    from gm.models.base import Batch

    model = perturb(flow_vae(**overrides), 0.3, seed=4)
    with torch.no_grad():
        model.obs.log_std.copy_(torch.tensor([-0.4, 0.3]))
    b, beta = 5, overrides["beta"]
    x = torch.randn(b, 2, generator=seeded(0)) * 2
    torch.manual_seed(8)
    out = model.loss(Batch(x), "vae")
    torch.manual_seed(8)
    eps = torch.randn(b, 2)
    mu, logvar, params, h = (t.detach() if t is not None else None for t in model.encode(x))
    z0 = mu + torch.exp(0.5 * logvar) * eps
    log_q0 = (-0.5 * eps ** 2 - 0.5 * math.log(2 * math.pi) - 0.5 * logvar).sum(-1)  # N(z_0; μ, σ²)
    recon, kl = [], []
    for i in range(b):
        row = slice(i, i + 1)
        flow = lambda z: model.posterior_flow(z[None], None if h is None else h[row],  # noqa: E731
                                              None if params is None else params[row])[0][0]
        zk = flow(z0[i]).detach()
        log_q = log_q0[i] - torch.linalg.slogdet(jacobian(flow, z0[i]))[1]
        inverse = lambda z: model.prior_flow.inverse(z[None])[0][0]  # noqa: E731
        u = inverse(zk).detach()
        log_p = (-0.5 * u ** 2 - 0.5 * math.log(2 * math.pi)).sum() + torch.linalg.slogdet(jacobian(inverse, zk))[1]
        mean = model.decoder(zk).detach()
        s = torch.tensor([-0.4, 0.3]).exp()
        recon.append((0.5 * ((x[i] - mean) / s) ** 2 + s.log() + 0.5 * math.log(2 * math.pi)).sum().item())
        kl.append((log_q - log_p).item())
    recon, kl = sum(recon) / b, sum(kl) / b
    assert abs(kl) > 0.1
    assert out.logs["recon"] == pytest.approx(recon, rel=1e-5)
    assert out.logs["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-5)
    assert out.loss.item() == pytest.approx(recon + beta * kl, rel=1e-5)
    assert out.logs["elbo"] == pytest.approx(-(recon + kl), rel=1e-5)


def test_flow_config_defaults_and_bounds():
    c = build(VAEFlowConfig, {}, "x")
    assert (c.posterior_flow, c.prior_flow, c.beta, c.amortized) == ("planar", "none", 1.0, True)
    for bad in ({"posterior_flow": "sylvester"}, {"posterior_layers": -1}, {"flow_hidden": 0}, {"beta": -1.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build(VAEFlowConfig, bad, "x")
    # "none" (or K = 0) is the plain Gaussian posterior.
    plain = flow_vae(posterior_flow="none")
    assert plain.posterior_flow.param_dim == 0 and len(plain.posterior_flow.layers) == 0
    assert flow_vae(posterior_layers=0).encoder[-1].out_features == 4
