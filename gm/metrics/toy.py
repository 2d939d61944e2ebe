"""Metrics for 2-D toy data: PacGAN's mode-collapse scores and exact Wasserstein-1."""

from __future__ import annotations

import math

import numpy as np

from gm.core.registry import register_metric

# Network-simplex pivots grow with the problem size: 2,500 x 2,500 toy clouds need
# 3e4-1e5, right at POT's default (1e5), and a larger test set would pass it; stopping
# early returns a sub-optimal (too large) cost, so we allow far more and check.
EMD_MAX_ITER = 10_000_000
HQ_RADIUS_STDS = 3.0  # PacGAN: high quality = within 3 std of the nearest centre


PACGAN_SAMPLES = 2500  # PacGAN's protocol counts modes in 2,500 samples; more would cover more


@register_metric("modes", consumes={"samples": "samples", "centers": "mode_centers", "std": "mode_std"},
                 kinds=("toy",))
def pacgan_mode_metrics(samples: np.ndarray, centers: np.ndarray, std: float) -> dict[str, float]:
    """mode_metrics of the first PACGAN_SAMPLES samples, whatever `evaluate.n_samples` draws (a profile that
    draws 26,000 for stacked digits would otherwise count grid25's modes in 26,000, not PacGAN's 2,500)."""
    return mode_metrics(np.asarray(samples)[:PACGAN_SAMPLES], centers, std)


def mode_metrics(samples: np.ndarray, centers: np.ndarray, std: float) -> dict[str, float]:
    """PacGAN's mode-collapse scores for a mixture of isotropic Gaussians.

    samples (N, 2), centers (K, 2), std the per-coordinate standard deviation of each
    component. A sample is high quality if its distance to the nearest centre is
    < 3 std; a mode is covered if it owns at least one high-quality sample; rKL is
    KL(q || uniform) in nats, q the histogram of high-quality samples over the modes.

    Returns {"modes": covered count, "hq_pct": % of samples that are high quality,
    "rkl": reverse KL}.
    """
    samples = np.asarray(samples, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    k = len(centers)
    dist = np.linalg.norm(samples[:, None, :] - centers[None, :, :], axis=-1)  # (N, K)
    nearest = dist.argmin(axis=1)
    hq = dist[np.arange(len(samples)), nearest] < HQ_RADIUS_STDS * std
    counts = np.bincount(nearest[hq], minlength=k)
    n_hq = int(counts.sum())
    if n_hq == 0:
        # q is undefined without high-quality samples. We report log K, the largest
        # value KL(q || uniform) can take (all mass on one mode), so a sampler that
        # misses every mode never scores a better rKL than one collapsed onto a single mode.
        rkl = math.log(k)
    else:
        q = counts[counts > 0] / n_hq
        rkl = float(np.sum(q * np.log(q * k)))
    return {
        "modes": float(np.count_nonzero(counts)),
        "hq_pct": 100.0 * n_hq / len(samples),
        "rkl": rkl,
    }


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    import ot  # POT loads scikit-learn's clustering: a second in every stage process that needs no W1

    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    cost = ot.dist(a, b, metric="euclidean")  # (N, M)
    wa = np.full(len(a), 1.0 / len(a))
    wb = np.full(len(b), 1.0 / len(b))
    value, log = ot.emd2(wa, wb, cost, numItermax=EMD_MAX_ITER, log=True)
    if log["warning"] is not None:  # POT only warns; a non-optimal W1 must not be reported
        raise RuntimeError(f"exact W1 did not converge: {log['warning']}")
    return float(value)


@register_metric("w1", consumes={"a": "samples", "b": "test"}, kinds=("toy",))
def w1(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Exact Wasserstein-1 between the empirical measures of a (N, d) and b (M, d).

    Euclidean ground cost, uniform weights, solved as a linear program (POT's emd2).
    Returns {"w1": ...}.
    """
    return {"w1": _w1(a, b)}


# At the samples' size, so only beside a W1 of usable samples.
@register_metric("w1_floor", consumes={"data": "test", "n": "sample_count", "seed": "seed"}, kinds=("toy",))
def w1_noise_floor(data: np.ndarray, n: int, seed: int = 0) -> dict[str, float]:
    """W1 between two disjoint random subsets of size n of held-out data.

    Two samples of the true distribution are this far apart by chance alone, so a model
    whose W1 to the data (at the same n) is near this value cannot be told from the data.
    If data has fewer than 2n rows, n is lowered to len(data) // 2.
    Returns {"w1_floor": ...}.
    """
    data = np.asarray(data)
    n = min(n, len(data) // 2)
    idx = np.random.default_rng(seed).permutation(len(data))
    return {"w1_floor": _w1(data[idx[:n]], data[idx[n:2 * n]])}

