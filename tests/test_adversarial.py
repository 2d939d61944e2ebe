"""The adversarial base: WGAN clipping, Cramér GAN, the stabilisers, cGAN, DCGAN backbones, diagnostics.

The registry-wide contract (finite losses, groups, sampling, save/load) is in test_models.py;
here are closed forms and the behaviour each switch promises.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gm.models  # noqa: F401  (fills the registry)
from gm.core.config import ConfigError, build
from gm.data.dataspec import DataSpec
from gm.models._adversarial import (
    AdversarialModel,
    MinibatchDiscrimination,
    critic_grad_norms,
    feature_matching_loss,
    minibatch_features,
)
from gm.models.base import Batch
from gm.models.cramer import CramerConfig, cramer_critic, energy_distance, generator_energy
from gm.models.gan import discriminator_loss
from gm.models.wgan import WGANConfig
from gm.nn.dcgan import DCGANCritic, DCGANGenerator
from gm.core.registry import FAMILIES
from tune.spaces import SPACES
from tests.helpers import DIGITS, TOY, make_batch, seeded, train_steps

LABELLED = DataSpec(shape=(2,), kind="toy", num_classes=2)
MNIST = DataSpec(shape=(1, 28, 28), kind="image", num_classes=10, levels=256)
ADVERSARIAL = sorted(f for f, cls in FAMILIES.items() if issubclass(cls, AdversarialModel))
MINE = ["cramer", "gan", "wgan", "wgan_gp"]  # the families defined next to the base




def small(family: str, data: DataSpec = TOY, **overrides) -> AdversarialModel:
    cls = FAMILIES[family]
    config = build(cls.config_cls, {"hidden": 16, "depth": 2, **overrides}, f"test.{family}")
    torch.manual_seed(0)
    return cls(config, data)


def toy_batch(b: int = 32, seed: int = 0, labelled: bool = False) -> Batch:
    return make_batch(LABELLED if labelled else TOY, b, seed)


def step(model: AdversarialModel, group: str, batch: Batch, opt: torch.optim.Optimizer | None = None,
         after: bool = True) -> torch.optim.Optimizer:
    (g,) = [g for g in model.step_groups() if g.name == group]
    opt = opt or g.make_optimizer()
    out = model.loss(batch, group)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    if after:
        model.after_step(group)
    return opt


def test_every_adversarial_family_is_found():
    assert set(MINE) <= set(ADVERSARIAL)


# --------------------------------------------------------------------------- WGAN


def test_wgan_paper_defaults():
    c = build(WGANConfig, {}, "x")
    assert (c.optimizer, c.lr_critic, c.lr_gen, c.clip, c.n_critic) == ("rmsprop", 5e-5, 5e-5, 0.01, 5)
    with pytest.raises(ConfigError, match="clip"):
        build(WGANConfig, {"clip": 0.0}, "x")
    groups = small("wgan").step_groups()
    assert [(g.name, g.optimizer, g.repeats) for g in groups] == [("critic", "rmsprop", 5), ("gen", "rmsprop", 1)]


def test_wgan_clips_every_critic_parameter_after_a_critic_step():
    model = small("wgan", lr_critic=1.0, clip=0.01)  # a huge step: weights leave [-c, c] before clipping
    opt = step(model, "critic", toy_batch(), after=False)
    params = list(model.critic.parameters())
    assert max(p.abs().max().item() for p in params) > 0.01, "the test needs weights outside [-c, c]"
    gen_before = [p.detach().clone() for p in model.gen.parameters()]
    model.after_step("critic")
    for p in params:
        assert p.abs().max().item() <= 0.01
    assert all(torch.equal(a, b) for a, b in zip(gen_before, model.gen.parameters())), "only the critic is clipped"
    step(model, "critic", toy_batch(seed=1), opt)
    assert all(p.abs().max().item() <= 0.01 for p in params)


def test_wgan_critic_loss_is_the_negative_wasserstein_estimate():
    model = small("wgan", label_smoothing=0.3)  # no real target: smoothing must change nothing
    batch = toy_batch()
    torch.manual_seed(3)
    out = model.loss(batch, "critic")
    torch.manual_seed(3)
    fake = model.generate(32)
    d_real, d_fake = model.critic_forward(batch.x)[0].mean(), model.critic_forward(fake)[0].mean()
    assert out.loss.item() == pytest.approx((d_fake - d_real).item(), rel=1e-5, abs=1e-7)
    assert out.logs["wasserstein"] == pytest.approx((d_real - d_fake).item(), rel=1e-5, abs=1e-7)


# --------------------------------------------------------------------------- gradient penalty


def test_gradient_penalty_of_a_conditional_linear_critic():
    # test_models.py covers gradient_penalty itself; this checks the model wires it through the
    # critic as it sees labels: D(x, y) = w·x + v·onehot(y) + b has ∇ₓD = w for every label.
    model = small("wgan_gp", LABELLED, depth=1, conditional=True, gp_weight=1.0)
    lin = nn.Linear(4, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0, 0.7, -2.0]]))  # ‖w‖ = 5 over the x part
    model.critic.body = nn.Identity()
    model.critic.head = lin
    batch = toy_batch(labelled=True)
    out = model.loss(batch, "critic")
    assert out.logs["gp"] == pytest.approx((5.0 - 1.0) ** 2, rel=1e-5)
    assert out.logs["grad_norm"] == pytest.approx(5.0, rel=1e-5)


# --------------------------------------------------------------------------- Cramér GAN


def test_cramer_critic_hand_computed():
    h_x = torch.tensor([[3.0, 4.0], [3.0, 4.0], [1.0, 0.0]])
    h_ref = torch.tensor([[0.0, 0.0], [3.0, 0.0], [-2.0, 4.0]])
    # ‖h(x) - h(x')‖ - ‖h(x)‖: 5 - 5, 4 - 5, 5 - 1
    assert cramer_critic(h_x, h_ref).tolist() == pytest.approx([0.0, -1.0, 4.0])


def test_cramer_generator_energy_hand_computed():
    h_r = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    h_g = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    h_g2 = torch.tensor([[0.0, 4.0], [1.0, 2.0]])
    # row 0: 5 + 4 - 3 = 6; row 1: 0 + 1 - 1 = 0
    assert generator_energy(h_r, h_g, h_g2).item() == pytest.approx(3.0)


def test_energy_distance_vanishes_for_equal_distributions():
    g = seeded(0)
    n, k = 200_000, 3
    a, a2, b, b2 = (torch.randn(n, k, generator=g, dtype=torch.float64) for _ in range(4))
    assert abs(energy_distance(a, a2, b, b2).item()) < 0.01
    # The generator's loss is the energy distance plus the real-real term E‖a - a'‖.
    real_real = (a - a2).norm(dim=1).mean()
    assert abs((generator_energy(a, b, b2) - real_real).item()) < 0.02
    # Against a shifted distribution: 2E‖A - B‖ - E‖A - A'‖ - E‖B - B'‖ is clearly positive.
    assert energy_distance(a, a2, b + 1.0, b2 + 1.0).item() > 0.3


def test_cramer_losses_follow_algorithm_1():
    model = small("cramer", h_dim=6, gp_weight=10.0)
    assert model.critic_forward(toy_batch().x)[0].shape == (32, 6)  # h: x -> R^h_dim
    batch = toy_batch()
    torch.manual_seed(7)
    out = model.loss(batch, "gen")
    torch.manual_seed(7)
    x_g, x_g2 = model.generate(32), model.generate(32)  # the base's fake, then the hook's second draw
    assert not torch.allclose(x_g, x_g2), "two independent generator samples"
    h = lambda x: model.critic_forward(x)[0]  # noqa: E731
    expected = ((h(batch.x) - h(x_g)).norm(dim=1) + (h(batch.x) - h(x_g2)).norm(dim=1)
                - (h(x_g) - h(x_g2)).norm(dim=1)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)

    torch.manual_seed(8)
    crit = model.loss(batch, "critic")
    torch.manual_seed(8)
    x_g, x_g2 = model.generate(32), model.generate(32)
    f = lambda x: (h(x) - h(x_g2)).norm(dim=1) - h(x).norm(dim=1)  # noqa: E731
    surrogate = f(batch.x).mean() - f(x_g).mean()
    # The penalty on f itself (h_ref = h(x_g') fixed), at x̂ = ε x_r + (1 - ε) x_g, one ε per sample next.
    eps = torch.rand(32, 1)
    x_hat = (eps * batch.x + (1 - eps) * x_g).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x_hat).sum(), x_hat)
    gp = ((grad.norm(dim=1) - 1) ** 2).mean().item()
    assert crit.logs["surrogate"] == pytest.approx(surrogate.item(), rel=1e-5)
    assert crit.logs["gp"] == pytest.approx(gp, rel=1e-5)
    assert crit.loss.item() == pytest.approx(-surrogate.item() + 10.0 * gp, rel=1e-5)


def test_cramer_defaults():
    c = build(CramerConfig, {}, "x")
    assert (c.h_dim, c.gp_weight) == (256, 10.0)
    model = small("cramer")
    assert model.critic.head.out_features == 256


# --------------------------------------------------------------------------- stabilisers


def test_feature_matching_loss_closed_form():
    g = seeded(0)
    real = torch.randn(16, 5, generator=g)
    same_mean = real[torch.randperm(16, generator=g)] + torch.randn(16, 5, generator=g)
    same_mean = same_mean - same_mean.mean(0) + real.mean(0)
    assert feature_matching_loss(real, same_mean).item() == pytest.approx(0.0, abs=1e-10)
    shift = torch.tensor([1.0, 0.0, -2.0, 0.0, 0.5])
    assert feature_matching_loss(real, real + shift).item() == pytest.approx(5.25, rel=1e-5)


def test_feature_matching_replaces_the_generator_objective():
    model = small("wgan_gp", feature_matching=True)
    batch = toy_batch()
    torch.manual_seed(1)
    out = model.loss(batch, "gen")
    torch.manual_seed(1)
    fake = model.generate(32)
    f_real, f_fake = model.critic_forward(batch.x)[1], model.critic_forward(fake)[1]  # penultimate features
    expected = ((f_real.mean(0) - f_fake.mean(0)) ** 2).sum()  # ‖E f(x) - E f(G(z))‖², by hand
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5) and out.loss.item() > 0
    # Constant critic features (weights zeroed): real and fake means agree, the loss is 0.
    with torch.no_grad():
        for m in model.critic.body.modules():
            if isinstance(m, nn.Linear):
                m.weight.zero_()
    assert model.loss(batch, "gen").loss.item() == 0.0


def test_one_sided_label_smoothing_closed_form():
    g = seeded(0)
    real, fake = 3 * torch.randn(64, 1, generator=g), 3 * torch.randn(64, 1, generator=g)
    for s in (0.0, 0.1, 0.3):
        got = discriminator_loss(real, fake, 1 - s)
        ref = (F.binary_cross_entropy_with_logits(real.double(), torch.full_like(real.double(), 1 - s))
               + F.binary_cross_entropy_with_logits(fake.double(), torch.zeros_like(fake.double())))
        assert got.item() == pytest.approx(ref.item(), rel=1e-5)
        # softplus(l) - softplus(-l) = l: smoothing adds exactly s·E l_real; fakes keep target 0.
        assert (got - discriminator_loss(real, fake)).item() == pytest.approx(s * real.mean().item(), abs=1e-5)


def test_label_smoothing_in_the_gan_model():
    plain, smooth = small("gan"), small("gan", label_smoothing=0.2)
    smooth.load_state_dict(plain.state_dict())
    assert smooth.real_target() == pytest.approx(0.8) and plain.real_target() == 1.0
    batch = toy_batch()
    torch.manual_seed(2)
    a = plain.loss(batch, "critic").loss.item()
    torch.manual_seed(2)
    b = smooth.loss(batch, "critic").loss.item()
    real_logits = plain.critic_forward(batch.x)[0]
    assert b - a == pytest.approx(0.2 * real_logits.mean().item(), rel=1e-4, abs=1e-6)
    torch.manual_seed(3)
    ga = plain.loss(batch, "gen").loss.item()
    torch.manual_seed(3)
    assert smooth.loss(batch, "gen").loss.item() == pytest.approx(ga)  # the generator is unaffected


def test_minibatch_features_formula():
    m = torch.tensor([[[0.0, 1.0], [2.0, 0.0]],
                      [[1.0, 1.0], [0.0, 0.0]],
                      [[0.0, -1.0], [2.0, 0.5]]], dtype=torch.float64)  # (N=3, B=2, C=2)
    expected = torch.zeros(3, 2, dtype=torch.float64)
    for i in range(3):
        for b in range(2):
            expected[i, b] = sum(math.exp(-(m[i, b] - m[j, b]).abs().sum().item()) for j in range(3))
    assert torch.allclose(minibatch_features(m), expected)
    assert expected[0, 0].item() == pytest.approx(1 + math.exp(-1) + math.exp(-2))  # by hand
    # A collapsed batch: every row sees all N rows at distance 0.
    assert torch.allclose(minibatch_features(m[:1].expand(4, 2, 2)), torch.full((4, 2), 4.0, dtype=torch.float64))


def test_minibatch_discrimination_layer_and_model():
    layer = MinibatchDiscrimination(in_features=3, kernels=4, kernel_dim=2)
    f = torch.randn(5, 3, generator=seeded(0))
    out = layer(f)
    assert out.shape == (5, 3 + 4) and torch.equal(out[:, :3], f)
    m = (f @ layer.T.view(3, 8)).view(5, 4, 2)  # M_i = f(x_i)·T
    assert torch.allclose(out[:, 3:], minibatch_features(m), atol=1e-6)

    plain, mbd = small("gan"), small("gan", minibatch_discrimination=4)
    x = toy_batch().x
    assert plain.critic_forward(x)[1].shape == (32, 16)
    assert mbd.critic_forward(x)[1].shape == (32, 16 + 4)  # B extra features before the last layer
    assert mbd.critic.head.in_features == 20
    assert any(p is mbd.critic.mbd.T for g in mbd.step_groups() if g.name == "critic" for p in g.params)


def test_historical_averaging_penalty():
    model = small("gan", historical_averaging=0.5, lr_critic=1e-2)  # a visible step
    batch = toy_batch()
    out = model.loss(batch, "critic")
    assert out.logs["historical_penalty_critic"] == 0.0  # the running mean starts at θ_0
    theta0 = [p.detach().clone() for p in model.critic.parameters()]
    step(model, "critic", batch)
    theta1 = [p.detach().clone() for p in model.critic.parameters()]
    # After one step the mean of (θ_0, θ_1) is their midpoint: ‖θ - mean‖² = ‖θ_1 - θ_0‖² / 4.
    expected = sum(((a - b) ** 2).sum() for a, b in zip(theta1, theta0)).item() / 4
    assert expected > 0
    assert model.historical_penalty("critic").item() == pytest.approx(expected, rel=1e-5)
    means = model.historical_mean("critic")
    assert all(torch.allclose(m, (a + b) / 2) for m, a, b in zip(means, theta0, theta1))
    # The loss carries weight · penalty; the generator's own penalty is still zero.
    plain = small("gan", lr_critic=1e-2)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("hist_")})
    torch.manual_seed(4)
    with_ha = model.loss(batch, "critic").loss.item()
    torch.manual_seed(4)
    without = plain.loss(batch, "critic").loss.item()
    assert with_ha - without == pytest.approx(0.5 * expected, rel=1e-4)
    assert model.historical_penalty("gen").item() == 0.0


class Identity2(nn.Module):
    """A critic that returns its input as output and features."""

    def forward(self, x):
        return x, x


def test_instance_noise_anneals_linearly_to_zero():
    model = small("wgan_gp", instance_noise=0.5, instance_noise_steps=10)
    model.critic = Identity2()
    x = torch.zeros(20_000, 2)
    expected = {0: 0.5, 4: 0.3, 10: 0.0, 12: 0.0}
    for t in range(13):
        if t in expected:
            assert model.instance_noise_std() == pytest.approx(expected[t])
            torch.manual_seed(t)
            noisy = model.critic_forward(x)[0]
            assert noisy.std().item() == pytest.approx(expected[t], abs=0.01)
        model.after_step("critic")
    model.after_step("gen")  # only critic steps count
    assert int(model.critic_steps) == 13
    constant = small("gan", instance_noise=0.2)
    constant.critic = Identity2()
    for _ in range(5):
        constant.after_step("critic")
    assert constant.instance_noise_std() == 0.2
    assert constant.critic_forward(x)[0].std().item() == pytest.approx(0.2, abs=0.01)
    constant.eval()  # no noise outside training
    assert torch.equal(constant.critic_forward(x)[0], x)


# Every stabiliser at once; packing by 2, instance noise annealed from 1 to 0 over 8 critic steps.
ALL_STABILISERS = {"feature_matching": True, "label_smoothing": 0.1, "minibatch_discrimination": 3,
                   "historical_averaging": 0.1, "instance_noise": 1.0, "instance_noise_steps": 8,
                   "pack": 2, "n_critic": 2, "lr_critic": 0.02, "lr_gen": 0.02}
GRADIENT_PENALTY = ["cramer", "wgan_gp"]  # refused with minibatch discrimination (see below)


def critic_by_hand(model: AdversarialModel, x: torch.Tensor, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic on x (B, 2) with the stabilisers written out: instance noise std·ε (ε drawn here,
    from the global stream, as the model draws it), packs of consecutive samples side by side,
    then o_b(x_i) = Σ_j exp(-Σ_c |M_ibc - M_jbc|), M_i = f(x_i)·T, appended to the body's features."""
    c = model.config
    x = x + std * torch.randn(x.shape)
    g = x.shape[0] // c.pack
    f = model.critic.body(x.reshape(g, c.pack * x.shape[1]))  # (G, A)
    if c.minibatch_discrimination:
        t = model.critic.mbd.T  # (A, K, C)
        m = (f @ t.reshape(t.shape[0], -1)).reshape(g, *t.shape[1:])  # (G, K, C)
        o = torch.stack([torch.stack([sum(torch.exp(-(m[i, k] - m[j, k]).abs().sum()) for j in range(g))
                                      for k in range(t.shape[1])]) for i in range(g)])  # (G, K)
        f = torch.cat([f, o], dim=1)
    return model.critic.head(f), f


