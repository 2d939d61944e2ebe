"""RealNVP (Dinh et al. 2017, "Density estimation using Real NVP"): affine couplings with
checkerboard and channel-wise masks in a multi-scale architecture, exact likelihood.

Affine coupling (§3.2-3.4; Eq. 9 is the masked form) with a binary mask b (1 = passed through,
0 = transformed), density direction:

    y = b⊙x + (1 - b)⊙(x⊙exp(s(b⊙x)) + t(b⊙x)),    log|det ∂y/∂x| = Σ (1 - b)⊙s(b⊙x)

with s = scale_factor·tanh(raw) bounded, so one coupling scales by at most exp(±scale_factor) and
a deep stack cannot blow up early in training. s and t come from one small conv net (a 3×3 conv,
1×1 convs, a 3×3 output conv; the paper uses ResNets) whose last layer starts at zero: every
coupling starts at the identity. Masks (§3.4, Fig. 3): a spatial checkerboard, or the first or
second half of the channels; consecutive couplings alternate a mask with its complement.

Multi-scale architecture (§3.6), `arch: multiscale`: S = `scales` scales; each but the last runs,
in the density direction,

    3 checkerboard couplings -> squeeze (C, H, W) -> (4C, H/2, W/2) -> 3 channel-wise couplings

and factors half its channels out to the N(0, I) prior (Eq. 13); the last scale is 4 checkerboard
couplings. log p(x) = Σ log N(z; 0, I) + log|det ∂z/∂x|, z every factored-out piece and the last
scale's output. S scales squeeze S - 1 times and the last checkerboard needs at least a 2×2 grid,
so H and W must be divisible by 2^S: 8×8 digits take S <= 3 (S = 2: (1, 8, 8) -> (4, 4, 4) ->
keep (2, 4, 4)). Batch normalisation (§3.7) is left out; `actnorm` puts a per-channel affine
with data-dependent init (Kingma & Dhariwal 2018, §3.1) after every coupling instead.

`arch: vector` (2-D toys): `n_layers` couplings on the flattened vector with MLP s/t nets,
masks alternating between even and odd indices. `arch: auto` picks multiscale for images and
vector otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import torch
from torch import nn

from gm.core.config import bounded
from gm.data.dataspec import DataSpec
from gm.flows.dequantization import DequantizationConfig
from gm.flows.image import (
    ActNorm,
    AffineCoupling,
    FlowStack,
    MultiScaleFlow,
    Squeeze,
    channel_mask,
    checkerboard_mask,
    coupling_conv_net,
)
from gm.flows.layers import Flow
from gm.models._flow import FlowDensityModel, resolve_arch
from gm.models.base import StepGroup
from gm.nn.mlp import Activation, mlp
from gm.core.registry import register_family

__all__ = ["RealNVP", "RealNVPConfig"]

CHECKERBOARD_COUPLINGS = 3  # per scale, before the squeeze (§3.6)
CHANNEL_COUPLINGS = 3  # per scale, after the squeeze (§3.6)
FINAL_COUPLINGS = 4  # checkerboard couplings of the last scale (§3.6)


@dataclass(frozen=True)
class RealNVPConfig(DequantizationConfig):
    arch: Literal["auto", "multiscale", "vector"] = "auto"  # auto: multiscale (§3.6) for images, else vector
    scales: int = bounded(2, gt=0)  # §3.6, S - 1 squeezes; the paper's CIFAR-10 model downscales once (§4.1)
    n_layers: int = bounded(8, gt=0)  # vector arch: couplings, even/odd masks alternating
    hidden: int = bounded(64, gt=0)  # feature maps (units) of each s/t net; §4.1: 64 for CIFAR-10
    depth: int = bounded(2, gt=0)  # hidden layers of each s/t net (§4.1: ResNets of 2-8 residual blocks)
    activation: Activation = "relu"  # of the vector arch's MLPs (conv nets: ReLU, as the paper's ResNets)
    scale_factor: float = bounded(2.0, gt=0)  # s = scale_factor·tanh(raw) (s of Eq. 9): |s| <= scale_factor
    actnorm: bool = True  # ActNorm after each coupling (Glow §3.1) in place of the paper's batch norm (§3.7)
    lr: float = bounded(1e-3, gt=0)  # §4.1: ADAM with default hyperparameters
    weight_decay: float = bounded(0.0, ge=0)  # §4.1: L2 5e-5 on the scale weights; 0 leaves toys unregularised


def coupling(mask: torch.Tensor, net: nn.Module, c: RealNVPConfig) -> list[Flow]:
    """An affine coupling with a tanh-bounded scale, then (with `actnorm`) an ActNorm; density order."""
    layers: list[Flow] = [AffineCoupling(mask, net, "tanh", c.scale_factor)]
    if c.actnorm:
        layers.append(ActNorm(mask.shape[0]))  # per channel for (C, H, W) masks, per dimension for (D,)
    return layers


def conv_coupling(mask: torch.Tensor, c: RealNVPConfig) -> list[Flow]:
    """A coupling on (B, C, H, W) with a zero-initialised conv s/t net (starts at the identity)."""
    channels = mask.shape[0]
    return coupling(mask, coupling_conv_net(channels, 2 * channels, c.hidden, c.depth), c)


def checkerboard_couplings(n: int, channels: int, height: int, width: int, c: RealNVPConfig) -> list[Flow]:
    """n couplings with alternating checkerboard masks (§3.4, Fig. 3 left); density order."""
    return [layer for i in range(n)
            for layer in conv_coupling(checkerboard_mask(channels, height, width, parity=i % 2), c)]


def scale_steps(channels: int, height: int, width: int, c: RealNVPConfig) -> list[Flow]:
    """One scale but the last (§3.6): checkerboard couplings, squeeze, channel-wise couplings."""
    checkerboard = checkerboard_couplings(CHECKERBOARD_COUPLINGS, channels, height, width, c)
    squeezed = (4 * channels, height // 2, width // 2)  # (4C, H/2, W/2)
    channelwise = [layer for i in range(CHANNEL_COUPLINGS)
                   for layer in conv_coupling(channel_mask(*squeezed, parity=i % 2), c)]
    return [*checkerboard, Squeeze(), *channelwise]


def vector_coupling(mask: torch.Tensor, c: RealNVPConfig) -> list[Flow]:
    """A coupling on (B, D) with a zero-initialised MLP s/t net (starts at the identity)."""
    dim = mask.numel()
    net = mlp(dim, 2 * dim, c.hidden, c.depth, c.activation)  # x_b -> (raw s, t)
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return coupling(mask, net, c)


@register_family("realnvp")
class RealNVP(FlowDensityModel):
    """RealNVP on images (multi-scale, §3.6) or on vectors (MLP couplings); exact log p(x)."""

    config_cls = RealNVPConfig

    def __init__(self, config: RealNVPConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        self.arch = resolve_arch(c.arch, data, c.scales, "scales")
        if self.arch == "multiscale":
            self.flow = MultiScaleFlow(
                data.shape, c.scales, partial(scale_steps, c=c), learned_prior=False,  # factored out to N(0, I)
                squeeze_first=False, make_last=partial(checkerboard_couplings, FINAL_COUPLINGS, c=c))
        else:
            even = (torch.arange(data.dim) % 2 == 0).float()  # (D,)
            masks = [even if i % 2 == 0 else 1 - even for i in range(c.n_layers)]
            steps = [layer for mask in masks for layer in vector_coupling(mask, c)]
            self.flow = FlowStack(steps[::-1])  # FlowStack lists the sampling order

    def step_groups(self) -> list[StepGroup]:
        wd = self.config.weight_decay
        return [replace(g, weight_decay=wd) if g.name == "flow" else g for g in super().step_groups()]
