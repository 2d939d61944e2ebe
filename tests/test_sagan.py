"""SAGAN (Zhang et al. 2019): its backbones (self-attention at the asked resolution, spectral norm on every
weight of both nets), its hinge objective, and a few real steps on digits-shaped data."""

from __future__ import annotations

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
