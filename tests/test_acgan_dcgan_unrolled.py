"""Issue 17: AC-GAN, Radford et al.'s DCGAN critic and initialisation, unrolled GAN, virtual batch norm,
and the refused combinations of a gradient penalty with a batch-coupled critic."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gm.models  # noqa: F401  (fills the registry)
from gm.core.config import ConfigError, build
from gm.core.registry import FAMILIES
from gm.data.dataspec import DataSpec
from gm.models._adversarial import AdversarialModel
from gm.models.acgan import acgan_critic_loss, acgan_generator_loss
from gm.models.base import Batch, load_model, save_model
from gm.models.cramer import CramerConfig
from gm.models.gan import GANConfig
from gm.models.wgan_gp import WGANGPConfig
from gm.nn.dcgan import DCGANCritic, RadfordCritic
from gm.nn.vbn import ReferenceBatch, VirtualBatchNorm
from tests.helpers import DIGITS, TOY, make_batch, seeded, train_steps

MNIST = DataSpec(shape=(1, 28, 28), kind="image", num_classes=10, levels=256)


def small(family: str, data: DataSpec = TOY, **overrides) -> AdversarialModel:
    cls = FAMILIES[family]
    config = build(cls.config_cls, {"hidden": 16, "depth": 2, **overrides}, f"test.{family}")
    torch.manual_seed(0)
    return cls(config, data)


# --------------------------------------------------------------------------- AC-GAN


def test_acgan_losses_match_their_closed_forms():
    l_real = torch.tensor([[1.5], [-0.5], [0.2]])
    l_fake = torch.tensor([[-2.0], [0.3], [1.0]])
    k_real = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [-1.0, 3.0, 0.0]])
    k_fake = torch.tensor([[0.0, 1.0, 0.0], [1.0, -2.0, 0.5], [0.3, 0.2, 0.1]])
    y = torch.tensor([0, 2, 1])

    def log_softmax_at(k, y):  # log P(C = y | x), by hand
        return torch.stack([k[i, y[i]] - torch.log(torch.exp(k[i]).sum()) for i in range(len(y))])

    sig = torch.sigmoid
    for t, w in [(1.0, 1.0), (0.9, 0.5)]:
        source = -(t * torch.log(sig(l_real)) + (1 - t) * torch.log(1 - sig(l_real))).mean() \
            - torch.log(1 - sig(l_fake)).mean()
        classes = -log_softmax_at(k_real, y).mean() - log_softmax_at(k_fake, y).mean()
        got = acgan_critic_loss(l_real, l_fake, k_real, k_fake, y, real_target=t, class_weight=w)
        assert got.item() == pytest.approx((source + w * classes).item(), rel=1e-6)
        gen = -torch.log(sig(l_fake)).mean() - w * log_softmax_at(k_fake, y).mean()
        assert acgan_generator_loss(l_fake, k_fake, y, "non_saturating", w).item() == pytest.approx(gen.item(), rel=1e-6)
        minimax = torch.log(1 - sig(l_fake)).mean() - w * log_softmax_at(k_fake, y).mean()
        assert acgan_generator_loss(l_fake, k_fake, y, "minimax", w).item() == pytest.approx(minimax.item(), rel=1e-6)


def test_acgan_model_wires_two_heads_and_an_unconditioned_critic():
    model = small("acgan", DIGITS, auxiliary_classifier=True, arch="dcgan", hidden=4)
    assert model.capabilities.conditional and model.aux_labels == 10
    assert model.critic.head.out_features == 1 + 10
    first_conv = next(m for m in model.critic.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1, "AC-GAN's critic reads x alone, never the label"
    batch = make_batch(DIGITS, 8)
    torch.manual_seed(4)
    out = model.loss(batch, "critic")
    torch.manual_seed(4)
    with torch.no_grad():
        fake = model.generate(8, batch.y)
    logits_r, classes_r = model.heads(batch.x, batch.y)
    logits_f, classes_f = model.heads(fake, batch.y)
    expected = acgan_critic_loss(logits_r, logits_f, classes_r, classes_f, batch.y)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.manual_seed(5)
    out = model.loss(batch, "gen")
    torch.manual_seed(5)
    fake = model.generate(8, batch.y)
    logits_f, classes_f = model.heads(fake, batch.y)
    assert out.loss.item() == pytest.approx(acgan_generator_loss(logits_f, classes_f, batch.y).item(), rel=1e-5)
    assert out.logs["class_ce_gen"] == pytest.approx(F.cross_entropy(classes_f, batch.y).item(), rel=1e-5)


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_a_tiny_acgan_trains_with_finite_losses_and_samples_by_class(arch):
    model = small("acgan", DIGITS, auxiliary_classifier=True, arch=arch, hidden=8)
    logs = train_steps(model, lambda: make_batch(DIGITS, 16, seed=int(torch.randint(0, 99, ()))), 3)
    assert len(logs) == 3
    assert all(math.isfinite(v) for entry in logs for v in entry.values())
    assert {"class_ce_real", "class_ce_fake", "class_ce_gen"} <= set(logs[-1])
    x = model.sample(4, generator=seeded(0), condition=torch.tensor([0, 1, 2, 3]))
    assert x.shape == (4, 1, 8, 8) and x.min() >= -1 and x.max() < 1
    with pytest.raises(ValueError, match="conditional"):
        model.sample(4, generator=seeded(0))


def test_acgan_needs_labels_and_is_a_plain_gan_without_its_classifier():
    with pytest.raises(ConfigError, match="auxiliary_classifier"):
        small("acgan", TOY, auxiliary_classifier=True)
    plain = small("acgan", DIGITS)  # the default: no classifier, unconditional (every family's default)
    assert not plain.capabilities.conditional and plain.critic.head.out_features == 1
    packed = small("acgan", DIGITS, auxiliary_classifier=True, pack=2)  # K class logits per packed sample
    assert packed.critic.head.out_features == 1 + 2 * 10
    assert torch.isfinite(packed.loss(make_batch(DIGITS, 8), "critic").loss)


# --------------------------------------------------------------------------- DCGAN as Radford et al.


def test_radford_critic_layers():
    critic = RadfordCritic(1, (28, 28), base=8)
    layers = list(critic.net)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3  # 28 -> 14 -> 7 -> 4
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)) for m in critic.modules())
    for n, i in enumerate(convs):
        conv = layers[i]
        assert conv.stride == (2, 2)
        after = layers[i + 1]
        if n == 0:  # no batch norm on the first layer (Radford et al. 2016, §3), so it keeps its bias
            assert isinstance(after, nn.LeakyReLU) and conv.bias is not None
        else:
            assert isinstance(after, nn.BatchNorm2d) and after.num_features == conv.out_channels
            assert conv.bias is None
            after = layers[i + 2]
        assert isinstance(after, nn.LeakyReLU) and after.negative_slope == 0.2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in layers) == 2
    x = torch.randn(3, 1, 28, 28)
    assert critic(x).shape == (3, critic.feature_dim) == (3, 32 * 4 * 4)  # the last map, flattened


def test_radford_model_init_and_the_pooled_critic_kept():
    model = small("gan", MNIST, arch="dcgan", critic="radford", hidden=16)
    assert isinstance(model.critic.body, RadfordCritic)
    weights = torch.cat([m.weight.detach().flatten() for net in (model.gen, model.critic) for m in net.modules()
                         if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))])
    n = weights.numel()
    assert n > 20_000
    # std of a sample std of n normals ≈ σ / sqrt(2n); the mean's is σ / sqrt(n): 5 of each
    assert weights.std().item() == pytest.approx(0.02, abs=5 * 0.02 / math.sqrt(2 * n))
    assert abs(weights.mean().item()) < 5 * 0.02 / math.sqrt(n)
    bns = [m for net in (model.gen, model.critic) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    scales = torch.cat([m.weight.detach() for m in bns])
    assert scales.numel() > 100
    assert scales.mean().item() == pytest.approx(1.0, abs=5 * 0.02 / math.sqrt(scales.numel()))
    assert scales.std().item() == pytest.approx(0.02, rel=0.3)
    biases = [m.bias for net in (model.gen, model.critic) for m in net.modules()
              if getattr(m, "bias", None) is not None]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)
    x = model.sample(3, generator=seeded(0))  # the generator's output convention: tanh into [-1, 1)
    assert x.shape == (3, 1, 28, 28) and x.min() >= -1 and x.max() < 1
    assert isinstance(small("gan", DIGITS, arch="dcgan", hidden=4).critic.body, RadfordCritic)  # the default
    pooled = small("gan", DIGITS, arch="dcgan", hidden=4, critic="pooled")  # kept, under its own name
    assert isinstance(pooled.critic.body, DCGANCritic)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in pooled.critic.modules())


# --------------------------------------------------------------------------- refused combinations


@pytest.mark.parametrize("cls", [WGANGPConfig, CramerConfig])
def test_a_gradient_penalty_with_a_batch_coupled_critic_is_refused(cls):
    with pytest.raises(ConfigError) as refused:
        build(cls, {"arch": "dcgan", "critic": "radford"}, "x")
    message = str(refused.value)
    assert message.startswith("x.critic: expected 'pooled' with a gradient penalty (gp_weight = 10.0)")
    assert "gp_weight" in message and "critic" in message and "batch norm" in message
    with pytest.raises(ConfigError) as refused:
        build(cls, {"minibatch_discrimination": 2}, "x")
    assert "minibatch_discrimination" in str(refused.value) and "gp_weight" in str(refused.value)
    build(cls, {"arch": "dcgan", "critic": "radford", "gp_weight": 0.0}, "x")  # no penalty: nothing coupled
    build(cls, {"arch": "dcgan", "critic": "pooled"}, "x")
    build(GANConfig, {"arch": "dcgan", "critic": "radford", "minibatch_discrimination": 2}, "x")  # no penalty


# --------------------------------------------------------------------------- unrolled GAN


def test_unroll_zero_is_the_plain_generator_step_exactly():
    model = small("gan", unroll_steps=0)
    batch = make_batch(TOY, 16)
    gen = model.gen_parameters()
    torch.manual_seed(1)
    out = model.loss(batch, "gen")
    got = torch.autograd.grad(out.loss, gen)
    torch.manual_seed(1)
    fake = model.generate(16)
    plain, _ = model.generator_objective(fake, None, batch.x)
    want = torch.autograd.grad(plain, gen)
    assert torch.equal(out.loss, plain)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_one_unrolled_step_of_a_linear_critic_by_hand():
    # D(x) = w·x + b; one unrolled step θ1 = θ - η ∇L_D(θ) (differentiable), then L_G = E softplus(-D_θ1(G(z))).
    model = small("gan", depth=1, unroll_steps=1, lr_critic=0.5)
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.7, -1.2]]))
        lin.bias.fill_(0.3)
    model.critic.body, model.critic.head = nn.Identity(), lin
    batch = make_batch(TOY, 16)
    torch.manual_seed(2)
    out = model.loss(batch, "gen")
    got = torch.autograd.grad(out.loss, model.gen_parameters())
    torch.manual_seed(2)
    fake = model.generate(16)
    w, b = lin.weight[0], lin.bias[0]
    l_d = F.softplus(-(batch.x @ w + b)).mean() + F.softplus(fake @ w + b).mean()
    gw, gb = torch.autograd.grad(l_d, (w, b), create_graph=True)
    w1, b1 = w - 0.5 * gw, b - 0.5 * gb
    l_g = F.softplus(-(fake @ w1 + b1)).mean()
    want = torch.autograd.grad(l_g, model.gen_parameters())
    assert out.loss.item() == pytest.approx(l_g.item(), rel=1e-6)
    for a, c in zip(got, want):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family,data,extra", [
    ("gan", TOY, {}), ("wgan_gp", TOY, {}), ("cramer", TOY, {"h_dim": 4}),
    ("acgan", DIGITS, {"auxiliary_classifier": True, "arch": "dcgan", "critic": "radford", "hidden": 4}),
])
def test_unrolled_generator_gradient_differs_is_finite_and_leaves_the_critic(family, data, extra):
    plain = small(family, data, **extra)
    unrolled = small(family, data, unroll_steps=2, **extra)
    unrolled.load_state_dict(plain.state_dict())
    batch = make_batch(data, 8)
    grads = []
    for model in (plain, unrolled):
        torch.manual_seed(3)
        out = model.loss(batch, "gen")
        grads.append(torch.autograd.grad(out.loss, model.gen_parameters()))
    assert all(torch.isfinite(g).all() for g in grads[1])
    assert any(not torch.allclose(a, b) for a, b in zip(*grads)), "unrolling must change the generator's gradient"
    # A whole generator step of the training schedule leaves the stored critic (and its statistics) as it was.
    critic_before = {k: v.clone() for k, v in unrolled.critic.state_dict().items()}
    gen_before = [p.detach().clone() for p in unrolled.gen_parameters()]
    (group,) = [g for g in unrolled.step_groups() if g.name == "gen"]
    opt = group.make_optimizer()
    out = unrolled.loss(batch, "gen")
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    assert "unrolled_critic_loss" in out.logs and math.isfinite(out.logs["unrolled_critic_loss"])
    assert all(torch.equal(v, critic_before[k]) for k, v in unrolled.critic.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, unrolled.gen_parameters()))


def test_unrolled_gan_trains_in_the_step_loop():
    model = small("gan", unroll_steps=3)
    logs = train_steps(model, lambda: make_batch(TOY, 16), 3)
    assert all(math.isfinite(v) for entry in logs for v in entry.values())


# --------------------------------------------------------------------------- virtual batch norm


def test_virtual_batch_norm_closed_form():
    vbn = VirtualBatchNorm(3, reference_size=4)
    h = torch.randn(7, 3, 2, 2, generator=seeded(0))
    ref = h[:4]
    mean = ref.mean((0, 2, 3), keepdim=True)
    var = ((ref - mean) ** 2).mean((0, 2, 3), keepdim=True)
    torch.testing.assert_close(vbn(h), (h - mean) / torch.sqrt(var + 1e-5))


@pytest.mark.parametrize("data,arch", [(TOY, "mlp"), (DIGITS, "dcgan")])
def test_vbn_output_uses_only_reference_statistics(data, arch):
    model = small("gan", data, arch=arch, hidden=8, virtual_batch_norm=True, vbn_reference=16)
    assert isinstance(model.gen, ReferenceBatch)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.gen.modules())
    assert sum(isinstance(m, VirtualBatchNorm) for m in model.gen.modules()) >= 2
    model.train()
    z = torch.randn(6, model.config.z_dim, generator=seeded(1))
    others = z.clone()
    others[1:] = 5 * torch.randn(5, model.config.z_dim, generator=seeded(2))  # every other example changed
    a, b = model.gen(z), model.gen(others)
    torch.testing.assert_close(a[0], b[0])  # example 0 is normalised by the reference batch alone
    assert not torch.allclose(a[1:], b[1:])
    torch.testing.assert_close(model.gen(z[:1])[0], a[0])  # batch size plays no part either
    with torch.no_grad():
        model.gen.reference.mul_(3.0)  # a different reference batch: different statistics
    assert not torch.allclose(model.gen(z)[0], a[0])


def test_vbn_reference_is_seeded_and_saved(tmp_path):
    a = small("gan", DIGITS, virtual_batch_norm=True, vbn_reference=8, conditional=True)
    torch.manual_seed(123)  # the global seed does not choose the reference batch
    b = FAMILIES["gan"](a.config, DIGITS)
    assert torch.equal(a.gen.reference, b.gen.reference)
    assert a.gen.reference.shape == (8, a.config.z_dim + 10)  # z beside one-hot labels
    assert "gen.reference" in a.state_dict()
    with torch.no_grad():
        a.gen.reference.add_(1.0)
    loaded = load_model(save_model(a, tmp_path / "m"))
    assert torch.equal(loaded.gen.reference, a.gen.reference)
    y = torch.arange(4)
    assert torch.equal(a.eval().sample(4, seeded(0), y), loaded.sample(4, seeded(0), y))
    train_steps(a.train(), lambda: make_batch(DIGITS, 8), 2)
    assert all(torch.isfinite(p).all() for p in a.parameters())


def test_a_vbn_generator_steps_on_a_plain_batch():
    model = small("gan", virtual_batch_norm=True, vbn_reference=8)
    out = model.loss(Batch(torch.randn(4, 2)), "gen")
    assert torch.isfinite(out.loss)


def test_params_accept_acgan_and_refuse_a_penalised_radford_critic_before_ray(tmp_path):
    from gm.params import load_params
    from tests.helpers import tiny_params, write_params

    raw = tiny_params()
    raw["experiments"]["acgan-digits"] = {
        "family": "acgan", "dataset": "digits",
        "model": {"auxiliary_classifier": True, "arch": "dcgan", "critic": "radford", "unroll_steps": 1,
                  "virtual_batch_norm": True, "z_dim": 8, "hidden": 8}}
    params = load_params(write_params(tmp_path, raw))
    assert params.experiments["acgan-digits"].model.auxiliary_classifier
    raw["experiments"]["wgan_gp_dcgan-digits"] = {"family": "wgan_gp", "dataset": "digits",
                                                  "model": {"arch": "dcgan", "critic": "radford"}}
    with pytest.raises(ConfigError) as refused:
        load_params(write_params(tmp_path, raw))
    message = str(refused.value)
    assert message.startswith("experiments.wgan_gp_dcgan-digits.model.critic: expected 'pooled'"), message
    assert "gp_weight" in message
