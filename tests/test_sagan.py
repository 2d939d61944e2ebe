"""SAGAN (Zhang et al. 2019): its backbones (self-attention at the asked resolution, spectral norm on every
weight of both nets), its hinge objective, and a few real steps on digits-shaped data."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from gm.data.dataspec import DataSpec
from gm.nn.sagan import SAGANCritic, SAGANGenerator, sagan_blocks
from gm.nn.scaled import SelfAttention


def attention_resolutions(net: nn.Module, x: torch.Tensor) -> list[int]:
    """The width of the maps each self-attention block of `net` sees on input x."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
             for m in net.modules() if isinstance(m, SelfAttention)]
    net(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("size,attention", [(8, 8), (16, 8), (32, 16), (32, 32)])
def test_attention_sits_at_the_asked_resolution_in_both_nets(size, attention):
    torch.manual_seed(0)
    g = SAGANGenerator(6, (3, size, size), 8, attention, out_activation="tanh")
    d = SAGANCritic(3, size, 8, attention)
    z = torch.randn(4, 6)
    x = g(z)
    assert x.shape == (4, 3, size, size) and x.abs().max() < 1
    assert attention_resolutions(g, z) == [attention]
    assert attention_resolutions(d, x) == [attention]
    assert d(x).shape == (4, d.feature_dim)


def test_every_weight_of_both_nets_is_spectrally_normalised():
    for net in (SAGANGenerator(6, (1, 16, 16), 8, 16), SAGANCritic(1, 16, 8, 16)):
        weighted = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert weighted and all(parametrize.is_parametrized(m, "weight") for m in weighted)


def test_sizes_and_attention_resolutions_that_do_not_fit_name_the_field():
    with pytest.raises(ValueError, match="arch: 'sagan' needs images 4·2\\^k pixels wide"):
        sagan_blocks(DataSpec(shape=(1, 28, 28), kind="image", levels=256), 8)
    with pytest.raises(ValueError, match="attention: expected a resolution of the generator's blocks \\(8, 16\\)"):
        sagan_blocks(DataSpec(shape=(1, 16, 16), kind="image", levels=17), 4)
    with pytest.raises(ValueError, match="square image data"):
        sagan_blocks(DataSpec(shape=(2,), kind="toy"), 8)


# --------------------------------------------------------------------------- the family


def sagan(data: DataSpec, **overrides):
    from gm.core.config import build
    from gm.core.registry import FAMILIES

    cls = FAMILIES["sagan"]
    torch.manual_seed(0)
    return cls(build(cls.config_cls, {"hidden": 8, **overrides}, "test.sagan"), data)


def test_the_family_trains_with_the_hinge_loss_at_two_time_scales():
    from gm.nn.scaled import power_iterations_paused
    from tests.helpers import DIGITS, make_batch, train_steps

    model = sagan(DIGITS)
    groups = {g.name: g for g in model.step_groups()}
    assert (groups["critic"].lr, groups["gen"].lr, groups["critic"].repeats) == (4e-4, 1e-4, 1)  # TTUR, §4.2
    assert model.config.betas == (0.0, 0.9)
    real = make_batch(DIGITS, 16).x
    fake = model.sample(16, generator=torch.Generator().manual_seed(1))
    with power_iterations_paused(model.critic):  # the objective and the reference read one critic
        loss, _ = model.critic_objective(real, fake, None)
        d_real, d_fake = model.critic_forward(real)[0], model.critic_forward(fake)[0]
        g_loss, _ = model.generator_objective(fake, None, real)
    torch.testing.assert_close(loss, torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean())
    torch.testing.assert_close(g_loss, -d_fake.mean())
    logs = train_steps(model, lambda: make_batch(DIGITS, 16), 5)
    assert all(math.isfinite(v) for row in logs for v in row.values())


def test_on_vectors_the_family_is_spectrally_normalised_mlps():
    from tests.helpers import TOY

    model = sagan(TOY)
    assert model.config.arch == "mlp"
    weighted = [m for net in (model.gen, model.critic) for m in net.modules() if isinstance(m, nn.Linear)]
    assert weighted and all(parametrize.is_parametrized(m, "weight") for m in weighted)


def test_any_adversarial_family_can_use_the_sagan_nets():
    from gm.core.config import build
    from gm.core.registry import FAMILIES
    from tests.helpers import DIGITS, make_batch

    cls = FAMILIES["wgan_gp"]
    model = cls(build(cls.config_cls, {"arch": "sagan", "hidden": 8, "attention": 8}, "test.wgan_gp"), DIGITS)
    assert any(isinstance(m, SelfAttention) for m in model.gen.modules())
    assert torch.isfinite(model.loss(make_batch(DIGITS, 8), "critic").loss)
