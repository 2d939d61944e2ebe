"""DCGAN backbones (Radford et al. 2016) for square images of any size ≥ 4 (8×8 digits, 28×28 MNIST).

Generator: z -> linear projection to a small map (2×2 or 4×4) -> transposed convs, each
doubling the size, with BatchNorm + ReLU between them; the output layer has neither (its
bounding to model space is the caller's `out_activation`: tanh for discrete data, whose
model space is [-1, 1), none for continuous data). The normalisation layer is a choice
(`norm`): virtual batch norm (gm/nn/vbn.py) replaces it when asked.

Two critics:
- `RadfordCritic`, Radford et al. 2016 (§3, "Architecture guidelines"): strided convs (no
  pooling), batch norm in every conv layer except the first, LeakyReLU(0.2), the last map
  flattened into the features (their D's last conv is flattened into one sigmoid output);
  with `radford_init`, every conv/linear weight ~ N(0, 0.02) (§4), batch-norm scales
  ~ N(1, 0.02), biases 0. Batch norm makes D(x_i) depend on the whole batch, so this critic
  must not be under a per-sample gradient penalty (Gulrajani et al. 2017, §4).
- `DCGANCritic` ("pooled"): the same strided convs with LeakyReLU(0.2) and no batch norm at
  all, so it is a per-sample function (valid under a gradient penalty), then global average
  pooling to a feature vector.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from gm.data.dataspec import DataSpec
from gm.nn.mlp import Activation, make_activation
from gm.nn.vbn import VirtualBatchNorm


def check_dcgan_data(data: DataSpec) -> None:
    """DCGAN nets need square (C, H, W) images; anything else is a config error naming `arch`."""
    if data.kind != "image" or len(data.shape) != 3:
        raise ValueError(f"arch: 'dcgan' needs image data of shape (C, H, W), got {data.kind} data of shape "
                         f"{tuple(data.shape)}; use arch: mlp")
    _, h, w = data.shape
    if h != w or h < 4:
        raise ValueError(f"arch: 'dcgan' needs square images of at least 4×4, got {h}×{w}; use arch: mlp")


def dcgan_sizes(size: int) -> list[int]:
    """Spatial sizes from the image down to the smallest map, halving (rounding up) each time.

    Halve while the map is larger than 4×4, and at least twice: 8 -> [8, 4, 2],
    28 -> [28, 14, 7, 4], 32 -> [32, 16, 8, 4].
    """
    sizes = [size]
    while (sizes[-1] > 4 or len(sizes) < 3) and sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def _up(c_in: int, c_out: int, s_in: int, s_out: int, bias: bool) -> nn.ConvTranspose2d:
    # k=4, s=2, p=1 doubles the size; k=3, s=2, p=1 gives 2s - 1 (4 -> 7 on the way to 28).
    kernel = 4 if s_out == 2 * s_in else 3
    return nn.ConvTranspose2d(c_in, c_out, kernel, stride=2, padding=1, bias=bias)


def _down(c_in: int, c_out: int, s_in: int, s_out: int, bias: bool = True) -> nn.Conv2d:
    # The mirror image of `_up`: k=4 halves an even size, k=3 maps 7 -> 4.
    kernel = 4 if s_in == 2 * s_out else 3
    return nn.Conv2d(c_in, c_out, kernel, stride=2, padding=1, bias=bias)


RADFORD_STD = 0.02  # Radford et al. 2016, §4: weights from N(0, 0.02)


def radford_init(module: nn.Module, std: float = RADFORD_STD) -> None:
    """Radford et al.'s initialisation, in place: conv/linear weights ~ N(0, std), their biases 0;
    normalisation scales ~ N(1, std), shifts 0 (the reference DCGAN code's BN init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, VirtualBatchNorm)):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z (B, Z) -> image (B, C, H, W); channels halve as the map doubles, `base` at the last hidden map."""

    def __init__(self, z_dim: int, shape: tuple[int, int, int], base: int,
                 out_activation: Activation | None = None,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        channels, h, _ = shape
        sizes = dcgan_sizes(h)[::-1]  # small -> large, e.g. [4, 7, 14, 28]
        n_up = len(sizes) - 1
        widths = [base * 2 ** (n_up - 1 - i) for i in range(n_up)] + [channels]  # e.g. [4b, 2b, b, C]
        self.start = (widths[0], sizes[0])
        # Radford 2016: project and reshape, then BN + ReLU.
        self.project = nn.Linear(z_dim, widths[0] * sizes[0] ** 2, bias=False)
        layers: list[nn.Module] = [norm(widths[0]), nn.ReLU()]
        for i in range(n_up):
            last = i == n_up - 1
            # A bias only on the output layer: BatchNorm's shift makes the others redundant.
            layers.append(_up(widths[i], widths[i + 1], sizes[i], sizes[i + 1], bias=last))
            if not last:
                layers += [norm(widths[i + 1]), nn.ReLU()]
        if out_activation is not None:
            layers.append(make_activation(out_activation))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, s = self.start
        return self.net(self.project(z).view(z.shape[0], c, s, s))  # (B, C, H, W)


def critic_sizes(in_channels: int, size: tuple[int, int], base: int) -> tuple[list[int], list[int]]:
    """A DCGAN critic's map sizes, large to small (e.g. [28, 14, 7, 4]), and its widths ([C, b, 2b, 4b])."""
    sizes = dcgan_sizes(size[0])
    return sizes, [in_channels] + [base * 2 ** i for i in range(len(sizes) - 1)]


class DCGANCritic(nn.Module):
    """image (B, C, H, W) -> features (B, F): strided convs + LeakyReLU(0.2), no batch norm, global mean pool."""

    def __init__(self, in_channels: int, size: tuple[int, int], base: int):
        super().__init__()
        sizes, widths = critic_sizes(in_channels, size, base)
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers += [_down(widths[i], widths[i + 1], sizes[i], sizes[i + 1]), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)
        self.feature_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(2, 3))  # (B, F)


class RadfordCritic(nn.Module):
    """image (B, C, H, W) -> features (B, F): Radford et al.'s discriminator body.

    Strided convs (no pooling), each followed by LeakyReLU(0.2); batch norm after every conv
    but the first (whose bias it would make redundant elsewhere, so only the first conv has
    one); the last map flattened, F = channels · size². Initialise with `radford_init`.
    """

    def __init__(self, in_channels: int, size: tuple[int, int], base: int):
        super().__init__()
        sizes, widths = critic_sizes(in_channels, size, base)
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            first = i == 0
            layers.append(_down(widths[i], widths[i + 1], sizes[i], sizes[i + 1], bias=first))
            if not first:
                layers.append(nn.BatchNorm2d(widths[i + 1]))
            layers.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*layers)
        self.feature_dim = widths[-1] * sizes[-1] ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)  # (B, F)
