"""MLP backbone and the small helpers every vector-based family shares (activations, output range,
labels).

Families work on flattened vectors of dimension `data.dim`; these helpers keep the
model-space conventions of `DataSpec` (raw toys, discrete images in [-1, 1)) in one place.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from gm.data.dataspec import DataSpec
from gm.core.config import ConfigError

Activation = Literal["relu", "leaky_relu", "tanh"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),  # 0.2: the DCGAN slope
    "tanh": nn.Tanh,
}

def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (see `Activation`)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def mlp(in_dim: int, out_dim: int, hidden: int, depth: int, activation: Activation = "relu",
        out_activation: Activation | None = None) -> nn.Sequential:
    """A fully connected net: `depth` hidden layers of width `hidden`, then a linear output.

    `depth = 0` gives a single linear map. `out_activation` (None = identity) is applied
    to the output, e.g. "tanh" for generators of data that lives in [-1, 1).
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), make_activation(activation)]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    if out_activation is not None:
        layers.append(make_activation(out_activation))
    return nn.Sequential(*layers)


def bounded_output(data: DataSpec) -> Activation | None:
    """The output activation of a net that emits samples: tanh for discrete data.

    Discrete data lives in [-1, 1) in model space, so a generator squashes its output
    there; continuous (toy) data is unbounded and keeps the identity.
    """
    return "tanh" if data.levels else None


def clamp_to_model_space(x: torch.Tensor, data: DataSpec) -> torch.Tensor:
    """Clamp samples of discrete data into [-1, 1); continuous data is returned unchanged.

    The upper end is the largest float below 1 in x's dtype, so `data.to_data` never
    floors a sample onto level `levels`.
    """
    if not data.levels:
        return x
    return x.clamp(-1.0, 1.0 - torch.finfo(x.dtype).eps / 2)


def label_count(conditional: bool, data: DataSpec) -> int:
    """How many classes a label-conditioned model reads (0 when not conditional); refuses
    `conditional: true` on data without labels."""
    if conditional and not data.num_classes:
        raise ConfigError("conditional: true needs labelled data (the data spec has no num_classes)")
    return data.num_classes if conditional else 0


def one_hot_labels(model: nn.Module, y: torch.Tensor | None, n: int, num_labels: int,
                   device: torch.device | str | None = None) -> torch.Tensor | None:
    """Checked one-hot labels (n, K) for a label-conditioned model; None when num_labels is 0.

    Accepts integer labels of shape (n,) or one scalar label for all n rows."""
    if not num_labels:
        return None
    if y is None:
        raise ValueError(f"{type(model).__name__} is conditional: labels are required (batch.y or condition=)")
    y = torch.as_tensor(y, device=device)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {y.dtype}")
    y = y.long().expand(n) if y.dim() == 0 else y.long()
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(y.shape)}")
    if (y < 0).any() or (y >= num_labels).any():
        raise ValueError(f"labels must lie in 0..{num_labels - 1}")
    return torch.nn.functional.one_hot(y, num_labels).float()  # (n, K)


def check_unconditional(model: nn.Module, condition: torch.Tensor | None) -> None:
    """Refuse a condition in a model that cannot use one, rather than ignore it silently."""
    if condition is not None:
        raise ValueError(f"{type(model).__name__} is unconditional; got a condition")
