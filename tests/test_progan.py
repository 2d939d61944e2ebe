"""ProGAN (Karras et al. 2018): fade-in through the nets, the growing schedule and its survival of save/load,
the drift term and the penalty against closed forms, the equalised learning rate, and real steps on digits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gm.core.config import ConfigError, build
from gm.core.registry import FAMILIES
from gm.data.dataspec import DataSpec
from gm.models.base import load_model, save_model
from gm.models.progan import ProGANConfig, drift_penalty
from gm.nn.progan import ProGANCritic, ProGANGenerator, growth_stage, progan_levels, real_at_stage
from gm.nn.scaled import EqualConv2d, EqualLinear, MinibatchStdDev, PixelNorm
from tests.helpers import DIGITS, TOY, make_batch, seeded, train_steps

IMAGE16 = DataSpec(shape=(3, 16, 16), kind="image", levels=256)


def progan(data: DataSpec = DIGITS, **overrides):
    cls = FAMILIES["progan"]
    torch.manual_seed(0)
    return cls(build(cls.config_cls, {"hidden": 8, "z_dim": 6, **overrides}, "test.progan"), data)


# --------------------------------------------------------------------------- fade-in


def test_fade_in_runs_from_the_low_resolution_path_to_the_new_block():
    torch.manual_seed(0)
    g = ProGANGenerator(6, 3, levels=3, hidden=8)  # 4, 8, 16; linear output
    z = torch.randn(5, 6)
    low = g(z, level=1)  # (5, 3, 8, 8)
    high = g(z, level=2, alpha=1.0)  # (5, 3, 16, 16)
    up = F.interpolate(low, scale_factor=2, mode="nearest")
    assert low.shape == (5, 3, 8, 8) and high.shape == (5, 3, 16, 16)
    torch.testing.assert_close(g(z, level=2, alpha=0.0), up, rtol=0, atol=0)
    # α = 1 is the new block's output: toRGB_2(block_2(h_1)), written out here
    h = g.blocks[0](g.first(g.dense(z).view(5, 8, 4, 4)))
    torch.testing.assert_close(high, g.to_rgb[2](g.blocks[1](h)), rtol=0, atol=0)
    torch.testing.assert_close(g(z, level=2, alpha=0.25), 0.75 * up + 0.25 * high)
    # the critic mirrors it: at α = 0 it reads the input at the lower resolution
    d = ProGANCritic(3, levels=3, hidden=8)
    x = torch.randn(8, 3, 16, 16)
    torch.testing.assert_close(d(x, level=2, alpha=0.0), d(F.avg_pool2d(x, 2), level=1), rtol=0, atol=0)
    torch.testing.assert_close(d(x, level=1), d(F.avg_pool2d(x, 2), level=1), rtol=0, atol=0)
    with pytest.raises(ValueError, match="level 0"):
        g(z, level=0, alpha=0.5)


def test_the_models_samples_fade_in_from_the_upsampled_low_resolution():
    model = progan(phase_steps=3)  # 8×8 digits: 4×4 for 3 steps, fade in 8×8 over 3, then 8×8
    tanh_low = model.sample(4, generator=seeded(1))  # level 0: 4×4 images, upsampled to 8×8
    assert model.stage() == (0, 1.0) and tanh_low.shape == (4, 1, 8, 8)
    assert torch.equal(tanh_low, F.interpolate(tanh_low[:, :, ::2, ::2], scale_factor=2, mode="nearest"))
    model.growth.step.fill_(3)  # the first fade-in step: α = 0
    assert model.stage() == (1, 0.0)
    assert torch.equal(model.sample(4, generator=seeded(1)), tanh_low)
    model.growth.step.fill_(6)  # stabilising 8×8: the new block's images, through the model's generator
    assert model.stage() == (1, 1.0)
    z = model.pixel_norm(torch.randn((4, 6), generator=seeded(1)))
    g = model.gen
    expected = torch.tanh(g.to_rgb[1](g.blocks[0](g.first(g.dense(z).view(4, 8, 4, 4)))))
    torch.testing.assert_close(model.sample(4, generator=seeded(1)), expected.clamp(-1, 1 - 2 ** -24))


def test_reals_are_seen_at_the_current_resolution():
    x = make_batch(IMAGE16, 4).x
    pooled4 = F.avg_pool2d(x, 4)
    torch.testing.assert_close(real_at_stage(x, 0, 1.0), F.interpolate(pooled4, size=(16, 16), mode="nearest"))
    assert torch.equal(real_at_stage(x, 2, 1.0), x)
    half = real_at_stage(x, 2, 0.5)  # fading in 16×16: halfway between the 8×8 version and x
    torch.testing.assert_close(half, 0.5 * F.interpolate(F.avg_pool2d(x, 2), scale_factor=2) + 0.5 * x)
    torch.testing.assert_close(real_at_stage(x, 1, 0.0), real_at_stage(x, 0, 1.0))


# --------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize("step,expected", [
    (0, (0, 1.0)), (9, (0, 1.0)),  # stabilise 4×4
    (10, (1, 0.0)), (15, (1, 0.5)), (19, (1, 0.9)),  # fade in 8×8
    (20, (1, 1.0)), (29, (1, 1.0)),  # stabilise 8×8
    (30, (2, 0.0)), (32, (2, 0.2)),  # fade in 16×16
    (40, (2, 1.0)), (10_000, (2, 1.0)),  # then the full resolution for good
])
def test_growth_schedule(step, expected):
    level, alpha = growth_stage(step, 10, 3)
    assert level == expected[0] and alpha == pytest.approx(expected[1])


def test_no_growing_with_phase_steps_zero_or_one_level():
    assert growth_stage(0, 0, 3) == (2, 1.0)
    assert growth_stage(5, 10, 1) == (0, 1.0)
    assert progan(phase_steps=0).resolution() == 8


def test_the_schedule_advances_per_generator_step_and_survives_save_load(tmp_path):
    model = progan(phase_steps=2)
    logs = train_steps(model, lambda: make_batch(DIGITS, 8), 3)
    assert [(row["level"], row["alpha"]) for row in logs] == [(0.0, 1.0), (0.0, 1.0), (1.0, 0.0)]
    assert int(model.growth.step) == 3 and model.stage() == (1, 0.5)
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert int(loaded.growth.step) == 3 and loaded.stage() == (1, 0.5)
    assert torch.equal(loaded.sample(3, generator=seeded(0)), model.eval().sample(3, generator=seeded(0)))
    fresh = progan(phase_steps=2)  # a resume: a fresh model takes the checkpoint's state
    assert fresh.stage() == (0, 1.0)
    fresh.load_state_dict(model.state_dict())
    assert fresh.stage() == (1, 0.5)
    fresh.after_step("critic")  # critic steps do not move the schedule
    assert fresh.stage() == (1, 0.5)
    fresh.after_step("gen")
    assert fresh.stage() == (1, 1.0) and int(fresh.growth.step) == 4


# --------------------------------------------------------------------------- the loss


def test_drift_term_closed_form():
    d_real = torch.tensor([[1.0], [-2.0], [3.0], [0.5]])
    assert drift_penalty(d_real).item() == pytest.approx((1 + 4 + 9 + 0.25) / 4)


@pytest.mark.parametrize("w", [[0.3, 0.4], [3.0, -4.0]])
def test_critic_loss_is_wgan_gp_plus_drift_on_a_linear_critic(w):
    # D(x) = w·x + b: its gradient is w everywhere, so the penalty is (‖w‖ - 1)² whatever the interpolates
    model = progan(TOY, depth=1, drift=0.25)
    lin = EqualLinear(2, 1, gain=1.0)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([w]) / lin.scale)
        lin.bias.fill_(0.5)
    model.critic.body = nn.Identity()
    model.critic.head = lin
    real, fake = make_batch(TOY, 16).x, make_batch(TOY, 16, seed=1).x
    loss, logs = model.critic_objective(real, fake, None)
    w_t = torch.tensor(w)
    d_real, d_fake = real @ w_t + 0.5, fake @ w_t + 0.5
    gp = (w_t.norm() - 1) ** 2
    expected = -(d_real.mean() - d_fake.mean()) + 10.0 * gp + 0.25 * d_real.pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["gp"].item() == pytest.approx(gp.item(), rel=1e-5)
    assert logs["drift"].item() == pytest.approx(d_real.pow(2).mean().item(), rel=1e-5)
    g_loss, _ = model.generator_objective(fake, None, real)
    assert g_loss.item() == pytest.approx(-d_fake.mean().item(), rel=1e-5)


def test_paper_defaults():
    c = build(ProGANConfig, {}, "x")
    assert (c.lr_gen, c.lr_critic, c.betas, c.n_critic, c.gp_weight, c.drift) == (1e-3, 1e-3, (0.0, 0.99), 1, 10.0,
                                                                                    1e-3)
    groups = {g.name: g for g in progan().step_groups()}
    assert (groups["critic"].lr, groups["gen"].lr, groups["critic"].repeats) == (1e-3, 1e-3, 1)
    assert groups["critic"].betas == groups["gen"].betas == (0.0, 0.99)


def test_bad_configs_and_data_are_refused():
    with pytest.raises(ConfigError, match="virtual_batch_norm"):
        build(ProGANConfig, {"virtual_batch_norm": True}, "x")
    with pytest.raises(ConfigError, match="drift"):
        build(ProGANConfig, {"drift": -1.0}, "x")
    with pytest.raises(ValueError, match="4·2\\^k"):
        progan(DataSpec(shape=(1, 28, 28), kind="image", levels=256))
    assert progan_levels(IMAGE16) == 3
    assert progan(DataSpec(shape=(1, 28, 28), kind="image", levels=256), arch="mlp").sample(2).shape == (2, 1, 28, 28)


# --------------------------------------------------------------------------- the nets


@pytest.mark.parametrize("data", [DIGITS, IMAGE16, TOY], ids=["8x8", "16x16", "toy"])
def test_equalised_learning_rate_everywhere(data):
    model = progan(data)
    for net in (model.gen, model.critic):
        modules = list(net.modules())
        assert not any(type(m) in (nn.Linear, nn.Conv2d, nn.ConvTranspose2d) for m in modules)
        weighted = [m for m in modules if isinstance(m, (EqualLinear, EqualConv2d))]
        assert weighted and all(hasattr(m, "scale") for m in weighted)
    assert any(isinstance(m, PixelNorm) for m in model.gen.modules())
    if data.kind == "image":
        assert model.config.arch == "progan"
        assert any(isinstance(m, MinibatchStdDev) for m in model.critic.modules())
        levels = progan_levels(data)
        assert len(model.gen.to_rgb) == len(model.critic.body.from_rgb) == levels
    else:
        assert model.config.arch == "mlp" and model.stage() == (0, 1.0)


def test_the_critic_takes_any_batch_size():
    model = progan()
    for b in (1, 3, 6, 8):
        out, features = model.critic_forward(make_batch(DIGITS, b).x)
        assert out.shape == (b, 1) and features.shape == (b, 8)


def test_sampling_is_deterministic_and_leaves_the_model_as_it_was():
    model = progan(phase_steps=1)
    train_steps(model, lambda: make_batch(DIGITS, 8), 2)  # mid fade-in
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = model.sample(4, generator=seeded(0)), model.sample(4, generator=seeded(0))
    assert torch.equal(a, b)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_few_steps_on_digits_pass_through_a_fade_in_and_stay_finite():
    model = progan(phase_steps=2)  # 8×8: 4×4 for 2 steps, fade in 8×8 over 2 (α 0, 0.5), then 8×8
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    stages = []

    def record(out):
        stages.append(model.stage())
        assert torch.isfinite(out.loss)

    logs = train_steps(model, (make_batch(DIGITS, 16, seed=i) for i in range(20)), 8, check=record)
    assert all(math.isfinite(v) for row in logs for v in row.values())
    assert (0, 1.0) in stages and (1, 0.0) in stages and (1, 0.5) in stages and stages[-1] == (1, 1.0)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # every layer of both nets, the 4×4 toRGB/fromRGB included, has been trained on the way
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, initial[n])]
    assert not unchanged, unchanged
    x = model.sample(4, generator=seeded(0))
    assert x.shape == (4, 1, 8, 8) and x.min() >= -1 and x.max() < 1
