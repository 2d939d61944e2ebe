"""What a model needs to know about its data, and the map between data space and model space."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from gm.core.config import ConfigError


@dataclass(frozen=True)
class DataSpec:
    """Shape and value space of one prepared dataset (read from its meta.json).

    Data space is what the user has (digits: integers 0..16 as (1, 8, 8) images; toys:
    points in R^2). Model space is what networks see: discrete data is dequantized with
    uniform noise to [0, levels) and mapped affinely to [-1, 1); continuous data is left
    as it is. Densities convert between the two with the affine map's log-Jacobian.
    """

    shape: tuple[int, ...]  # one sample, data space: (2,) for toys, (C, H, W) for images
    kind: Literal["toy", "image", "audio"]  # audio: (1, T) μ-law levels (gm.data.audio)
    num_classes: int | None = None  # labelled data only
    levels: int | None = None  # discrete data takes the values 0..levels-1

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def shift(self) -> float:
        return self.levels / 2 if self.levels else 0.0

    @property
    def scale(self) -> float:
        return self.levels / 2 if self.levels else 1.0

    @property
    def log_det_to_model(self) -> float:
        """log |d model / d data| for one sample (the Jacobian of the affine rescaling)."""
        return -self.dim * math.log(self.scale)

    def to_model(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 dequantize: bool = True) -> torch.Tensor:
        """Data space -> model space; discrete values get uniform dequantization noise."""
        x = x.float()
        if self.levels:
            if dequantize:
                u = torch.rand(x.shape, generator=generator, device=x.device) if generator is not None \
                    else torch.rand_like(x)
            else:
                u = torch.full_like(x, 0.5)
            x = x + u
        return self.rescale(x)

    def rescale(self, x):
        """The affine map of data-space values (dequantized levels v + u, a tensor or an array)
        into model space."""
        return (x - self.shift) / self.scale

    def to_data(self, z: torch.Tensor) -> torch.Tensor:
        """Model space -> data space; discrete data is floored back onto its levels."""
        x = z * self.scale + self.shift
        if self.levels:
            x = torch.floor(x.clamp(0, self.levels - 1e-4))
        return x

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        return cls(shape=tuple(d["shape"]), kind=d["kind"], num_classes=d.get("num_classes"),
                   levels=d.get("levels"))


def halvable_image(data: DataSpec, halvings: int, field: str, arch_field: str = "arch",
                   fallback: str = "") -> tuple[int, int, int]:
    """(C, H, W) of image data whose H and W can be halved `halvings` times (squeezes,
    stride-2 layers); otherwise a ConfigError naming the config field at fault."""
    hint = f"; use {arch_field}: {fallback}" if fallback else ""
    if data.kind != "image" or len(data.shape) != 3:
        raise ConfigError(f"{arch_field}: needs image data of shape (C, H, W), got {data.kind} data of "
                          f"shape {tuple(data.shape)}{hint}")
    channels, height, width = data.shape
    f = 2 ** halvings
    if height % f or width % f:
        raise ConfigError(f"{field}: {halvings} halvings need H and W divisible by {f}, got {height}×{width}{hint}")
    return channels, height, width