def penalty_by_hand(critic_fn, real: torch.Tensor, fake: torch.Tensor, pack: int) -> torch.Tensor:
    """E (‖∇ D(x̂)‖ - 1)² by autograd, x̂ = ε real + (1 - ε) fake with one ε ~ U[0, 1] per pack."""
    eps = torch.rand(real.shape[0] // pack).repeat_interleave(pack)[:, None]
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic_fn(x_hat).sum(), x_hat)
    return ((grad.reshape(-1, 2 * pack).norm(dim=1) - 1) ** 2).mean()


def objective_by_hand(model: AdversarialModel, family: str, group: str, real: torch.Tensor,
                      std: float) -> dict[str, float]:
    """The group's objective (before historical averaging) and its parts, drawing z, ε and the
    penalty's mixing weights from the global stream in the model's order."""
    b, z_dim, pack = real.shape[0], model.config.z_dim, model.config.pack
    fake = model.gen(torch.randn(b, z_dim)).detach()  # the loss's generate(b)
    if group == "gen":  # feature matching replaces every family's generator loss
        f_real = critic_by_hand(model, real, std)[1]
        f_fake = critic_by_hand(model, fake, std)[1]
        fm = ((f_real.mean(0) - f_fake.mean(0)) ** 2).sum().item()
        return {"gen_loss": fm, "feature_matching": fm}
    if family == "gan":  # one-sided smoothing: real target 1 - s, fake target 0
        l_real = critic_by_hand(model, real, std)[0].double()
        l_fake = critic_by_hand(model, fake, std)[0].double()
        t = 1 - model.config.label_smoothing
        real_term = -(t * torch.log(torch.sigmoid(l_real)) + (1 - t) * torch.log(1 - torch.sigmoid(l_real)))
        return {"critic_loss": (real_term.mean() - torch.log(1 - torch.sigmoid(l_fake)).mean()).item()}
    if family in ("wgan", "wgan_gp"):  # no real target: label smoothing plays no part
        w = (critic_by_hand(model, real, std)[0].mean() - critic_by_hand(model, fake, std)[0].mean()).item()
        if family == "wgan":
            return {"critic_loss": -w, "wasserstein": w}
        gp = penalty_by_hand(lambda x: critic_by_hand(model, x, std)[0], real, fake, pack).item()
        return {"critic_loss": -w + model.config.gp_weight * gp, "wasserstein": w, "gp": gp}
    # Cramér GAN: f(x) = ‖h(x) - h(x_g')‖ - ‖h(x)‖ against a second fake x_g'.
    fake2 = model.gen(torch.randn(b, z_dim)).detach()
    h_ref = critic_by_hand(model, fake2, std)[0]

    def f(x):
        h = critic_by_hand(model, x, std)[0]
        return (h - h_ref).norm(dim=1) - h.norm(dim=1)

    surrogate = (f(real).mean() - f(fake).mean()).item()
    gp = penalty_by_hand(f, real, fake, pack).item()
    return {"critic_loss": -surrogate + model.config.gp_weight * gp, "surrogate": surrogate, "gp": gp}


