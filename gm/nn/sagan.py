"""SAGAN backbones (Zhang et al. 2019): convolutional generator and critic with a self-attention block at a
chosen resolution and spectral normalisation in both networks, for square images of 4·2^k pixels.

Generator: z -> spectrally normalised linear to a 4×4 map of `channels · 2^k` -> k up blocks (BN, ReLU,
nearest ×2, 3×3 conv, halving the channels) -> BN, ReLU, 3×3 conv to the image's channels; the
self-attention block follows the up block whose output is `attention` pixels wide. The output's bounding
to model space is the caller's (`out_activation`), and so is the normalisation (`norm`: virtual batch
norm replaces batch norm when asked), as for DCGAN.

Critic: 3×3 conv to `channels`, then k down blocks (LeakyReLU 0.1, 3×3 conv, LeakyReLU 0.1, 4×4 stride-2
conv, doubling the channels) to 4×4, the self-attention block before the down block whose input is
`attention` pixels wide, then LeakyReLU and a sum over positions (the SNGAN/SAGAN critics' global sum
pooling) into the feature vector. Every convolution and linear map of both nets is spectrally normalised
(SAGAN §4: in the generator too); the critic's head, added by the adversarial base, is normalised by the
family with `apply_spectral_norm`.

These are the papers' building blocks at small widths (the residual blocks of SNGAN/SAGAN's code are
plain blocks here): enough for 8-32 pixel images on a CPU, configurable up to GPU widths by `channels`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from gm.data.dataspec import DataSpec
from gm.nn.mlp import Activation, make_activation
from gm.nn.scaled import SelfAttention, apply_spectral_norm

LEAK = 0.1  # SNGAN/SAGAN critics: LeakyReLU(0.1)


def sagan_blocks(data: DataSpec, attention: int) -> int:
    """The number of ×2 blocks between 4×4 and the image (which must be square and 4·2^k wide, k ≥ 1), after
    checking that `attention` is one of the resolutions in between; a ValueError naming the field otherwise."""
    if data.kind != "image" or len(data.shape) != 3 or data.shape[1] != data.shape[2]:
        raise ValueError(f"arch: 'sagan' needs square image data (C, H, H), got {data.kind} data of shape "
                         f"{tuple(data.shape)}")
    size = data.shape[1]
    k = int(round(math.log2(size / 4))) if size >= 8 else 0
    if k < 1 or 4 * 2 ** k != size:
        raise ValueError(f"arch: 'sagan' needs images 4·2^k pixels wide (8, 16, 32, ...), got {size}")
    sizes = [4 * 2 ** i for i in range(1, k + 1)]
    if attention not in sizes:
        raise ValueError(f"attention: expected a resolution of the generator's blocks ({', '.join(map(str, sizes))}), "
                         f"got {attention}")
    return k


class SAGANGenerator(nn.Module):
    def __init__(self, in_dim: int, shape: tuple[int, int, int], channels: int, attention: int,
                 out_activation: Activation | None = None, norm: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        c_img, size, _ = shape
        k = sagan_blocks(DataSpec(shape=tuple(shape), kind="image"), attention)
        width = [channels * 2 ** (k - i) for i in range(k + 1)]  # 4×4 map's channels down to `channels`
        self.width0 = width[0]
        self.project = nn.Linear(in_dim, width[0] * 16)
        blocks = []
        res = 4
        for i in range(k):
            res *= 2
            blocks += [norm(width[i]), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(width[i], width[i + 1], 3, padding=1)]
            if res == attention:
                blocks.append(SelfAttention(width[i + 1]))
        blocks += [norm(width[-1]), nn.ReLU(), nn.Conv2d(width[-1], c_img, 3, padding=1)]
        if out_activation is not None:
            blocks.append(make_activation(out_activation))
        self.net = nn.Sequential(*blocks)
        apply_spectral_norm(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(len(z), self.width0, 4, 4))


class SAGANCritic(nn.Module):
    """The critic's body: image -> (B, feature_dim) features (the adversarial base adds the head)."""

    def __init__(self, in_channels: int, size: int, channels: int, attention: int):
        super().__init__()
        k = sagan_blocks(DataSpec(shape=(in_channels, size, size), kind="image"), attention)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        c, res = channels, size
        for _ in range(k):
            if res == attention:
                layers.append(SelfAttention(c))
            layers += [nn.LeakyReLU(LEAK), nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(LEAK),
                       nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)]
            c, res = 2 * c, res // 2
        layers.append(nn.LeakyReLU(LEAK))
        self.net = nn.Sequential(*layers)
        self.feature_dim = c
        apply_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).sum(dim=(2, 3))
