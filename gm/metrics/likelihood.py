"""Likelihood metrics: negative log-likelihood in nats and bits per dimension."""

from __future__ import annotations

import math

import numpy as np

from gm.registry import register_metric


@register_metric("bits_per_dim")
def bits_per_dim(nll_nats_per_example: np.ndarray, dim: int) -> dict[str, float]:
    """Mean NLL of (N,) per-example values in nats, and the same in bits per dimension.

    bits/dim = NLL_nats / (D ln 2). The NLLs must be in data space (see
    data_space_log_prob) for the number to compare with published ones.
    Returns {"nll_nats": ..., "bits_per_dim": ...}.
    """
    nll = float(np.mean(np.asarray(nll_nats_per_example, dtype=np.float64)))
    return {"nll_nats": nll, "bits_per_dim": nll / (dim * math.log(2))}


def data_space_log_prob(model_log_prob_model_space, log_det_to_model):
    """log p_data(x) = log p_model(t(x)) + log |dt/dx|, t the map from data to model space.

    Change of variables: a model trained on rescaled data t(x) assigns density in model
    units; adding the log-Jacobian of t (DataSpec.log_det_to_model) expresses it per unit
    volume of the data. Works on floats and arrays alike.

    For discrete data dequantized with uniform noise u in [0, 1)^D, the density of the
    dequantized point x + u in data space satisfies E_u log p(x + u) <= log P(x)
    (Jensen), so the bits/dim computed from it is an upper bound on the discrete
    model's bits/dim: the convention of RealNVP, Glow and FFJORD, and the meaning of the
    "uniform 4.09" row in BENCHMARKS.md (log2 17 for 17 levels).
    """
    return np.asarray(model_log_prob_model_space, dtype=np.float64) + log_det_to_model