@pytest.mark.parametrize("family", MINE)
def test_all_stabilisers_together_train(family):
    settings = dict(ALL_STABILISERS)
    if family in GRADIENT_PENALTY:
        settings["minibatch_discrimination"] = 0  # refused with a penalty (test below)
    if family == "wgan":
        settings["clip"] = 0.1  # the paper's 0.01 leaves a critic whose outputs are ~1e-4
    model = small(family, **settings)
    groups = model.step_groups()
    history = {g.name: [] for g in groups}  # θ_0, θ_1, ... of each player

    def finite_and_recorded(out):  # before each optimizer step: the player's θ so far (clipped, for WGAN)
        assert torch.isfinite(out.loss)
        (g,) = [g for g in groups if f"{g.name}_loss" in out.logs]
        history[g.name].append([p.detach().clone() for p in g.params])

    batches = (toy_batch(seed=i) for i in range(2) for g in groups for _ in range(g.repeats))
    train_steps(model, batches, 2, check=finite_and_recorded)
    for g in groups:
        history[g.name].append([p.detach().clone() for p in g.params])  # after the last step
    assert [len(history[g.name]) for g in groups] == [5, 3]  # 2 iterations: 2·2 critic steps, 2 generator steps
    assert model.sample(4, generator=seeded(0)).shape == (4, 2)

    # After 4 critic steps the noise has annealed linearly to 1.0·(1 - 4/8) = 0.5.
    std = 1.0 * (1 - 4 / 8)
    real = toy_batch(seed=7).x
    for g in groups:
        # ‖θ - θ̄‖² with θ̄ the plain mean of every θ the player has had (its initial one included).
        snapshots = history[g.name]
        mean = [torch.stack(ps).mean(0) for ps in zip(*snapshots)]
        hist = sum(((p - m) ** 2).sum() for p, m in zip(g.params, mean)).item()
        assert hist > 1e-2, "the historical term must be visible at the tolerance below"
        torch.manual_seed(5)
        out = model.loss(Batch(real), g.name)
        torch.manual_seed(5)
        expected = objective_by_hand(model, family, g.name, real, std)
        assert out.logs[f"historical_penalty_{g.name}"] == pytest.approx(hist, rel=1e-4)
        for key, value in expected.items():
            assert out.logs[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (g.name, key)
        objective = expected[f"{g.name}_loss"]  # critic_loss or gen_loss
        assert out.loss.item() == pytest.approx(objective + 0.1 * hist, rel=1e-4, abs=1e-6), g.name


@pytest.mark.parametrize("family", GRADIENT_PENALTY)
def test_a_gradient_penalty_through_minibatch_discrimination_is_refused(family, tmp_path):
    import re

    from gm.params import load_params
    from tests.helpers import tiny_params, write_params

    message = (r"minibatch_discrimination: expected 0 with a gradient penalty \(gp_weight = 10.0\), got 3; "
               r"the penalty through a minibatch-discrimination layer penalises a gradient coupled across the batch "
               r"\(set minibatch_discrimination: 0 or gp_weight: 0\)")
    cls = FAMILIES[family].config_cls
    with pytest.raises(ConfigError, match="^x." + message + "$"):
        build(cls, {"minibatch_discrimination": 3}, "x")
    build(cls, {"minibatch_discrimination": 3, "gp_weight": 0.0}, "x")  # no penalty, nothing coupled
    build(cls, {"minibatch_discrimination": 0}, "x")
    raw = tiny_params()
    raw["experiments"][f"{family}-ring8"] = {"family": family, "dataset": "ring8",
                                             "model": {"z_dim": 2, "minibatch_discrimination": 3}}
    with pytest.raises(ConfigError) as refused:
        load_params(write_params(tmp_path, raw))
    assert re.fullmatch(rf"experiments\.{family}-ring8\.model\.{message}", str(refused.value)), str(refused.value)


# --------------------------------------------------------------------------- packing (PacGAN)


@pytest.mark.parametrize("family", ADVERSARIAL)
def test_packed_critic_reads_groups_of_consecutive_samples(family):
    # eval: the critic read twice must be the same critic (a spectrally normalised one's power iteration
    # would otherwise move between the two reads)
    model = small(family, LABELLED, conditional=True, pack=4).eval()
    batch = toy_batch(8, labelled=True)
    x, y = batch.x, batch.y
    out, features = model.critic_forward(x, y)
    assert out.shape[0] == features.shape[0] == 2  # 8 samples -> 2 packs of 4
    # The same critic on the hand-made packs: each pack is its 4 (x, onehot(y)) rows side by side.
    rows = torch.cat([x, F.one_hot(y, 2).float()], dim=1)  # (8, 4)
    by_hand, _ = model.critic(rows.reshape(2, 16))
    torch.testing.assert_close(out, by_hand)
    with pytest.raises(ValueError, match="whole packs"):
        model.critic_forward(x[:6], y[:6])


def test_packed_dcgan_critic_stacks_channels():
    model = small("gan", DIGITS, arch="dcgan", conditional=True, pack=2)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    y = torch.tensor([0, 3, 5, 9])
    out, _ = model.critic_forward(x, y)
    assert out.shape == (2, 1)
    assert model.sample(5, generator=seeded(0), condition=torch.arange(5)).shape == (5, 1, 8, 8)


@pytest.mark.parametrize("pack", [1, 2, 4])
def test_gradient_penalty_of_a_packed_linear_critic(pack):
    # D(x_1..x_m) = Σ_i w_i·x_i: the gradient w.r.t. one pack is (w_1..w_m), norm ‖w‖ over all
    # m·2 weights, whatever the pack holds; per sample it would be only ‖w_i‖.
    model = small("wgan_gp", depth=1, pack=pack, gp_weight=1.0)
    w = torch.arange(1.0, 2 * pack + 1)  # (2m,)
    lin = nn.Linear(2 * pack, 1)
    with torch.no_grad():
        lin.weight.copy_(w[None])
    model.critic.body = nn.Identity()
    model.critic.head = lin
    out = model.loss(toy_batch(16), "critic")
    norm = w.norm().item()
    assert out.logs["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert out.logs["gp"] == pytest.approx((norm - 1.0) ** 2, rel=1e-5)


def test_packing_trains_every_family():
    for family in ADVERSARIAL:
        model = small(family, pack=2, n_critic=1)
        for group in ("critic", "gen"):
            step(model, group, toy_batch(8))
        assert all(torch.isfinite(p).all() for p in model.parameters()), family


# --------------------------------------------------------------------------- conditional GAN


def test_conditional_needs_labelled_data():
    with pytest.raises(ValueError, match="conditional"):
        small("gan", TOY, conditional=True)


@pytest.mark.parametrize("family", MINE)
def test_conditional_sampling(family):
    model = small(family, DIGITS, conditional=True)
    labels = torch.full((6,), 3, dtype=torch.long)
    a = model.sample(6, generator=seeded(0), condition=labels)
    b = model.sample(6, generator=seeded(0), condition=labels)
    other = model.sample(6, generator=seeded(0), condition=torch.full((6,), 4, dtype=torch.long))
    assert a.shape == (6, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, other)
    assert a.min() >= -1 and a.max() < 1
    with pytest.raises(ValueError, match="conditional"):
        model.sample(6, generator=seeded(0))
    with pytest.raises(ValueError, match="labels"):
        model.sample(2, condition=torch.tensor([0, 10]))
    # The serving path: predict({"n": 5, "label": 7}) hands int64 labels of shape (n,) to sample_data.
    from gm.inference import sample_data

    x = sample_data(model, DIGITS, 5, seed=1, condition=torch.full((5,), 7, dtype=torch.int64))
    assert x.shape == (5, 1, 8, 8) and x.min() >= 0 and x.max() <= 16
    # Training steps use the batch's labels; a batch without them is an error.
    for g in model.step_groups():
        y = torch.randint(0, 10, (8,), generator=seeded(1))
        out = model.loss(Batch(torch.rand(8, 1, 8, 8) * 2 - 1, y), g.name)
        assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="labels"):
        model.loss(Batch(torch.zeros(8, 1, 8, 8)), "critic")


@pytest.mark.parametrize("family", MINE)
def test_unconditional_models_refuse_a_condition(family):
    model = small(family, DIGITS)
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, condition=torch.zeros(2, dtype=torch.long))


