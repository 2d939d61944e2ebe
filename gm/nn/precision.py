"""fp32 islands under mixed precision: a training step may run under
`torch.autocast(dtype=torch.bfloat16)` (gm.training.engine, `train.precision: bf16`), where matmuls
and convolutions return bfloat16 (8 significant bits). Log-densities, log-determinants and the sums
over many dimensions behind them are computed on fp32 inputs instead: `fp32` casts a low-precision
tensor up (and returns any other tensor as it is, so fp32 and fp64 code is untouched), and
`full_precision` switches autocast off for a block whose own matmuls must stay fp32."""

from __future__ import annotations

import contextlib

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def fp32(x: torch.Tensor) -> torch.Tensor:
    """x in float32 if it is bfloat16 or float16; otherwise x itself (no copy)."""
    return x.float() if x.dtype in LOW_PRECISION else x


def full_precision(device: torch.device | str):
    """A block where autocast is off on `device`'s type (its inputs still need `fp32`)."""
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)
