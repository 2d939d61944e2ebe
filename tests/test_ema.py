"""The exponential moving average of G's weights (`ema`, ProGAN/StyleGAN/BigGAN's 0.999): its recurrence
against the closed form, sampling through it without disturbing the live weights, spectral norm's
parametrised weights, and the round trip through save/load."""

from __future__ import annotations

import math

import pytest
import torch

from gm.core.config import ConfigError, build
from gm.core.registry import FAMILIES
from gm.data.dataspec import DataSpec
from gm.models.base import build_model, load_model, save_model

DIGITS = DataSpec(shape=(1, 8, 8), kind="image", num_classes=10, levels=17)


def model(family: str = "gan", **overrides):
    torch.manual_seed(0)
    cfg = {"arch": "dcgan", "z_dim": 4, "hidden": 8, **overrides}
    if family != "gan":
        cfg.pop("arch")
    return build_model(family, build(FAMILIES.get_or_fail(family).config_cls, cfg, f"test.{family}"), DIGITS)


def decays(d: float, k: int) -> list[float]:
    return [min(d, (1 + t) / (10 + t)) for t in range(k)]


def test_without_ema_nothing_is_added():
    m = model()
    assert not any(k.startswith("ema") for k in m.state_dict())
    before = [p.clone() for p in m.gen.parameters()]
    with m.ema_weights():
        assert all(torch.equal(a, b) for a, b in zip(before, m.gen.parameters()))


def test_the_average_follows_its_recurrence_in_closed_form():
    d, k = 0.9, 25
    m = model(ema=d)
    p0 = [p.detach().clone() for p in m.gen.parameters()]
    with torch.no_grad():  # every generator step moves G to the same new weights c = p0 + 1
        for p in m.gen.parameters():
            p.add_(1.0)
    for _ in range(k):
        m.after_step("gen")
    m.after_step("critic")  # critic steps leave the average alone
    keep = math.prod(decays(d, k))  # the initial weights' share after k steps
    for (p, e), start in zip(m._ema_pairs(), p0):
        assert torch.allclose(e, start * keep + (start + 1.0) * (1 - keep), atol=1e-6)
    assert int(m.ema_updates) == k


def test_samples_come_from_the_average_and_the_live_weights_stay():
    m = model(ema=0.999)
    m.eval()
    live = [p.detach().clone() for p in m.gen.parameters()]
    with torch.no_grad():
        for _, e in m._ema_pairs():
            e.mul_(0.5)  # an average that differs from the live weights
    got = m.sample(6, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(live, m.gen.parameters()))  # restored exactly
    twin = model()  # the same nets without an EMA, its live weights set to the average
    twin.eval()
    twin.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("ema")})
    with torch.no_grad():
        for p, (_, e) in zip(twin.gen.parameters(), m._ema_pairs()):
            p.copy_(e)
    assert torch.allclose(got, twin.sample(6, torch.Generator().manual_seed(3)))
    assert not torch.allclose(got, m.generate(6, None, torch.Generator().manual_seed(3)).clamp(-1, 1))


@pytest.mark.parametrize("family", ["sagan", "biggan", "stylegan", "progan"])
def test_every_scaled_family_averages_its_final_weights(family, tmp_path):
    m = model(family, ema=0.999)
    names = m._ema_names
    assert names == [n for n, _ in m.gen.named_parameters()]
    if family in ("sagan", "biggan"):  # spectral norm was in place before the average was set up
        assert any("parametrizations" in n for n in names)
    with torch.no_grad():
        for p in m.gen.parameters():
            p.add_(0.01)
    m.after_step("gen")
    m.eval()
    a = m.sample(4, torch.Generator().manual_seed(1))
    back = load_model(save_model(m, tmp_path / "m"))
    back.eval()
    assert int(back.ema_updates) == 1
    assert torch.allclose(a, back.sample(4, torch.Generator().manual_seed(1)), atol=1e-6)


def test_a_decay_of_one_or_more_is_refused():
    with pytest.raises(ConfigError, match="ema"):
        model(ema=1.0)