def test_conditional_gan_learns_which_cluster_each_label_means():
    centres = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    g = seeded(0)

    def data() -> Batch:
        y = torch.randint(0, 2, (64,), generator=g)
        return Batch(centres[y] + 0.3 * torch.randn(64, 2, generator=g), y)

    model = small("gan", LABELLED, hidden=32, z_dim=2, conditional=True, lr_gen=1e-3, lr_critic=1e-3)
    groups = model.step_groups()
    opts = [grp.make_optimizer() for grp in groups]
    for _ in range(300):
        for grp, opt in zip(groups, opts):
            out = model.loss(data(), grp.name)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            model.after_step(grp.name)
    model.eval()
    for label in (0, 1):
        x = model.sample(500, generator=seeded(1), condition=torch.full((500,), label))
        nearest = torch.cdist(x, centres).argmin(1)
        assert (nearest == label).float().mean() > 0.9, (label, x.mean(0))
        assert (x.mean(0) - centres[label]).norm() < 1.5, (label, x.mean(0))


# --------------------------------------------------------------------------- DCGAN backbones


@pytest.mark.parametrize("data", [DIGITS, MNIST], ids=["8x8", "28x28"])
def test_dcgan_backbone_shapes(data):
    gen = DCGANGenerator(10, data.shape, base=8)
    x = gen(torch.randn(3, 10))
    assert x.shape == (3, *data.shape)
    critic = DCGANCritic(1, data.shape[1:], base=8)
    assert critic(x).shape == (3, critic.feature_dim)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in gen.modules())


