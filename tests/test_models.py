"""Model families: the contract for every registered family, closed forms where theory gives one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gm.models  # noqa: F401  (fills the registry)
from gm.core.config import ConfigError, build
from gm.data.dataspec import DataSpec
from gm.models.base import Batch, GenerativeModel, load_model, save_model
from gm.models.gan import GANConfig, generator_loss
from gm.models.realnvp import RealNVPConfig
from gm.models.vae import VAE, VAEConfig, gaussian_kl
from gm.models.wgan_gp import WGANGPConfig, gradient_penalty
from gm.nn.mlp import mlp
from gm.core.numerics import normal_log_prob
from gm.core.registry import FAMILIES as REGISTRY
from tests.helpers import DIGITS as IMAGE, TOY, make_batch, perturb, seeded, train_steps

SPECS = {"toy": TOY, "image": IMAGE}
FAMILIES = sorted(REGISTRY)

# Capacity knobs every family has; extra knobs only where a family's default would be slow.
SMALL = {"hidden": 32, "depth": 2}
SMALL_EXTRA = {"realnvp": {"n_layers": 4}, "vae": {"iwae_k": 8}, "vae_flow": {"iwae_k": 8},
               "catvae": {"iwae_k": 8, "n_latent": 4, "n_categories": 4}}


def small_model(family: str, data: DataSpec, **overrides) -> GenerativeModel:
    cls = REGISTRY[family]
    config = build(cls.config_cls, {**SMALL, **SMALL_EXTRA.get(family, {}), **overrides}, f"test.{family}")
    torch.manual_seed(0)
    return cls(config, data)


# --------------------------------------------------------------------------- every family

registry_cases = pytest.mark.parametrize("family,spec_name", [(f, s) for f in FAMILIES for s in SPECS])


@registry_cases
def test_losses_are_finite_scalars_with_float_logs(family, spec_name):
    data = SPECS[spec_name]
    model = small_model(family, data)
    groups = model.step_groups()
    assert groups, "a model needs at least one step group"
    assert len({g.name for g in groups}) == len(groups), "group names must be unique"
    for group in groups:
        assert group.repeats >= 1 and group.lr > 0
        out = model.loss(make_batch(data), group.name)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss)
        assert out.loss.requires_grad, f"{group.name}: loss is not differentiable"
        for key, value in out.logs.items():
            assert type(value) is float and math.isfinite(value), f"{group.name}.{key} = {value!r}"


@registry_cases
def test_every_trainable_parameter_is_in_a_group(family, spec_name):
    model = small_model(family, SPECS[spec_name])
    grouped = {id(p) for g in model.step_groups() for p in g.params}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in grouped]
    assert not missing, f"never trained: {missing}"


@registry_cases
def test_sample_shape_and_determinism(family, spec_name):
    data = SPECS[spec_name]
    model = small_model(family, data)
    torch.manual_seed(1)
    a = model.sample(5, generator=seeded(7))
    torch.manual_seed(2)  # a different global state must not matter: all noise comes from `generator`
    b = model.sample(5, generator=seeded(7))
    c = model.sample(5, generator=seeded(8))
    assert a.shape == (5, *data.shape)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@registry_cases
def test_save_load_round_trip(family, spec_name, tmp_path):
    data = SPECS[spec_name]
    model = small_model(family, data)
    train_steps(model, lambda: make_batch(data), steps=1)  # weights away from their initial values
    model.eval()
    loaded = load_model(save_model(model, tmp_path / "model"))
    # conv families step in channels-last memory format; a loaded model is contiguous: compare like with like
    model.to(memory_format=torch.contiguous_format)
    assert type(loaded) is type(model) and loaded.config == model.config and loaded.data == data
    assert torch.equal(model.sample(4, generator=seeded(3)), loaded.sample(4, generator=seeded(3)))
    if model.likelihood is not None:
        x = make_batch(data, b=6).x
        torch.manual_seed(0)  # bounds may be stochastic (importance samples)
        lp = model.log_prob(x)
        torch.manual_seed(0)
        assert torch.equal(lp, loaded.log_prob(x))


@registry_cases
def test_one_step_changes_only_its_group(family, spec_name):
    data = SPECS[spec_name]
    model = small_model(family, data)
    for group in model.step_groups():
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        own = {id(p) for p in group.params}
        opt = group.make_optimizer()
        out = model.loss(make_batch(data), group.name)
        opt.zero_grad()
        out.loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in group.params), \
            f"{group.name}: no gradient reaches the group's parameters"
        opt.step()
        model.after_step(group.name)
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed, f"{group.name}: the step changed nothing"
        foreign = [n for n in changed if id(dict(model.named_parameters())[n]) not in own]
        assert not foreign, f"{group.name}: the step changed other groups' parameters {foreign}"


@registry_cases
def test_log_prob_shape(family, spec_name):
    data = SPECS[spec_name]
    model = small_model(family, data)
    x = make_batch(data, b=7).x
    if model.likelihood is None:
        with pytest.raises(NotImplementedError):
            model.log_prob(x)
        return
    assert model.likelihood in ("exact", "bound")
    lp = model.log_prob(x)
    assert lp.shape == (7,) and torch.isfinite(lp).all()


@pytest.mark.parametrize("family", sorted(REGISTRY))
def test_discrete_samples_lie_in_model_space(family):
    model = small_model(family, IMAGE)
    perturb(model, 0.5)  # push outputs well beyond [-1, 1) before squashing/clamping
    x = model.sample(64, generator=seeded(0))
    assert x.min() >= -1 and x.max() < 1


@pytest.mark.parametrize("family", sorted(REGISTRY))
def test_condition_is_refused_by_unconditional_models(family):
    model = small_model(family, IMAGE)
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, condition=torch.zeros(2, dtype=torch.long))


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("cls,bad", [
    (GANConfig, {"loss": "bogus"}),
    (GANConfig, {"n_critic": 0}),
    (GANConfig, {"betas": [0.5, 1.0]}),
    (WGANGPConfig, {"gp_weight": -1.0}),
    (WGANGPConfig, {"n_critic": 0}),
    (VAEConfig, {"beta": -0.5}),
    (VAEConfig, {"iwae_k": 0}),
    (RealNVPConfig, {"weight_decay": -1e-4}),
    (RealNVPConfig, {"n_layers": 0}),
    (RealNVPConfig, {"hidden": 0}),
    (VAEConfig, {"depth": 0}),
    (WGANGPConfig, {"lr_critic": 0}),
    (GANConfig, {"no_such_key": 1}),
])
def test_bad_configs_raise(cls, bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        build(cls, bad, "x")


def test_paper_defaults():
    wgan = build(WGANGPConfig, {}, "x")
    assert (wgan.gp_weight, wgan.n_critic, wgan.lr_critic, wgan.lr_gen, wgan.betas) == (10.0, 5, 1e-4, 1e-4, (0.0, 0.9))
    gan = build(GANConfig, {}, "x")
    assert (gan.loss, gan.lr_gen, gan.lr_critic, gan.betas, gan.n_critic) == ("non_saturating", 2e-4, 2e-4, (0.5, 0.999), 1)
    assert build(VAEConfig, {}, "x").beta == 1.0


def test_step_group_schedules():
    gan = small_model("gan", TOY, n_critic=3)
    assert [(g.name, g.repeats, g.betas) for g in gan.step_groups()] == [("critic", 3, (0.5, 0.999)),
                                                                           ("gen", 1, (0.5, 0.999))]
    wgan = small_model("wgan_gp", TOY)
    assert [(g.name, g.repeats, g.betas) for g in wgan.step_groups()] == [("critic", 5, (0.0, 0.9)),
                                                                            ("gen", 1, (0.0, 0.9))]
    flow = small_model("realnvp", TOY, weight_decay=1e-5)
    assert [(g.name, g.weight_decay) for g in flow.step_groups()] == [("flow", 1e-5)]


def test_mlp_depth_and_output_activation():
    net = mlp(3, 5, hidden=7, depth=2, activation="tanh", out_activation="tanh")
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 7), (7, 7), (7, 5)]
    assert isinstance(net[-1], nn.Tanh)
    assert len([m for m in mlp(3, 5, 7, 0) if isinstance(m, nn.Linear)]) == 1
    with pytest.raises(ValueError):
        mlp(3, 5, 7, 1, activation="swish")


# --------------------------------------------------------------------------- GAN


def test_gan_generator_losses_closed_form():
    # Independent references in float64: -log σ(l) and log(1 - σ(l)).
    for value in torch.linspace(-10, 10, 41, dtype=torch.float64):
        logit = value.float().reshape(1, 1).requires_grad_(True)
        sig = torch.sigmoid(value)
        ns = generator_loss(logit, "non_saturating")
        mm = generator_loss(logit, "minimax")
        assert ns.item() == pytest.approx(-torch.log(sig).item(), rel=1e-5, abs=1e-6)
        assert mm.item() == pytest.approx(torch.log1p(-sig).item(), rel=1e-5, abs=1e-6)
        # The relationship: ns - (-mm) = -log σ(l) + log(1 - σ(l)) = -l.
        assert (ns + mm).item() == pytest.approx(-value.item(), abs=1e-4)
        # Gradients w.r.t. the logit: -(1 - σ(l)) for non-saturating, -σ(l) for minimax.
        (g_ns,) = torch.autograd.grad(ns, logit)
        (g_mm,) = torch.autograd.grad(mm, logit)
        assert g_ns.item() == pytest.approx(-(1 - sig).item(), abs=1e-6)
        assert g_mm.item() == pytest.approx(-sig.item(), abs=1e-6)
    # Saturated discriminator: finite values (softplus, not log of a rounded σ).
    far = torch.tensor([[-60.0], [60.0]])
    assert torch.isfinite(generator_loss(far, "minimax")) and torch.isfinite(generator_loss(far, "non_saturating"))
    assert generator_loss(torch.tensor([[60.0]]), "minimax").item() == pytest.approx(-60.0)


class ConstantLogit(nn.Module):
    """A discriminator whose logit is fixed, but still a function of x (so gradients flow to G).

    Stands in for the critic module, which returns (output, features)."""

    def __init__(self, logit: float):
        super().__init__()
        self.logit = logit

    def forward(self, x):
        return torch.full((x.shape[0], 1), self.logit) + 0 * x.sum(1, keepdim=True), x


@pytest.mark.parametrize("kind", ["non_saturating", "minimax"])
@pytest.mark.parametrize("logit", [-3.0, 0.5])
def test_gan_model_losses_at_fixed_discriminator(kind, logit):
    model = small_model("gan", TOY, loss=kind)
    model.critic = ConstantLogit(logit)
    s = torch.sigmoid(torch.tensor(logit, dtype=torch.float64)).item()
    gen = model.loss(make_batch(TOY), "gen").loss.item()
    expected = -math.log(s) if kind == "non_saturating" else math.log(1 - s)
    assert gen == pytest.approx(expected, rel=1e-5)
    disc = model.loss(make_batch(TOY), "critic").loss.item()
    assert disc == pytest.approx(-math.log(s) - math.log(1 - s), rel=1e-5)


# --------------------------------------------------------------------------- WGAN-GP


@pytest.mark.parametrize("w_norm", [2.5, 0.4])
def test_gradient_penalty_linear_critic(w_norm):
    torch.manual_seed(0)
    critic = nn.Linear(5, 1)
    with torch.no_grad():
        w = torch.randn(5)
        critic.weight.copy_((w / w.norm() * w_norm)[None])
    real, fake = torch.randn(64, 5), 3 * torch.randn(64, 5)
    penalty, norms = gradient_penalty(critic, real, fake)
    assert torch.allclose(norms, torch.full((64,), w_norm), atol=1e-5)  # ‖∇D‖ = ‖w‖ everywhere
    assert penalty.item() == pytest.approx((w_norm - 1) ** 2, rel=1e-5)
    # The penalty is trained: d/dw (‖w‖ - 1)² = 2(‖w‖ - 1) w / ‖w‖.
    penalty.backward()
    expected = 2 * (w_norm - 1) * critic.weight.detach() / w_norm
    assert torch.allclose(critic.weight.grad, expected, atol=1e-5)


def test_gradient_penalty_evaluates_at_interpolates():
    # D(x) = ½‖x‖² has ∇D(x̂) = x̂, so the norms reveal where the penalty was evaluated.
    torch.manual_seed(0)
    real, fake, eps = torch.randn(16, 3), torch.randn(16, 3), torch.rand(16)
    _, norms = gradient_penalty(lambda x: 0.5 * x.pow(2).sum(1, keepdim=True), real, fake, eps)
    expected = (eps[:, None] * real + (1 - eps[:, None]) * fake).norm(dim=1)
    assert torch.allclose(norms, expected, atol=1e-5)


def test_wgan_gp_critic_loss_includes_weighted_penalty():
    # L = -(E D(x_r) - E D(x_g)) + λ E (‖∇D(x̂)‖ - 1)², by hand (the penalty's gradient by autograd)
    # on the z and ε the loss draws from the global stream: z for the fakes, then one ε per sample.
    batch = make_batch(TOY)
    for gp_weight in (0.0, 10.0):
        model = small_model("wgan_gp", TOY, gp_weight=gp_weight)
        torch.manual_seed(5)
        out = model.loss(batch, "critic")
        torch.manual_seed(5)
        fake = model.gen(torch.randn(32, model.config.z_dim)).detach()
        eps = torch.rand(32, 1)
        x_hat = (eps * batch.x + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(model.critic(x_hat)[0].sum(), x_hat)
        gp = ((grad.norm(dim=1) - 1) ** 2).mean().item()
        w = (model.critic(batch.x)[0].mean() - model.critic(fake)[0].mean()).item()
        assert gp > 0.1  # the initial critic is far from 1-Lipschitz: the term is visible
        assert out.logs["gp"] == pytest.approx(gp, rel=1e-5)
        assert out.logs["wasserstein"] == pytest.approx(w, rel=1e-5, abs=1e-6)
        assert out.loss.item() == pytest.approx(-w + gp_weight * gp, rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- VAE


def test_gaussian_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    std = torch.exp(0.5 * logvar)
    eps = torch.randn(200_000, 4, 3, dtype=torch.float64)
    z = mu + std * eps
    log_ratio = (normal_log_prob(z, mu, std.log()) - normal_log_prob(z)).sum(-1)  # (N, 4)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(eps.shape[0])
    analytic = gaussian_kl(mu, logvar).sum(-1)  # (4,)
    assert ((mc - analytic).abs() < 5 * se + 1e-6).all(), (mc, analytic, se)


def fixed_vae(z_dim: int = 2) -> VAE:
    model = small_model("vae", TOY, z_dim=z_dim, hidden=16)
    perturb(model, 0.3, seed=1)  # an untrained but not degenerate encoder/decoder
    return model.eval()


def test_vae_loss_is_recon_plus_beta_kl():
    # Everything by hand in float64 on the same ε the loss draws: the encoder's μ, log σ² and the
    # decoder's mean come from the networks; the Gaussian log-density, the KL and their sum do not.
    beta, b, z_dim = 0.25, 8, 3
    model = small_model("vae", TOY, beta=beta, z_dim=z_dim, hidden=16)
    perturb(model, 0.3, seed=2)  # an encoder far from N(0, I), so the KL is not ~0
    with torch.no_grad():
        model.obs.log_std.copy_(torch.tensor([-0.5, 0.4]))  # a decoder σ that differs per dimension
    x = make_batch(TOY, b=b).x  # (8, 2)
    torch.manual_seed(11)
    out = model.loss(Batch(x), "vae")
    torch.manual_seed(11)
    eps = torch.randn(b, z_dim).double()  # the reparameterisation noise the loss drew
    with torch.no_grad():
        mu, logvar = model.encoder(x).double().chunk(2, dim=-1)  # (B, Z) each
        sigma = torch.exp(0.5 * logvar)
        mean = model.decoder((mu + sigma * eps).float()).double()  # (B, 2): the Gaussian head's mean
    xd, s = x.double(), torch.tensor([-0.5, 0.4], dtype=torch.float64).exp()
    # -log N(x; m, s²) = ½((x - m)/s)² + log s + ½ log 2π, summed over D, batch mean.
    recon = (0.5 * ((xd - mean) / s) ** 2 + s.log() + 0.5 * math.log(2 * math.pi)).sum(1).mean().item()
    # KL(N(μ, σ²) ‖ N(0, 1)) = -log σ + (σ² + μ²)/2 - ½, summed over Z, batch mean.
    kl = (-sigma.log() + (sigma ** 2 + mu ** 2) / 2 - 0.5).sum(1).mean().item()
    assert kl > 0.5 and recon > 0.5  # both terms matter at the tolerance below
    assert out.logs["recon"] == pytest.approx(recon, rel=1e-5)
    assert out.logs["kl"] == pytest.approx(kl, rel=1e-5)
    assert out.loss.item() == pytest.approx(recon + beta * kl, rel=1e-5)
    assert out.logs["loss"] == pytest.approx(recon + beta * kl, rel=1e-5)
    assert out.logs["elbo"] == pytest.approx(-(recon + kl), rel=1e-5)  # the β = 1 ELBO, whatever β trains


@torch.no_grad()
def test_iwae_k1_equals_elbo_in_expectation():
    model = fixed_vae()
    x = make_batch(TOY, b=4).x.repeat(20_000, 1)  # (4·R, 2): many draws per row
    l1 = model.iwae_bound(x, 1, generator=seeded(0)).view(20_000, 4)
    elbo = model.elbo(x, generator=seeded(1)).view(20_000, 4)
    diff = l1.mean(0) - elbo.mean(0)
    se = (l1.var(0) / 20_000 + elbo.var(0) / 20_000).sqrt()
    assert (diff.abs() < 5 * se).all(), (diff, se)


@torch.no_grad()
def test_iwae_bounds_tighten_towards_log_likelihood():
    # z_dim = 1 lets quadrature give the true log p(x) = log ∫ p(x|z) p(z) dz.
    model = fixed_vae(z_dim=1)
    x = make_batch(TOY, b=4).x  # (4, 2)
    z = torch.linspace(-12, 12, 24_001).view(-1, 1, 1)  # (G, 1, 1)
    log_joint = model.log_px(x, z) + normal_log_prob(z).sum(-1)  # (G, 4)
    log_px = torch.logsumexp(log_joint, 0) + math.log(24 / 24_000)  # (4,)

    reps = 200
    xr = x.repeat(reps, 1)
    elbo = model.elbo(xr, generator=seeded(0)).view(reps, 4).mean(0)
    l1 = model.iwae_bound(xr, 1, generator=seeded(1)).view(reps, 4).mean(0)
    l64 = model.iwae_bound(xr, 64, generator=seeded(2)).view(reps, 4).mean(0)
    draws = model.iwae_bound(x.repeat(16, 1), 2000, generator=seeded(3)).view(16, 4)
    l2000, se = draws.mean(0), draws.std(0) / 4  # the mean of 16 draws and its standard error
    assert (l64 > elbo).all() and (l64 > l1).all()
    assert (l2000 > l1).all() and (l2000 >= l64 - 0.02).all()
    # A lower bound in expectation: E L_k <= log p(x), so the mean may exceed it by noise only.
    assert (l2000 <= log_px + 4 * se + 1e-3).all(), (l2000, se, log_px)
    assert ((log_px - l2000) < (log_px - elbo) / 2).all(), "L_2000 should close most of the ELBO's gap"


@torch.no_grad()
def test_iwae_is_chunked_exactly(monkeypatch):
    # The running log-sum-exp over chunks must equal one log-mean-exp over all k samples.
    # torch.randn's stream depends on the tensor size, so feed both runs the same noise pool.
    import gm.models._latent as latent_module

    model = fixed_vae()
    x = make_batch(TOY, b=3).x
    pool = torch.randn(50 * 3 * model.config.z_dim, generator=seeded(4))

    def run(chunk_elements: int) -> torch.Tensor:
        used = [0]

        def pooled_randn(shape, generator=None, device=None):
            n = math.prod(shape)
            out = pool[used[0]:used[0] + n].view(shape)
            used[0] += n
            return out

        monkeypatch.setattr(latent_module, "randn", pooled_randn)
        monkeypatch.setattr(latent_module, "IWAE_CHUNK_ELEMENTS", chunk_elements)
        bound = model.iwae_bound(x, 50)
        assert used[0] == pool.numel()
        return bound

    whole = run(1 << 22)
    chunked = run(3 * 16 * 7)  # 3 rows × width 16: chunks of 7 samples
    assert torch.allclose(whole, chunked, atol=1e-5)
    # And the same number by brute force on the same noise.
    mu, logvar = model.encode(x)
    eps = pool.view(50, 3, -1)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_w = (model.log_px(x, z) + normal_log_prob(z).sum(-1)
             - normal_log_prob(z, mu, 0.5 * logvar).sum(-1))  # (50, 3)
    assert torch.allclose(whole, log_w.double().exp().mean(0).log().float(), atol=1e-5)


def test_vae_decoder_log_std_floor():
    model = small_model("vae", TOY, min_log_std=-3.0)
    with torch.no_grad():
        model.obs.log_std.fill_(-10.0)
    assert (model.obs.floored_log_std() == -3.0).all()
    model.after_step("vae")
    assert (model.obs.log_std == -3.0).all()


@pytest.mark.parametrize("family", sorted(REGISTRY))
def test_every_family_has_a_search_space_that_builds(family):
    from gm.training.experiment import ExperimentConfig, TrainParams
    from tune.spaces import SPACES
    from tune.sweep import check_space

    cls = REGISTRY[family]
    exp = ExperimentConfig(name="x", family=family, dataset="d", model=build(cls.config_cls, {}, "m"),
                           train=TrainParams())
    space = SPACES.get_or_fail(family)()
    assert check_space(space, exp, "space") == space  # every knob a real field, every end in range
