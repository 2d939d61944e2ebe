"""Likelihood metrics: negative log-likelihood in nats and bits per dimension."""

from __future__ import annotations

import math

import numpy as np

from gm.core.registry import register_metric


@register_metric("bits_per_dim")
def bits_per_dim(nll_nats_per_example: np.ndarray, dim: int) -> dict[str, float]:
    """Mean NLL of (N,) per-example values in nats, and the same in bits per dimension.

    bits/dim = NLL_nats / (D ln 2). The NLLs must be in data space (see
    data_space_log_prob) for the number to compare with published ones.
    Returns {"nll_nats": ..., "bits_per_dim": ...}.
    """
    nll = float(np.mean(np.asarray(nll_nats_per_example, dtype=np.float64)))
    return {"nll_nats": nll, "bits_per_dim": nll / (dim * math.log(2))}