@pytest.mark.parametrize("family", MINE)
@pytest.mark.parametrize("data", [DIGITS, MNIST], ids=["8x8", "28x28"])
def test_dcgan_models(family, data):
    model = small(family, data, arch="dcgan", hidden=4, n_critic=1)
    # Radford et al.'s critic (batch norm) by default; a gradient penalty's critic is the per-sample pooled one
    penalised = getattr(model.config, "gp_weight", 0) > 0
    assert model.config.critic == ("pooled" if penalised else "radford")
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.critic.modules()) == (not penalised)
    batch = Batch(torch.rand(4, *data.shape) * 2 - 1)
    for g in model.step_groups():
        out = model.loss(batch, g.name)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss)
        out.loss.backward()
        assert all(p.grad is not None for p in g.params), g.name
        model.zero_grad()
    x = model.sample(3, generator=seeded(0))
    assert x.shape == (3, *data.shape) and x.min() >= -1 and x.max() < 1


def test_dcgan_conditional_and_bad_data():
    model = small("wgan_gp", DIGITS, arch="dcgan", hidden=4, conditional=True)
    assert model.sample(2, generator=seeded(0), condition=torch.tensor([1, 2])).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="arch"):
        small("gan", TOY, arch="dcgan")
    with pytest.raises(ValueError, match="arch"):
        small("gan", DataSpec(shape=(1, 8, 6), kind="image", levels=17), arch="dcgan")


