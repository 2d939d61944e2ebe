"""f-GAN: the divergence table against the definitions of f, f* and the variational bound; the family."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, optimize

from gm.core.config import ConfigError, build
from gm.data.dataspec import DataSpec
from gm.models.base import Batch
from gm.models.fgan import DIVERGENCES, FGAN, Divergence, FGANConfig, generator_loss, variational_objective
from gm.core.registry import FAMILIES
from tests.helpers import DIGITS as IMAGE, TOY, toy_batch

NAMES = sorted(DIVERGENCES)
# Every f in Table 1 is normalised (f(1) = 0, so D_f(P‖P) = 0) except the GAN's, whose
# divergence is 2·JSD − log 4 (Nowozin et al., Table 1).
F_AT_1 = {"gan": -math.log(4)}



def scalar(fn, x: float) -> float:
    return float(fn(torch.tensor(x, dtype=torch.float64)))


def derivative(fn, x: float) -> float:
    u = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fn(u), u)
    return float(g)


def inside(div: Divergence) -> list[float]:
    """A handful of points well inside dom f*."""
    lo, hi = div.t_range
    if div.t_closed:
        return [lo, lo / 2, 0.0, hi / 3, hi]  # f* of TV is finite on the closed interval
    hi = min(hi, 4.0)
    lo = max(lo, -4.0)
    return [lo + (hi - lo) * a for a in (0.05, 0.3, 0.5, 0.8, 0.97)]


# --------------------------------------------------------------------------- the table


def test_table_has_the_papers_eight_rows():
    assert set(NAMES) == {"kl", "reverse_kl", "pearson", "neyman", "squared_hellinger",
                          "jensen_shannon", "gan", "total_variation"}
    assert all(name == d.name for name, d in DIVERGENCES.items())


@pytest.mark.parametrize("name", NAMES)
def test_conjugate_is_the_supremum(name):
    # f*(t) = sup_{u ∈ dom f} u·t − f(u), found numerically; the objective is concave in u,
    # hence unimodal in s = log u too, which Brent's bounded search handles.
    div = DIVERGENCES[name]
    for t in inside(div):
        if div.u_range[0] == 0.0:
            neg = lambda s: -(math.exp(s) * t - scalar(div.f, math.exp(s)))  # noqa: E731
            res = optimize.minimize_scalar(neg, bounds=(-25.0, 25.0), method="bounded",
                                           options={"xatol": 1e-11, "maxiter": 2000})
        else:
            neg = lambda u: -(u * t - scalar(div.f, u))  # noqa: E731
            res = optimize.minimize_scalar(neg, bounds=(-50.0, 50.0), method="bounded",
                                           options={"xatol": 1e-11, "maxiter": 2000})
        sup = -res.fun
        assert scalar(div.conjugate, t) == pytest.approx(sup, rel=1e-6, abs=1e-7), (name, t)


@pytest.mark.parametrize("name", NAMES)
def test_activation_maps_the_reals_into_the_conjugates_domain(name):
    div = DIVERGENCES[name]
    v = torch.cat([torch.linspace(-30, 30, 601, dtype=torch.float64),
                   torch.tensor([-30.0, -1e-3, 0.0, 1e-3, 30.0], dtype=torch.float64)])
    t = div.activation(v)
    assert div.in_domain(t).all(), (name, v[~div.in_domain(t)])
    composed = div.conjugate(t)
    assert torch.isfinite(composed).all()
    # The closed form of f*(g_f(v)) is the composition ...
    stable = div.conjugate_of_activation(v)
    middle = v.abs() <= 15  # where the composition has not yet lost its digits to rounding
    assert torch.allclose(stable[middle], composed[middle], rtol=1e-9, atol=1e-9)
    # ... and stays finite in float32 where the composition cannot (g_f rounds onto the edge).
    v32 = torch.linspace(-60, 60, 241)
    assert torch.isfinite(div.conjugate_of_activation(v32)).all()
    assert torch.isfinite(div.activation(v32)).all()
    # g_f is non-decreasing: a larger V always means "more like the data".
    assert (t.sort().values == div.activation(v.sort().values)).all()


@pytest.mark.parametrize("name", NAMES)
def test_f_is_normalised_and_f_prime_1_matches(name):
    div = DIVERGENCES[name]
    assert scalar(div.f, 1.0) == pytest.approx(F_AT_1.get(name, 0.0), abs=1e-12)
    if name == "total_variation":
        # A kink at 1: the table's 0 is the subgradient midway between the one-sided slopes ∓½.
        left, right = derivative(div.f, 1 - 1e-6), derivative(div.f, 1 + 1e-6)
        assert (left, right) == (-0.5, 0.5)
        assert div.f_prime_1 == pytest.approx((left + right) / 2)
    else:
        assert derivative(div.f, 1.0) == pytest.approx(div.f_prime_1, abs=1e-12)
    # Fenchel-Young equality at u = 1: f(1) + f*(f'(1)) = 1·f'(1).
    assert scalar(div.f, 1.0) + scalar(div.conjugate, div.f_prime_1) == pytest.approx(div.f_prime_1, abs=1e-12)


# --------------------------------------------------------------------------- the bound

# P = N(0.5, 1), Q = N(0, 1.2²): every divergence of the table is finite (Pearson χ² needs
# σ_Q² > σ_P²/2, Neyman χ² needs σ_P² > σ_Q²/2).
P, Q, Q2 = (0.5, 1.0), (0.0, 1.2), (-0.4, 1.1)
LIMITS = (-20.0, 20.0)


def log_normal(x: float, mean: float, std: float) -> float:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


def quad(fn) -> float:
    value, _ = integrate.quad(fn, *LIMITS, limit=400, points=[-2.0, 0.0, 0.5, 2.0], epsabs=1e-11, epsrel=1e-10)
    return value


def divergence(div: Divergence, p=P, q=Q) -> float:
    """D_f(P‖Q) = ∫ q f(p/q) dx."""
    return quad(lambda x: math.exp(log_normal(x, *q)) * scalar(div.f, math.exp(log_normal(x, *p) - log_normal(x, *q))))


def bound(div: Divergence, critic) -> float:
    """E_P[T] − E_Q[f*(T)] for a critic output T(x)."""
    e_p = quad(lambda x: math.exp(log_normal(x, *P)) * critic(x))
    e_q = quad(lambda x: math.exp(log_normal(x, *Q)) * scalar(div.conjugate, critic(x)))
    return e_p - e_q


def optimal_critic(div: Divergence, p=P, q=Q):
    """T*(x) = f'(p(x)/q(x)), by autograd through the table's f."""
    return lambda x: derivative(div.f, math.exp(log_normal(x, *p) - log_normal(x, *q)))


def gaussian_kl(a, b) -> float:
    """KL(N(a) ‖ N(b)) for (mean, std) pairs, closed form."""
    (m1, s1), (m2, s2) = a, b
    return math.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5


def test_divergences_are_the_named_ones():
    # ∫ q f(p/q) against independent formulas: the direction of each KL, and the constants.
    (m1, s1), (m2, s2) = P, Q
    p = lambda x: math.exp(log_normal(x, *P))  # noqa: E731
    q = lambda x: math.exp(log_normal(x, *Q))  # noqa: E731
    jsd = 0.5 * quad(lambda x: p(x) * math.log(2 * p(x) / (p(x) + q(x))) + q(x) * math.log(2 * q(x) / (p(x) + q(x))))
    bhattacharyya = math.sqrt(2 * s1 * s2 / (s1 ** 2 + s2 ** 2)) * math.exp(-(m1 - m2) ** 2 / (4 * (s1 ** 2 + s2 ** 2)))
    expected = {
        "kl": gaussian_kl(P, Q),
        "reverse_kl": gaussian_kl(Q, P),
        "pearson": quad(lambda x: p(x) ** 2 / q(x)) - 1,
        "neyman": quad(lambda x: q(x) ** 2 / p(x)) - 1,
        "squared_hellinger": 2 * (1 - bhattacharyya),
        "jensen_shannon": 2 * jsd,  # the paper's f for JS gives twice the ½-weighted JSD
        "gan": 2 * jsd - math.log(4),
        "total_variation": 0.5 * quad(lambda x: abs(p(x) - q(x))),
    }
    for name in NAMES:
        assert divergence(DIVERGENCES[name]) == pytest.approx(expected[name], rel=1e-7, abs=1e-9), name


@pytest.mark.parametrize("name", NAMES)
def test_variational_bound_is_tight_at_the_optimal_critic(name):
    div = DIVERGENCES[name]
    d = divergence(div)
    assert d > F_AT_1.get(name, 0.0) + 0.01  # P ≠ Q: above D_f(P‖P), so this is not 0 ≈ 0
    t_star = optimal_critic(div)
    for x in np.linspace(-8, 8, 17):
        assert bool(div.in_domain(torch.tensor(t_star(x), dtype=torch.float64))), (name, x)
    assert bound(div, t_star) == pytest.approx(d, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_variational_bound_is_below_the_divergence_for_other_critics(name):
    div = DIVERGENCES[name]
    d = divergence(div)
    # The optimal critic of a different pair (P, Q') stays in dom f* but is wrong for (P, Q).
    wrong = bound(div, optimal_critic(div, P, Q2))
    assert wrong < d - 1e-4, (name, wrong, d)
    # A constant critic at f'(1) bounds nothing: it gives f(1) (0 for a normalised f).
    const = bound(div, lambda x: div.f_prime_1)
    assert const == pytest.approx(F_AT_1.get(name, 0.0), abs=1e-8)
    assert const < d


@pytest.mark.parametrize("name", NAMES)
def test_variational_objective_from_raw_critic_outputs(name):
    div = DIVERGENCES[name]
    g = torch.Generator().manual_seed(0)
    v_real, v_fake = torch.randn(64, 1, generator=g, dtype=torch.float64), torch.randn(64, 1, generator=g, dtype=torch.float64)
    expected = div.activation(v_real).mean() - div.conjugate(div.activation(v_fake)).mean()
    assert variational_objective(div, v_real, v_fake).item() == pytest.approx(expected.item(), rel=1e-12)


# --------------------------------------------------------------------------- the family

SMALL = {"hidden": 16, "depth": 2, "z_dim": 2}


def small_fgan(data: DataSpec = TOY, **overrides) -> FGAN:
    config = build(FGANConfig, {**SMALL, **overrides}, "test.fgan")
    torch.manual_seed(0)
    return FGAN(config, data)


def test_fgan_is_registered_with_its_config():
    assert FAMILIES["fgan"] is FGAN and FGAN.config_cls is FGANConfig
    c = FGANConfig()
    assert (c.divergence, c.generator_loss) == ("jensen_shannon", "alternative")
    assert set(typing.get_args(typing.get_type_hints(FGANConfig)["divergence"])) == set(DIVERGENCES)


@pytest.mark.parametrize("kind", ["minimax", "alternative"])
@pytest.mark.parametrize("name", NAMES)
def test_fgan_builds_and_steps_with_every_divergence(name, kind):
    model = small_fgan(divergence=name, generator_loss=kind)
    groups = {g.name: g for g in model.step_groups()}
    assert set(groups) == {"critic", "gen"}
    for group in ("critic", "gen"):
        opt = groups[group].make_optimizer()
        before = [p.detach().clone() for p in groups[group].params]
        out = model.loss(toy_batch(), group)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss)
        assert all(type(v) is float and math.isfinite(v) for v in out.logs.values()), out.logs
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.after_step(group)
        assert any(not torch.equal(a, p) for a, p in zip(before, groups[group].params))
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "divergence" in model.loss(toy_batch(), "critic").logs


@pytest.mark.parametrize("name", NAMES)
def test_fgan_losses_equal_the_variational_objective_by_hand(name):
    model = small_fgan(divergence=name, generator_loss="minimax")
    div = DIVERGENCES[name]
    batch = toy_batch(b=64, seed=1)
    torch.manual_seed(3)
    out = model.loss(batch, "critic")
    torch.manual_seed(3)  # the same fakes, drawn the way loss() draws them
    with torch.no_grad():
        fake = model.generate(64)
        v_real, v_fake = model.critic_forward(batch.x)[0], model.critic_forward(fake)[0]  # (B, 1) each
    assert v_real.shape == (64, 1)
    by_hand = div.activation(v_real).mean() - div.conjugate(div.activation(v_fake)).mean()  # F
    assert out.loss.item() == pytest.approx(-by_hand.item(), rel=1e-5, abs=1e-6)
    assert out.logs["divergence"] == pytest.approx(by_hand.item(), rel=1e-5, abs=1e-6)

    for kind, expected in (("minimax", -div.conjugate(div.activation(v_fake)).mean()),
                           ("alternative", -div.activation(v_fake).mean())):
        gen_model = small_fgan(divergence=name, generator_loss=kind)
        torch.manual_seed(3)
        gen = gen_model.loss(batch, "gen").loss.item()
        assert gen == pytest.approx(expected.item(), rel=1e-5, abs=1e-6), kind


def test_alternative_loss_for_gan_is_the_non_saturating_gan_loss():
    # Nowozin et al., §3.2: with the GAN row, maximising E_Q g_f(V) = E_Q log D is -log D(G(z)).
    v = torch.linspace(-50, 50, 101).view(-1, 1)
    assert torch.allclose(generator_loss(DIVERGENCES["gan"], v, "alternative"), F.softplus(-v).mean())
    assert torch.allclose(generator_loss(DIVERGENCES["gan"], v, "minimax"), -F.softplus(v).mean())


@pytest.mark.parametrize("name", NAMES)
def test_fgan_losses_stay_finite_where_the_critic_saturates(name):
    model = small_fgan(divergence=name)
    for bias in (-40.0, 40.0):
        with torch.no_grad():
            model.critic.head.weight.zero_()
            model.critic.head.bias.fill_(bias)  # V ≡ bias, far out on both sides
        for group in ("critic", "gen"):
            assert torch.isfinite(model.loss(toy_batch(), group).loss), (name, bias, group)


def test_fgan_on_images_and_conditional():
    model = small_fgan(IMAGE, divergence="squared_hellinger", conditional=True)
    g = torch.Generator().manual_seed(0)
    batch = Batch(x=IMAGE.to_model(torch.randint(0, 17, (8, 1, 8, 8), generator=g), generator=g),
                  y=torch.randint(0, 10, (8,), generator=g))
    for group in ("critic", "gen"):
        assert torch.isfinite(model.loss(batch, group).loss)
    assert model.sample(3, condition=torch.tensor([0, 1, 2])).shape == (3, 1, 8, 8)


@pytest.mark.parametrize("key,value", [("divergence", "bogus"), ("divergence", "js"),
                                       ("generator_loss", "non_saturating")])
def test_unknown_divergence_or_loss_is_a_config_error(key, value):
    with pytest.raises(ConfigError, match=key):
        build(FGANConfig, {key: value}, "x")


# --------------------------------------------------------------------------- mode seeking


def test_mode_seeking_forward_kl_covers_reverse_kl_seeks(tmp_path):
    from gm.figures.mode_seeking import plot, run

    result = run(seed=0, steps=200)  # a fifth of the default budget
    (kl_mu, kl_sigma), (rkl_mu, rkl_sigma) = result["kl"]["fitted"], result["reverse_kl"]["fitted"]
    assert kl_sigma > rkl_sigma
    assert abs(rkl_mu) > 1
    # Closer: forward KL straddles both modes, reverse KL sits on one of them.
    assert abs(kl_mu) < 0.6 and kl_sigma > 1.5, (kl_mu, kl_sigma)
    assert abs(rkl_mu) > 1.7 and 0.3 < rkl_sigma < 0.8, (rkl_mu, rkl_sigma)
    # The exact optima: moment matching (0, √(4 + ¼)) for KL(P‖Q), a mode for KL(Q‖P).
    assert result["kl"]["exact"] == pytest.approx((0.0, math.sqrt(4.25)), abs=1e-3)
    assert abs(result["reverse_kl"]["exact"][0]) == pytest.approx(2.0, abs=0.01)
    assert result["reverse_kl"]["exact"][1] == pytest.approx(0.5, abs=0.01)
    # The exact optimum of reverse KL ≈ log 2: P has half its mass on Q's mode.
    assert result["reverse_kl"]["divergence_exact"] == pytest.approx(math.log(2), abs=0.01)
    for r in result.values():
        assert r["divergence_exact"] <= r["divergence_fitted"] + 1e-9
    path = plot(result, tmp_path / "mode_seeking.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
