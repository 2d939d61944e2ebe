"""StyleGAN (Karras et al. 2019): AdaIN through the synthesis layers, truncation towards w̄, style mixing,
seeded noise inputs, R1 against its closed form, the EMA of w, and a few real steps on digits-shaped data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gm.core.config import ConfigError, build
from gm.core.registry import FAMILIES
from gm.data.dataspec import DataSpec
from gm.models.gan import discriminator_loss
from gm.models.stylegan import StyleGAN, r1_penalty
from gm.nn.mlp import clamp_to_model_space
from gm.nn.scaled import EqualLinear, NoiseInjection, PixelNorm
from gm.nn.stylegan import GroupStdDev, StyleSynthesis, mix_styles
from tests.helpers import DIGITS, TOY, make_batch, perturb, seeded, train_steps


def stylegan(data: DataSpec = DIGITS, **overrides) -> StyleGAN:
    cls = FAMILIES["stylegan"]
    torch.manual_seed(0)
    # ema 0: these tests are about the live generator's maths (tests/test_ema.py has the EMA's own)
    return cls(build(cls.config_cls, {"hidden": 8, "z_dim": 6, "w_dim": 5, "ema": 0, **overrides}, "test.stylegan"),
               data)


def random_model(data: DataSpec = DIGITS, **overrides) -> StyleGAN:
    """Non-trivial weights (noise strengths start at 0 otherwise) and a w̄ away from 0."""
    model = stylegan(data, **overrides)
    perturb(model, 0.3, seed=1)
    with torch.no_grad():
        model.w_avg.copy_(torch.randn(model.config.w_dim, generator=seeded(2)))
    return model


def noise_off(model: StyleGAN) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NoiseInjection):
                m.weight.zero_()


def style_inputs(synthesis: nn.Module, ws: torch.Tensor, generator=None) -> list[torch.Tensor]:
    """The input of each style affine A_i of `synthesis` on ws, in layer order (forward hooks)."""
    seen = {}
    hooks = [a.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, i[0].detach()))
             for k, a in enumerate(synthesis.style_affines())]
    try:
        synthesis(ws, generator)
    finally:
        for h in hooks:
            h.remove()
    return [seen[k] for k in range(len(hooks))]


# --------------------------------------------------------------------------- the networks


def test_the_networks_follow_the_paper():
    model = stylegan()
    mapping = model.gen.mapping
    assert isinstance(mapping.norm, PixelNorm)  # z is normalised first
    linears = [m for m in mapping.net if isinstance(m, EqualLinear)]
    acts = [m for m in mapping.net if isinstance(m, nn.LeakyReLU)]
    assert len(linears) == len(acts) == model.config.mapping_layers == 2
    assert all(m.lr_mul == 0.01 for m in linears) and all(a.negative_slope == 0.2 for a in acts)
    synthesis = model.gen.synthesis
    assert isinstance(synthesis, StyleSynthesis) and synthesis.const.shape == (1, 8, 4, 4)
    assert synthesis.num_ws == 4  # two style layers per resolution: 4×4 and 8×8
    assert [layer.upsample for layer in synthesis.layers] == [False, False, True, False]
    # every style layer its own affine
    assert len({id(a) for a in synthesis.style_affines()}) == 4
    groups = {g.name: g for g in model.step_groups()}
    assert (groups["critic"].lr, groups["gen"].lr, groups["gen"].betas) == (1e-3, 1e-3, (0.0, 0.99))
    assert any(isinstance(m, GroupStdDev) for m in model.critic.modules())
    assert not any(isinstance(m, GroupStdDev) for m in stylegan(mbstd_group=0).critic.modules())


def test_adain_in_a_synthesis_layer_gives_the_styles_mean_and_std():
    model = random_model()
    layer = model.gen.synthesis.layers[2]  # upsample, conv, noise, LeakyReLU, AdaIN at 8×8
    x = torch.randn(3, 8, 4, 4, generator=seeded(3))
    w = torch.randn(3, 5, generator=seeded(4))
    out = layer(x, w, seeded(5))
    assert out.shape == (3, 8, 8, 8)
    y_s, y_b = layer.adain.style(w).chunk(2, dim=1)  # (3, 8) each
    torch.testing.assert_close(out.mean(dim=(2, 3)), y_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), (1 + y_s).abs(), atol=1e-4, rtol=1e-4)


def test_group_stddev_matches_the_layer_it_extends_and_takes_any_batch():
    from gm.nn.scaled import MinibatchStdDev

    x = torch.randn(8, 3, 4, 4, generator=seeded(0))
    torch.testing.assert_close(GroupStdDev(4)(x), MinibatchStdDev(4)(x))
    y = GroupStdDev(4)(x[:6])  # groups of 3 (the largest divisor of 6 not above 4)
    torch.testing.assert_close(y, MinibatchStdDev(3)(x[:6]))


# --------------------------------------------------------------------------- truncation


def test_psi_zero_gives_the_mean_latents_image():
    model = random_model()
    n, z_dim, num_ws = 3, model.config.z_dim, model.gen.num_ws
    x = model.sample(n, seeded(5), truncation=0.0)
    g = seeded(5)
    torch.randn((n, z_dim), generator=g)  # z is drawn first, then the noise inputs layer by layer
    with torch.no_grad():
        expected = model.gen.synthesis(model.w_avg.expand(n, num_ws, -1), g).view(n, *DIGITS.shape)
    assert torch.equal(x, clamp_to_model_space(expected, DIGITS))
    noise_off(model)  # w̄'s image, the same for every z
    x = model.sample(n, seeded(6), truncation=0.0)
    with torch.no_grad():
        one = model.gen.synthesis(model.w_avg.expand(1, num_ws, -1)).view(1, *DIGITS.shape)
    torch.testing.assert_close(x, clamp_to_model_space(one, DIGITS).expand(n, -1, -1, -1))


def test_truncation_interpolates_towards_w_avg_and_psi_one_is_the_plain_sample():
    model = random_model()
    n, z_dim = 4, model.config.z_dim
    assert torch.equal(model.sample(n, seeded(1)), model.sample(n, seeded(1), truncation=1.0))
    g = seeded(1)
    with torch.no_grad():
        w = model.gen.mapping(torch.randn((n, z_dim), generator=g))
        ws = (model.w_avg + 0.5 * (w - model.w_avg))[:, None].expand(n, model.gen.num_ws, -1)
        expected = model.gen.synthesis(ws, g).view(n, *DIGITS.shape)
    assert torch.equal(model.sample(n, seeded(1), truncation=0.5), clamp_to_model_space(expected, DIGITS))
    with pytest.raises(ValueError, match="truncation"):
        model.sample(2, seeded(0), truncation=float("nan"))


# --------------------------------------------------------------------------- style mixing


@pytest.mark.parametrize("data", [DIGITS, TOY], ids=["image", "vector"])
def test_style_mixing_uses_w1_before_the_crossover_and_w2_after(data):
    model = random_model(data, depth=4)
    synthesis, num_ws = model.gen.synthesis, model.gen.num_ws
    assert num_ws == 4
    w1, w2 = torch.randn(2, 5, generator=seeded(0)), torch.randn(2, 5, generator=seeded(1))
    for k in range(1, num_ws):
        seen = style_inputs(synthesis, mix_styles(w1, w2, k, num_ws), seeded(2))
        for i, w in enumerate(seen):
            assert torch.equal(w, w1 if i < k else w2), (k, i)


def test_training_mixes_with_a_random_crossover_and_sampling_never_does():
    model = random_model(mixing_prob=1.0)
    synthesis, num_ws, z_dim = model.gen.synthesis, model.gen.num_ws, model.config.z_dim
    crossovers = set()
    for seed in range(12):
        g = seeded(seed)
        with torch.no_grad():
            w1 = model.gen.mapping(torch.randn((3, z_dim), generator=g))
            w2 = model.gen.mapping(torch.randn((3, z_dim), generator=g))
            seen = style_inputs(synthesis, model.styles(3, generator=seeded(seed), mixing=True))
        k = sum(torch.equal(w, w1) for w in seen)
        assert 1 <= k <= num_ws - 1
        assert all(torch.equal(w, w1 if i < k else w2) for i, w in enumerate(seen)), seed
        crossovers.add(k)
    assert crossovers == set(range(1, num_ws))  # every crossover layer is drawn
    model.train()  # in training, styles() mixes by default; a sample does not
    g = seeded(0)
    with torch.no_grad():
        w1 = model.gen.mapping(torch.randn((3, z_dim), generator=g))
        ws = model.styles(3, generator=seeded(0), mixing=False)
    assert torch.equal(ws, w1[:, None].expand(-1, num_ws, -1))
    never = stylegan(mixing_prob=0.0).train()
    ws = never.styles(3, generator=seeded(0))
    assert all(torch.equal(ws[:, i], ws[:, 0]) for i in range(num_ws))


# --------------------------------------------------------------------------- noise inputs


def test_noise_inputs_are_deterministic_under_a_seeded_generator():
    model = random_model()
    ws = torch.randn(3, 1, 5, generator=seeded(0)).expand(-1, model.gen.num_ws, -1)
    synthesis = model.gen.synthesis
    with torch.no_grad():
        torch.manual_seed(1)
        a = synthesis(ws, seeded(7))
        torch.manual_seed(2)  # the global stream plays no part
        b = synthesis(ws, seeded(7))
        c = synthesis(ws, seeded(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # one N(0, 1) image per sample, shared by the channels, scaled per channel
    layer = NoiseInjection(4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    x = torch.randn(2, 4, 3, 3, generator=seeded(1))
    noise = torch.randn((2, 1, 3, 3), generator=seeded(9))
    torch.testing.assert_close(layer(x, generator=seeded(9)), x + layer.weight.view(1, 4, 1, 1) * noise)
    noise_off(model)  # noise is the only thing the generator adds beyond ws
    with torch.no_grad():
        assert torch.equal(synthesis(ws, seeded(7)), synthesis(ws, seeded(8)))


# --------------------------------------------------------------------------- R1


def test_r1_of_a_linear_critic_is_the_squared_weight_norm():
    torch.manual_seed(0)
    critic = nn.Linear(5, 1)
    real = torch.randn(16, 5)
    r1, per_input, out = r1_penalty(critic, real)
    w = critic.weight
    closed = w.pow(2).sum()  # ∇_x (w·x + b) = w everywhere
    torch.testing.assert_close(per_input, closed.detach().expand(16))
    torch.testing.assert_close(r1, closed)
    torch.testing.assert_close(out, critic(real))
    (g_r1,) = torch.autograd.grad(r1, w)
    (g_closed,) = torch.autograd.grad(closed, w)  # 2w: the penalty is trained
    torch.testing.assert_close(g_r1, g_closed)


def test_r1_of_a_quadratic_critic_against_autograd_of_its_closed_form():
    # D(x) = ½ a ‖x‖²: ∇_x D = a x, so R1 = E a² ‖x‖², d/da = 2a E ‖x‖².
    a = torch.tensor(1.7, requires_grad=True)
    real = torch.randn(8, 1, 4, 4, generator=seeded(0))
    r1, per_input, _ = r1_penalty(lambda x: 0.5 * a * x.flatten(1).pow(2).sum(1, keepdim=True), real)
    closed = (a ** 2 * real.flatten(1).pow(2).sum(1)).mean()
    torch.testing.assert_close(r1, closed)
    torch.testing.assert_close(per_input, (a ** 2 * real.flatten(1).pow(2).sum(1)).detach())
    torch.testing.assert_close(torch.autograd.grad(r1, a)[0], torch.autograd.grad(closed, a)[0])
    # packs of 2: the squared norm of the gradient w.r.t. the whole critic input
    _, packed, _ = r1_penalty(lambda x: 0.5 * a * x.reshape(4, -1).pow(2).sum(1, keepdim=True), real, pack=2)
    torch.testing.assert_close(packed, per_input.view(4, 2).sum(1))


@pytest.mark.parametrize("mbstd_group", [0, 4])
def test_critic_loss_is_logistic_plus_half_gamma_r1(mbstd_group):
    model = random_model(r1_gamma=3.0, mbstd_group=mbstd_group).eval()
    real = make_batch(DIGITS, 8).x
    fake = model.sample(8, seeded(1))
    loss, logs = model.critic_objective(real, fake, None)
    x = real.clone().requires_grad_(True)
    d_real = model.critic(x)[0]
    (grad,) = torch.autograd.grad(d_real.sum(), x)  # the paper's code: ∇ of the batch's summed scores
    r1 = grad.flatten(1).pow(2).sum(1).mean()
    d_fake = model.critic(fake)[0]
    expected = F.softplus(-d_real).mean() + F.softplus(d_fake).mean() + 1.5 * r1
    torch.testing.assert_close(loss, expected)
    assert logs["r1"].item() == pytest.approx(r1.item(), rel=1e-5)
    torch.testing.assert_close(loss - 1.5 * logs["r1"], discriminator_loss(d_real, d_fake))
    # per sample: each real alone through the critic. Without the std layer that is the batch gradient;
    # with it the batch gradient carries the cross-sample terms of the minibatch statistic (documented)
    alone = []
    for i in range(8):
        xi = real[i:i + 1].clone().requires_grad_(True)
        alone.append(torch.autograd.grad(model.critic(xi)[0].sum(), xi)[0])
    alone = torch.cat(alone)
    if mbstd_group:
        assert not torch.allclose(alone, grad, atol=1e-6)
    else:
        torch.testing.assert_close(alone, grad)
    g_loss, _ = model.generator_objective(fake, None, real)
    torch.testing.assert_close(g_loss, F.softplus(-d_fake).mean())


def test_no_r1_at_gamma_zero():
    model = random_model(r1_gamma=0.0).eval()
    real, fake = make_batch(DIGITS, 8).x, model.sample(8, seeded(1))
    loss, logs = model.critic_objective(real, fake, None)
    assert "r1" not in logs
    torch.testing.assert_close(loss, discriminator_loss(model.critic(real)[0], model.critic(fake)[0]))


# --------------------------------------------------------------------------- w̄ and training


def test_w_avg_is_an_ema_of_the_generator_steps_w():
    model = random_model(w_avg_beta=0.9).train()
    old = model.w_avg.clone()
    torch.manual_seed(3)
    model.generate(8)  # a generator step's forward (grad on, training): its w is kept for after_step
    torch.manual_seed(3)
    with torch.no_grad():
        batch_mean = model.gen.mapping(torch.randn(8, model.config.z_dim)).mean(0)
    model.after_step("critic")
    assert torch.equal(model.w_avg, old)  # critic steps leave it
    model.after_step("gen")
    torch.testing.assert_close(model.w_avg, 0.9 * old + 0.1 * batch_mean)
    after = model.w_avg.clone()
    model.after_step("gen")  # no new generator forward: nothing to fold in
    assert torch.equal(model.w_avg, after)
    model.loss(make_batch(DIGITS, 8), "critic")  # a critic step's fakes (drawn without grad) are not recorded
    model.after_step("gen")
    assert torch.equal(model.w_avg, after)


def test_sampling_leaves_the_model_unchanged():
    model = random_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for psi in (1.0, 0.7, 0.0):
        model.sample(5, seeded(0), truncation=psi)
    model.after_step("gen")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("data", [DIGITS, TOY], ids=["digits", "toy"])
def test_a_few_training_steps_are_finite_and_move_w_avg(data):
    model = stylegan(data, depth=2)
    assert model.config.arch == ("stylegan" if data is DIGITS else "mlp")
    logs = train_steps(model, lambda: make_batch(data, 16), 4)
    assert all(math.isfinite(v) for row in logs for v in row.values())
    assert all("r1" in row for row in logs)
    assert model.w_avg.abs().sum() > 0  # four generator steps folded in
    assert all(torch.isfinite(p).all() for p in model.parameters())
    x = model.sample(6, seeded(0), truncation=0.7)
    assert x.shape == (6, *data.shape) and torch.isfinite(x).all()


def test_conditional_stylegan_takes_labels_on_images():
    model = stylegan(conditional=True)
    labels = torch.full((4,), 3)
    a = model.sample(4, seeded(0), condition=labels)
    assert torch.equal(a, model.sample(4, seeded(0), condition=labels))
    assert not torch.equal(a, model.sample(4, seeded(0), condition=torch.full((4,), 5)))
    out = model.loss(make_batch(DIGITS, 8), "critic")
    assert torch.isfinite(out.loss)


# --------------------------------------------------------------------------- refusals


def test_configs_and_data_it_refuses():
    cls = FAMILIES["stylegan"].config_cls
    with pytest.raises(ConfigError, match="virtual_batch_norm"):
        build(cls, {"virtual_batch_norm": True}, "x")
    with pytest.raises(ConfigError, match="critic: expected 'pooled'"):
        build(cls, {"critic": "radford"}, "x")
    with pytest.raises(ConfigError, match=r"minibatch_discrimination: expected 0 with the R1 penalty"):
        build(cls, {"minibatch_discrimination": 3}, "x")
    build(cls, {"minibatch_discrimination": 3, "r1_gamma": 0.0}, "x")
    with pytest.raises(ConfigError, match="mixing_prob"):
        build(cls, {"mixing_prob": 1.5}, "x")
    with pytest.raises(ValueError, match=r"4·2\^k"):
        stylegan(DataSpec(shape=(1, 28, 28), kind="image", levels=256))
    with pytest.raises(ValueError, match="square"):
        stylegan(DataSpec(shape=(1, 8, 6), kind="image", levels=17))


def test_the_registry_request_takes_a_truncation_and_a_family_without_the_trick_refuses_it():
    from gm.serving import predict_many

    model = random_model(TOY).eval()  # the toy StyleMLP has no noise inputs: ψ = 0 is one point, w̄'s
    at_mean = predict_many(model, [{"n": 4, "seed": 1, "truncation": 0.0}])
    assert at_mean.shape == (4, 2) and torch.allclose(torch.from_numpy(at_mean), torch.from_numpy(at_mean[:1]))
    plain = predict_many(model, [{"n": 4, "seed": 1}])
    assert (predict_many(model, [{"n": 4, "seed": 1, "truncation": 1.0}]) == plain).all()  # ψ = 1: no truncation
    gan = FAMILIES["gan"](build(FAMILIES["gan"].config_cls, {"hidden": 8, "depth": 1}, "test.gan"), TOY)
    with pytest.raises(ValueError, match="truncation: gan has no truncation trick"):
        predict_many(gan, [{"n": 2, "truncation": 0.5}])
