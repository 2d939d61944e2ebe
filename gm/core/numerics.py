"""Numerical primitives: seeded noise that gives the same numbers on every device, Gaussian
log-densities, and the nats -> bits/dim conversion every likelihood figure goes through."""

from __future__ import annotations

import math

import numpy as np
import torch

LOG_2PI = math.log(2 * math.pi)


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


def bits_per_dim(nll_nats, dim: int):
    """A negative log-likelihood in nats per example -> bits per dimension: NLL / (D ln 2).

    Works on floats, arrays and tensors alike (elementwise)."""
    return nll_nats / (dim * math.log(2))


def mean_nll_bits_per_dim(nll_nats_per_example, dim: int) -> dict[str, float]:
    """{"nll_nats": mean NLL over (N,) examples, "bits_per_dim": the same in bits per dimension}."""
    nll = float(np.mean(np.asarray(nll_nats_per_example, dtype=np.float64)))
    return {"nll_nats": nll, "bits_per_dim": bits_per_dim(nll, dim)}
