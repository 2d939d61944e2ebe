"""Classical density baselines on the same splits as the deep models: a Gaussian mixture and a KDE.

Both are fitted in data space: discrete data is dequantized once with uniform noise,
x + U[0, 1) in [0, levels) (BENCHMARKS.md's convention), continuous data is used as it
is. One hyperparameter each is chosen on the validation split's bits/dim; nothing is
refitted on train + val, so the test split is scored exactly as a deep model's would be.

    baseline = fit_baseline("gmm", train_x, val_x, spec, seed=0)
    test_bpd = bits_per_dim(-baseline.log_prob(test_x, seed=0).mean(), spec.dim)  # gm.core.numerics
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity

from gm.data.dataspec import DataSpec
from gm.models.base import Capabilities, LikelihoodOf
from gm.core.registry import Registry
from gm.core.numerics import bits_per_dim

BASELINES = Registry("baseline")

GMM_COMPONENTS = (1, 2, 5, 10, 20)
# Every dequantized pixel carries independent U[0, 1) noise of variance 1/12, so no direction
# of the data has less variance than that. A ridge of this size adds spread on the scale the
# data is known to have everywhere (at most doubling it along a constant pixel), and it
# keeps a component with fewer rows than dimensions (k = 20
# on 1,257 digits, ~60 rows for 64 pixels) from collapsing onto its rows: with sklearn's
# 1e-6, k = 20 scores ~8.7 test bits/dim on digits instead of ~3.1.
DISCRETE_REG_COVAR = 1 / 12
# Continuous data has no such floor: sklearn's default 1e-6, made relative to the data's
# mean per-dimension variance so it means the same for ring8 (std 0.01) and for pixels.
CONTINUOUS_REG_COVAR_REL = 1e-6

# KDE bandwidths: log-spaced from Scott's rule h = sigma n^(-1/(D+4)) (optimal for a single
# Gaussian blob, so the widest sensible choice) down to h / KDE_SPAN (clustered data such as
# the toy mixtures, whose modes are far narrower than the whole cloud). sigma is the root
# mean per-dimension variance of the training rows. Digits (sigma ~4.3, D = 64) get
# 0.039..3.9, ring8 0.002..0.2, grid25 0.008..0.8: each holds its validation optimum inside.
KDE_SPAN = 100.0
KDE_POINTS = 13  # neighbouring bandwidths differ by a factor 1.47


@dataclass(frozen=True)
class BaselineKind:
    """How one baseline is built, which hyperparameter validation chooses, and how it samples."""

    param: str  # the hyperparameter chosen on validation
    default_grid: Callable[[np.ndarray], tuple]  # dequantized training rows (N, D) -> grid
    build: Callable[[object, np.ndarray, DataSpec, int], object]  # (value, rows, spec, seed) -> fitted
    draw: Callable[[object, int, np.random.Generator], np.ndarray]  # (estimator, n, rng) -> (n, D)


@dataclass
class Baseline:
    """A fitted baseline that evaluates like an exact-likelihood model, in data space."""

    name: str  # "gmm" or "kde"
    selected: dict  # {<param>: chosen value, "val_bits_per_dim": its validation score}
    spec: DataSpec
    estimator: GaussianMixture | KernelDensity
    val_scores: dict = field(default_factory=dict)  # every grid value -> validation bits/dim
    capabilities: ClassVar[Capabilities] = Capabilities(likelihood="exact")  # nothing beyond a density
    likelihood = LikelihoodOf()

    def log_prob(self, x: np.ndarray, seed: int = 0) -> np.ndarray:
        """Per-row log density (n,) in nats, data space, of x (n, *spec.shape).

        Discrete data is dequantized first with np.random.default_rng(seed) uniform noise,
        as gm.inference.data_log_prob does for models.
        """
        rows = _rows(x, self.spec)
        if self.spec.levels:
            rows = rows + np.random.default_rng(seed).random(rows.shape)
        if isinstance(self.estimator, KernelDensity):
            return gaussian_kde_log_prob(rows, self.estimator.tree_.data, self.estimator.bandwidth_)
        return self.estimator.score_samples(rows)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n samples (n, *spec.shape) float32 in data space, deterministic given the seed.

        Discrete data is floored and clipped onto 0..levels-1 by DataSpec.to_data, the map
        model samples go through, so both give comparable integer images.
        """
        rows = BASELINES[self.name].draw(self.estimator, n, np.random.default_rng(seed))  # (n, D)
        if self.spec.levels:
            z = torch.from_numpy(self.spec.rescale(rows))  # float64 model space
            rows = self.spec.to_data(z).numpy()
        return rows.astype(np.float32).reshape(n, *self.spec.shape)


def gaussian_kde_log_prob(rows: np.ndarray, data: np.ndarray, bandwidth: float, chunk: int = 1024) -> np.ndarray:
    """log (1/N) Σ_i N(x; x_i, h² I) for each row x, exactly, in float64: what scikit-learn's
    KernelDensity(kernel="gaussian").score_samples computes with its default (exact) tolerances,
    as one matrix product per chunk instead of a tree walk (an order of magnitude faster here)."""
    data = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float64))
    n, d = data.shape
    norm = -math.log(n) - 0.5 * d * math.log(2 * math.pi * bandwidth ** 2)
    out = []
    for start in range(0, len(rows), chunk):
        q = torch.from_numpy(np.ascontiguousarray(rows[start:start + chunk], dtype=np.float64))
        sq = torch.cdist(q, data, compute_mode="use_mm_for_euclid_dist").square_()
        out.append(torch.logsumexp(sq.mul_(-0.5 / bandwidth ** 2), dim=1) + norm)
    return torch.cat(out).numpy() if out else np.zeros(0)


