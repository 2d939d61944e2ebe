"""MLP backbone and the small tensor helpers every vector-based family shares.

Families work on flattened vectors of dimension `data.dim`; these helpers keep the
model-space conventions of `DataSpec` (raw toys, discrete images in [-1, 1)) in one place.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from gm.data.spec import DataSpec

Activation = Literal["relu", "leaky_relu", "tanh"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),  # 0.2: the DCGAN slope
    "tanh": nn.Tanh,
}

LOG_2PI = math.log(2 * math.pi)


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


def randn(shape: tuple[int, ...], generator: torch.Generator | None = None,
          device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal noise drawn from `generator` (on its device), then moved to `device`.

    Drawing on the generator's own device keeps a seeded CPU generator usable with a
    model on a GPU, and the same seed gives the same numbers wherever the model lives.
    """
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def rand(shape: tuple[int, ...], generator: torch.Generator | None = None,
         device: torch.device | str | None = None) -> torch.Tensor:
    """U[0, 1) noise, with the same generator/device handling as `randn`."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of probs (..., K) as int64 (...,), by the inverse CDF of U[0, 1) noise.

    The noise comes from `rand`, so a CPU generator works with a model on a GPU and a seed
    gives the same draws on every device (torch.multinomial needs both on one device).
    """
    u = rand((*probs.shape[:-1], 1), generator, probs.device)
    # The index of the first CDF value above u (the clamp guards against rounding at 1).
    return (probs.cumsum(-1) < u).sum(-1).clamp(max=probs.shape[-1] - 1)


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor | float = 0.0,
                    log_std: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(log_std)^2) in nats; sum over the last dims yourself."""
    log_std = torch.as_tensor(log_std, dtype=x.dtype, device=x.device)
    return -0.5 * (((x - mean) * torch.exp(-log_std)) ** 2 + LOG_2PI) - log_std


def label_count(conditional: bool, data: DataSpec) -> int:
    """How many classes a label-conditioned model reads (0 when not conditional); refuses
    `conditional: true` on data without labels."""
    from gm.config import ConfigError

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
