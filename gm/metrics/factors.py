"""Factor coverage of data drawn from a known factor grid (shapes32, gm.data.shapes): which kinds,
scales, rotations, positions and colours a model's samples show, and how evenly.

No network is trained: each image is decoded to the factors of its nearest render of the grid
(`decode`), colour first, then the shape. The distance to that render says whether the sample is
on the grid at all (`on_grid`); the factor histograms of the on-grid samples give, per factor,
the share of its values covered and KL(histogram || uniform), as VEEGAN and PacGAN count modes
and their reverse KL over high-quality samples only (gm.metrics.toy), and the number of distinct
full factor combinations (joint modes) beside its expectation under the data's distribution.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from gm.core.registry import register_metric
from gm.data.shapes import FACTOR_NAMES, FACTORS, KINDS, LEVELS, render

CIRCLE = KINDS.index("circle")
ROTATION = FACTOR_NAMES.index("rotation")
SHAPE_NAMES = FACTOR_NAMES[:FACTOR_NAMES.index("colour")]  # what a mask shows
UNDEFINED = -1  # the decoded rotation of a circle: it looks the same at every angle
CHUNK = 1024  # images per float32 matrix product against the mask bank: (1024, 1024) @ (1024, 1900)
BRIGHT = LEVELS / 2  # a pixel whose largest channel is at least half the full value is lit
# On the grid: the RMS error per value, in 0..1 units, over the pixels that the nearest render or
# the sample lights (not the whole image: a black image is only 0.057 from the smallest shape,
# 10 pixels, over all 1,024) is at most ON_GRID_RMS. Measured on 2,000 images each (5th / 50th /
# 95th percentile): renders 0 / 0 / 0; renders + Gaussian noise of std 20/255 0.070 / 0.078 / 0.086;
# renders blurred by a Gaussian of 0.5 px 0.047 / 0.072 / 0.112, of 1 px 0.118 / 0.182 / 0.284 (23 %
# on the grid); shapes moved and scaled half a grid step off it 0.35 / 0.46 / 0.62; two shapes
# overlaid 0.20 / 0.37 / 0.55; uniform noise 0.58 / 0.59 / 0.59; noise blobs (blurred by 2 px)
# 0.48 / 0.49 / 0.49; black 0.58; the mean test image 0.52. 0.15 keeps every render with mild noise
# or half-pixel blur and no noise, blob, blank image or off-grid shape.
ON_GRID_RMS = 0.15
# A factor's value is covered when at least a quarter of its fair share of the on-grid samples,
# n / (4 K), have it, and at least one: by the binomial tail, a uniform sampler misses that for one
# of K <= 8 values with probability < 1e-3 at n = 100 and < 1e-10 at n = 400.
COVERED_SHARE = 0.25


def _shape_grid() -> np.ndarray:
    """Every kind×scale×rotation×x×y of the grid, factor-index rows (2400, 5)."""
    axes = [np.arange(len(FACTORS[k])) for k in SHAPE_NAMES]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(SHAPE_NAMES))


def _masks(rows: np.ndarray) -> np.ndarray:
    """The occupancy masks of shape factor rows (S, 5): float32 (S, 1024), 1 inside the shape."""
    full = np.concatenate([rows, np.zeros((len(rows), 1), np.int64)], 1)  # any colour: each is nonzero
    return (render(full).max(axis=1) > 0).reshape(len(rows), -1).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _mask_bank() -> tuple[np.ndarray, np.ndarray]:
    """(masks float32 (S, 1024), shape factor rows int64 (S, 5)): the grid, a circle only at its first
    rotation (S = 1,900)."""
    rows = _shape_grid()
    rows = rows[(rows[:, 0] != CIRCLE) | (rows[:, ROTATION] == 0)]
    return _masks(rows), rows


def _check_grid(factors: dict) -> None:
    """The prepared data's factor grid must be the one gm.data.shapes renders."""
    # meta.json is written with sorted keys: the factors' order there is not FACTOR_NAMES'
    if set(factors) != set(FACTOR_NAMES) or any(list(factors[k]) != list(FACTORS[k]) for k in FACTOR_NAMES):
        raise ValueError("the data's meta.json factors differ from gm.data.shapes.FACTORS; prepare the data "
                         "again (dvc repro prepare) so that its factors are the grid the decoder renders")