def _rows(x: np.ndarray, spec: DataSpec) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[1:] != tuple(spec.shape):
        raise ValueError(f"expected rows of shape {tuple(spec.shape)}, got {x.shape[1:]}")
    return x.reshape(len(x), spec.dim)  # (n, D)


def _gmm_reg_covar(rows: np.ndarray, spec: DataSpec) -> float:
    if spec.levels:
        return DISCRETE_REG_COVAR
    return CONTINUOUS_REG_COVAR_REL * float(rows.var(axis=0).mean())


def _build_gmm(n_components: int, rows: np.ndarray, spec: DataSpec, seed: int) -> GaussianMixture:
    return GaussianMixture(n_components=n_components, covariance_type="full",
                           reg_covar=_gmm_reg_covar(rows, spec), random_state=seed).fit(rows)


def _draw_gmm(gmm: GaussianMixture, n: int, rng: np.random.Generator) -> np.ndarray:
    # sklearn's own sample() returns rows sorted by component and ignores a per-call seed.
    component = rng.choice(len(gmm.weights_), size=n, p=gmm.weights_)
    z = rng.standard_normal((n, gmm.means_.shape[1]))  # (n, D)
    out = np.empty_like(z)
    for c, (mean, cov) in enumerate(zip(gmm.means_, gmm.covariances_)):
        mine = component == c
        out[mine] = mean + z[mine] @ np.linalg.cholesky(cov).T
    return out


def _scott_bandwidth_grid(rows: np.ndarray) -> tuple[float, ...]:
    n, d = rows.shape
    scott = math.sqrt(float(rows.var(axis=0).mean())) * n ** (-1 / (d + 4))
    return tuple(float(h) for h in np.geomspace(scott / KDE_SPAN, scott, KDE_POINTS))


def _build_kde(bandwidth: float, rows: np.ndarray, spec: DataSpec, seed: int) -> KernelDensity:
    return KernelDensity(kernel="gaussian", bandwidth=bandwidth).fit(rows)


def _draw_kde(kde: KernelDensity, n: int, rng: np.random.Generator) -> np.ndarray:
    data = np.asarray(kde.tree_.data)  # the training rows (N, D)
    return data[rng.integers(len(data), size=n)] + kde.bandwidth_ * rng.standard_normal((n, data.shape[1]))


def _gmm_grid(rows: np.ndarray) -> tuple[int, ...]:
    """GMM_COMPONENTS, less the counts that leave a component fewer than D/2 rows: its full covariance
    would be mostly the ridge, and its fit costs k·N·D² per EM step for nothing (audio clips, D = 2000
    samples from 2,800 rows, keep 1 and 2 components; digits, D = 64 from 1,257 rows, keep every count)."""
    n, d = rows.shape
    return tuple(k for k in GMM_COMPONENTS if k == 1 or n / k >= d / 2)


BASELINES.register("gmm")(BaselineKind(param="n_components", default_grid=_gmm_grid,
                                       build=_build_gmm, draw=_draw_gmm))
BASELINES.register("kde")(BaselineKind(param="bandwidth", default_grid=_scott_bandwidth_grid,
                                       build=_build_kde, draw=_draw_kde))


def _bits_per_dim(log_prob: np.ndarray, spec: DataSpec) -> float:
    bpd = float(bits_per_dim(-np.mean(log_prob), spec.dim))
    return bpd if math.isfinite(bpd) else math.inf


def fit_baseline(name: str, train_x: np.ndarray, val_x: np.ndarray, spec: DataSpec, seed: int = 0,
                 grid: tuple | None = None) -> Baseline:
    """Fit baseline `name` ("gmm" or "kde") on train_x (N, *spec.shape), choosing its one
    hyperparameter from `grid` by validation bits/dim on val_x (scored with log_prob(seed)).

    Grids: GMM components GMM_COMPONENTS (those with at least D/2 rows each: `_gmm_grid`); KDE
    bandwidths from the training data's scale (see KDE_SPAN). Discrete training rows are
    dequantized once with noise independent of the validation noise. A grid value sklearn cannot fit (more components than rows, an
    ill-defined covariance) scores inf; if every value does, ValueError.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; expected one of: {', '.join(sorted(BASELINES))}")
    kind = BASELINES[name]
    rows = _rows(train_x, spec)
    if spec.levels:
        rows = rows + np.random.default_rng([seed, 1]).random(rows.shape)  # apart from log_prob's stream
    scores, best = {}, None
    for value in (grid if grid is not None else kind.default_grid(rows)):
        try:
            candidate = Baseline(name, {kind.param: value}, spec, kind.build(value, rows, spec, seed))
        except ValueError:  # sklearn: too few rows or a singular component for this value
            scores[value] = math.inf
            continue
        scores[value] = _bits_per_dim(candidate.log_prob(val_x, seed=seed), spec)
        if best is None or scores[value] < best.selected["val_bits_per_dim"]:
            candidate.selected["val_bits_per_dim"] = scores[value]
            best = candidate
    if best is None or not math.isfinite(best.selected["val_bits_per_dim"]):
        raise ValueError(f"baseline {name!r}: no value of {kind.param} in {tuple(scores)} gave a "
                         "finite validation likelihood")
    best.val_scores = scores
    return best


def uniform_bits_per_dim(spec: DataSpec) -> float | None:
    """Bits/dim of the uniform distribution on [0, levels)^D: log2(levels) (4.09 for digits'
    17 levels), the score of a model that learned nothing; None for continuous data."""
    return math.log2(spec.levels) if spec.levels else None