# --------------------------------------------------------------------------- diagnostics


@pytest.mark.parametrize("family", ["wgan", "wgan_gp"])
def test_critic_grad_norms_one_per_layer(family):
    model = small(family, depth=3)
    real, fake = toy_batch().x, model.generate(32)
    torch.manual_seed(0)  # WGAN-GP's penalty draws its interpolation weights
    norms = critic_grad_norms(model, real, fake)
    assert len(norms) == 4  # three hidden Linear layers and the output layer, input -> output
    assert all(math.isfinite(v) and v > 0 for v in norms)
    assert all(p.grad is None for p in model.parameters()), ".grad must stay untouched"
    # In order: the first is the input layer's, the last the head's.
    torch.manual_seed(0)
    loss, _ = model.critic_objective(real, fake.detach(), None)
    first, last = torch.autograd.grad(loss, [model.critic.body[0].weight, model.critic.head.weight])
    assert norms[0] == pytest.approx(first.norm().item(), rel=1e-5)
    assert norms[-1] == pytest.approx(last.norm().item(), rel=1e-5)
    conv = small(family, DIGITS, arch="dcgan", hidden=4)
    conv_norms = critic_grad_norms(conv, torch.rand(4, 1, 8, 8) * 2 - 1, conv.generate(4))
    assert len(conv_norms) == 3 and all(math.isfinite(v) for v in conv_norms)  # 8 -> 4 -> 2, then the head


# --------------------------------------------------------------------------- tune spaces


@pytest.mark.parametrize("family", ADVERSARIAL)
def test_search_spaces_name_real_fields(family):
    import dataclasses


    fields = {f.name for f in dataclasses.fields(FAMILIES[family].config_cls)}
    space = SPACES[family]()
    assert space
    for key in space:
        section, name = key.split(".", 1)
        assert section in ("model", "train")
        if section == "model":
            assert name in fields, key
