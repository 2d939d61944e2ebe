"""Glow (Kingma & Dhariwal 2018): a multi-scale flow of steps (ActNorm, invertible 1×1 conv,
affine coupling), exact likelihood.

Multi-scale architecture (§3, Fig. 2b): L levels; each squeezes (C, H, W) -> (4C, H/2, W/2),
runs K steps of

    actnorm (§3.1) -> invertible 1×1 conv, LU-parameterised (§3.2, Eq. 10) -> affine coupling (§3.3)

and, except the last, factors half its channels out to a Gaussian prior (learned from the
kept half, as in the paper's code). log p(x) = Σ log N(z; 0, I) + log|det ∂z/∂x| with z every
factored-out piece and the last level's output.

`arch: multiscale` needs images (C, H, W) with H and W divisible by 2^L (8×8 digits: L <= 3;
L = 2 gives 4×8×8 -> (4, 4, 4) -> (8, 2, 2)). Toys (2,) get `arch: vector`, the same step on
flattened vectors: ActNorm1d, an LU-parameterised D×D linear map, an MLP affine coupling, L·K
times. `arch: auto` picks multiscale for images and vector otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from gm.core.config import bounded
from gm.data.dataspec import DataSpec
from gm.flows.dequantization import DequantizationConfig
from gm.flows.image import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    FlowStack,
    InvConv1x1,
    MultiScaleFlow,
    channel_mask,
    coupling_conv_net,
)
from gm.models._flow import FlowDensityModel, resolve_arch
from gm.nn.mlp import Activation, mlp
from gm.core.registry import register_family

__all__ = ["Glow", "GlowConfig"]


@dataclass(frozen=True)
class GlowConfig(DequantizationConfig):
    levels: int = bounded(2, gt=0)  # L; the paper uses 3 on 32×32 CIFAR-10, 8×8 digits allow at most 3
    steps_per_level: int = bounded(8, gt=0)  # K; the paper's 32 (CIFAR-10) is far more than 8×8 data needs
    hidden: int = bounded(64, gt=0)  # channels (units) of each coupling net; the paper's 512 suits 32×32 images
    depth: int = bounded(2, gt=0)  # hidden layers of each coupling net (the paper: 3×3 conv, 1×1 conv)
    activation: Activation = "relu"  # of the vector fallback's MLPs (the conv nets use ReLU, as the paper)
    coupling: Literal["affine", "additive"] = "affine"  # §3.3; "additive" is the paper's NICE ablation (§5.2)
    scale: Literal["sigmoid", "tanh"] = "sigmoid"  # affine scale: sigmoid(raw + 2) (Glow's code) or exp(2·tanh)
    learned_prior: bool = True  # N(μ(h), σ(h)) for each factored-out half, from the kept half (Glow's code)
    arch: Literal["auto", "multiscale", "vector"] = "auto"  # auto: multiscale for images, vector otherwise
    lr: float = bounded(1e-3, gt=0)  # Adam; the paper's code (openai/glow train.py) defaults to lr 1e-3


def vector_step(dim: int, c: GlowConfig) -> list:
    """One Glow step on (B, D) in the density order: ActNorm1d, LU linear map, MLP coupling."""
    mask = channel_mask(dim)  # (D,) the first half passes through, as Glow's channel split
    if c.coupling == "affine":
        coupling = AffineCoupling(mask, mlp(dim, 2 * dim, c.hidden, c.depth, c.activation), c.scale)
    else:
        coupling = AdditiveCoupling(mask, mlp(dim, dim, c.hidden, c.depth, c.activation))
    torch.nn.init.zeros_(coupling.net[-1].weight)  # every coupling starts at a fixed map (§3.3)
    torch.nn.init.zeros_(coupling.net[-1].bias)
    return [ActNorm(dim), InvConv1x1(dim), coupling]


def image_step(channels: int, height: int, width: int, c: GlowConfig) -> list:
    """One Glow step on (B, C, H, W) in the density order: ActNorm, 1×1 conv (LU), conv coupling."""
    mask = channel_mask(channels, height, width)  # (C, H, W): the first C/2 channels pass through
    if c.coupling == "affine":
        coupling = AffineCoupling(mask, coupling_conv_net(channels, 2 * channels, c.hidden, c.depth), c.scale)
    else:
        coupling = AdditiveCoupling(mask, coupling_conv_net(channels, channels, c.hidden, c.depth))
    return [ActNorm(channels), InvConv1x1(channels), coupling]


@register_family("glow")
class Glow(FlowDensityModel):
    """Glow on images (multi-scale) or on vectors (its step, flattened); exact log p(x)."""

    config_cls = GlowConfig

    def __init__(self, config: GlowConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        self.arch = resolve_arch(c.arch, data, c.levels, "levels")
        if self.arch == "multiscale":
            def level_steps(channels: int, height: int, width: int) -> list:
                return [layer for _ in range(c.steps_per_level) for layer in image_step(channels, height, width, c)]

            self.flow = MultiScaleFlow(data.shape, c.levels, level_steps, c.learned_prior)
        else:
            steps = [layer for _ in range(c.levels * c.steps_per_level) for layer in vector_step(data.dim, c)]
            self.flow = FlowStack(steps[::-1])  # FlowStack lists the sampling order

    def finish_samples(self, x: torch.Tensor) -> torch.Tensor:
        if self.data.levels:
            # Far from trained weights the inverse can overflow float32 (each coupling's shift scales
            # with its input, ~K·L times over), and ∞ - ∞ downstream gives NaN: ±∞ clamp into model
            # space below, NaN is sent to 0 so discrete samples always lie in [-1, 1).
            x = torch.nan_to_num(x, nan=0.0)
        return super().finish_samples(x)
