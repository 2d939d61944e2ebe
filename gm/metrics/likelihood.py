"""The test split's likelihood: negative log-likelihood in nats and bits per dimension."""

from __future__ import annotations

import numpy as np

from gm.core.numerics import mean_nll_bits_per_dim
from gm.core.registry import register_metric

# test_bound: whether test_bits_per_dim bounds the true NLL from above, as a person reads the flag
TEST_BOUND_MEANING = {0.0: "exact", 1.0: "lower bound"}


@register_metric("likelihood", consumes={"log_likelihoods": "test_log_likelihoods", "dim": "dim",
                                         "likelihood": "likelihood"}, kinds=("toy", "image", "audio"))
def held_out_likelihood(log_likelihoods: np.ndarray, dim: int, likelihood: str) -> dict[str, float]:
    """Mean test NLL of (N,) per-example log-likelihoods (nats, data space: see
    gm.inference.data_log_prob), the same in bits per dimension, and whether it bounds the
    true NLL from above (likelihood "bound") or is exact.
    Returns {"test_nll_nats", "test_bits_per_dim", "test_bound": 1.0 or 0.0}.
    """
    nll = mean_nll_bits_per_dim(-np.asarray(log_likelihoods), dim)
    return {"test_nll_nats": nll["nll_nats"], "test_bits_per_dim": nll["bits_per_dim"],
            "test_bound": float(likelihood == "bound")}