def decode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The factors of each image's nearest render of the grid, and the distance to it.

    x (N, 3, 32, 32) in data space (0..255). The colour is the hue nearest to the mean colour of
    the bright pixels (the brightest pixel where none is); given that colour c, the nearest render
    c·m of mask m minimises ||u - m||², u = x·c / |c|² the projection of each pixel on c (the two
    differ by a constant, m being binary), found by one matrix product against the mask bank.
    Returns (factor indices int64 (N, 6) in FACTOR_NAMES order, a circle's rotation UNDEFINED;
    the RMS difference to that render per value in 0..1 units over the pixels that the render or
    the image lights, float64 (N,); see ON_GRID_RMS).
    """
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    masks, rows = _mask_bank()
    colours = np.asarray(FACTORS["colour"], dtype=np.float32)  # (8, 3)
    bank_sq = (masks * masks).sum(1)  # (S,)
    out = np.zeros((n, len(FACTOR_NAMES)), np.int64)
    dist = np.zeros(n)
    for i in range(0, n, CHUNK):
        xc = x[i:i + CHUNK].reshape(-1, 3, masks.shape[1])  # (B, 3, P)
        peak = xc.max(axis=1)  # (B, P)
        bright = peak >= BRIGHT
        lit = bright.copy()
        lit[np.arange(len(xc)), peak.argmax(1)] |= ~bright.any(1)  # no bright pixel: the brightest one
        mean = (xc * lit[:, None]).sum(2) / lit.sum(1, keepdims=True)  # (B, 3)
        hue = ((mean[:, None] - colours[None]) ** 2).sum(-1).argmin(1)  # (B,)
        c = colours[hue]  # (B, 3)
        u = np.einsum("bcp,bc->bp", xc, c) / (c * c).sum(1, keepdims=True)  # (B, P)
        d2 = (u * u).sum(1, keepdims=True) + bank_sq[None] - 2 * u @ masks.T  # (B, S)
        nearest = d2.argmin(1)
        f = np.concatenate([rows[nearest], hue[:, None]], 1)
        rendered = render(f).reshape(len(xc), 3, -1)
        region = (rendered.max(1) > 0) | bright  # (B, P): what the render or the sample lights
        err = (((xc - rendered) / (LEVELS - 1)) ** 2).mean(1)  # (B, P)
        dist[i:i + CHUNK] = np.sqrt((err * region).sum(1) / region.sum(1))
        f[f[:, 0] == CIRCLE, ROTATION] = UNDEFINED
        out[i:i + CHUNK] = f
    return out, dist


@functools.lru_cache(maxsize=1)
def combo_probabilities() -> np.ndarray:
    """The probability of each distinct decodable factor combination under the data's distribution
    (every factor uniform, independently): a circle's six rotations are one combination, and so are
    the few grid points whose renders are pixel for pixel the same (a small cross at 15° and 30°)."""
    _, counts = np.unique(_masks(_shape_grid()), axis=0, return_counts=True)  # grid points rendered alike
    colours = len(FACTORS["colour"])
    return np.tile(counts / (counts.sum() * colours), colours)


def expected_distinct(p: np.ndarray, n: int) -> float:
    """The expected number of distinct outcomes among n independent draws from probabilities p:
    sum_c 1 - (1 - p_c)^n (about C (1 - exp(-n / C)) for C equally likely outcomes)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):  # p = 1: log 0 = -inf, and 1 - 0^n = 1 as it should
        return float(np.sum(-np.expm1(n * np.log1p(-p))))


def histogram_stats(values: np.ndarray, k: int) -> tuple[float, float]:
    """(share of the k values covered, KL(histogram || uniform) in nats) of value indices (N,):
    a value is covered when at least max(1, COVERED_SHARE · N / k) of them have it; with none,
    (0, log k), the largest KL (all mass on one value), as gm.metrics.toy does."""
    counts = np.bincount(np.asarray(values, dtype=np.int64), minlength=k)
    n = int(counts.sum())
    if n == 0:
        return 0.0, math.log(k)
    p = counts[counts > 0] / n
    covered = np.count_nonzero(counts >= max(1.0, COVERED_SHARE * n / k))
    return float(covered / k), max(0.0, float(np.sum(p * np.log(p * k))))


def coverage_stats(x: np.ndarray) -> dict[str, float]:
    """factor_<name>_covered and factor_<name>_kl per factor (rotation over non-circles only), their
    means factor_coverage and factor_kl, on_grid (the share within ON_GRID_RMS of a render), and
    joint_modes (distinct full combinations on the grid) beside joint_modes_expected, what n draws
    of the data would show; all over the on-grid images of x (N, 3, 32, 32), data space."""
    decoded, dist = decode(x)
    on = decoded[dist <= ON_GRID_RMS]
    out: dict[str, float] = {}
    for j, name in enumerate(FACTOR_NAMES):
        values = on[:, j][on[:, j] != UNDEFINED] if j == ROTATION else on[:, j]
        out[f"factor_{name}_covered"], out[f"factor_{name}_kl"] = histogram_stats(values, len(FACTORS[name]))
    out["factor_coverage"] = float(np.mean([out[f"factor_{k}_covered"] for k in FACTOR_NAMES]))
    out["factor_kl"] = float(np.mean([out[f"factor_{k}_kl"] for k in FACTOR_NAMES]))
    out["on_grid"] = len(on) / max(len(x), 1)
    out["joint_modes"] = float(len(np.unique(on, axis=0)))
    out["joint_modes_expected"] = expected_distinct(combo_probabilities(), len(x))
    return out


REFERENCE_KEYS = ("factor_coverage", "factor_kl", "on_grid", "joint_modes")


@register_metric("factor_coverage", consumes={"samples": "samples", "test": "test", "factors": "factors"},
                 kinds=("image",))
def factor_coverage(samples: np.ndarray, test: np.ndarray, factors: dict) -> dict[str, float]:
    """Factor coverage of samples (N, 3, 32, 32) in data space, from data with a known factor grid
    (`factors`, the prepared data's meta.json: gm.data.shapes.FACTORS); see coverage_stats. The
    summary values of the first N test images (all, where there are fewer) come as <name>_test: the
    data's own score at the same N (by chance, KL is biased up by about (K - 1) / (2 N)).
    """
    _check_grid(factors)
    out = coverage_stats(samples)
    reference = coverage_stats(np.asarray(test)[:len(samples)])
    return {**out, **{f"{k}_test": reference[k] for k in REFERENCE_KEYS}}
