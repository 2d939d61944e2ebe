"""Sample-quality metrics on feature vectors: Fréchet distance, KID, class statistics and the
classifier (Inception) score, for images and audio alike (each in its dataset's feature space).

The features come from the dataset's featurizer (gm.featurizer), or are the pixels
themselves where there is none (gm.evaluation.FeatureSpace); numbers are only comparable
within one feature space, which evaluation records as the featurizer's hash.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import linalg

from gm.core.registry import register_metric

SQRTM_EPS = 1e-6  # ridge added to both covariances when their product is singular
MAX_IMAG_REL = 1e-3  # sqrtm of a PSD-similar matrix is real; more imaginary part than this is a bug


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    singular = any(issubclass(w.category, linalg.LinAlgWarning) for w in caught)
    if singular or not np.isfinite(covmean).all():
        # Rank-deficient covariances (constant pixels, fewer samples than features) make
        # the product singular, where sqrtm is inaccurate; a tiny ridge makes it regular
        # and moves the trace by O(sqrt(eps)) per dimension at most.
        offset = SQRTM_EPS * np.eye(len(sigma1))
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))

    if np.iscomplexobj(covmean):
        # The product is similar to a PSD matrix, so its root is real up to rounding.
        # Relative tolerance: raw-pixel covariances run to tens or hundreds.
        scale = max(1.0, float(np.abs(covmean.real).max()))
        imag = float(np.abs(covmean.imag).max())
        if imag > MAX_IMAG_REL * scale:
            raise ValueError(f"sqrtm(sigma1 sigma2) has imaginary part {imag:.3g}; "
                             "covariances are not positive semi-definite?")
        covmean = covmean.real

    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


@register_metric("fd", consumes={"features_a": "test_features", "features_b": "sample_features"},
                 kinds=("image", "audio"))
def fd(features_a: np.ndarray, features_b: np.ndarray) -> dict[str, float]:
    """Fréchet distance between Gaussians fitted to features (N, d) and (M, d).

    Means and unbiased covariances (rowvar=False). Returns {"fd": ...}.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    return {"fd": frechet_distance(a.mean(0), np.cov(a, rowvar=False),
                                   b.mean(0), np.cov(b, rowvar=False))}


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3 for all pairs of rows: (m, d), (n, d) -> (m, n)."""
    g = x @ y.T / x.shape[1] + 1
    return g * g * g  # several times faster than g ** 3


def _mmd2_unbiased_poly(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of equal-size blocks x, y (m, d) under _poly_kernel."""
    m = len(x)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    # Unbiased: within-sample sums leave out the diagonal k(x_i, x_i).
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


@register_metric("kid", consumes={"features_a": "test_features", "features_b": "sample_features",
                                  "subsets": "kid_subsets", "subset_size": "kid_subset_size", "seed": "seed"},
                 kinds=("image", "audio"))
def kid(features_a: np.ndarray, features_b: np.ndarray, subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """Kernel Inception Distance between features (N, d) and (M, d).

    Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged
    over `subsets` random blocks of min(subset_size, N, M) rows drawn without replacement
    from each side (defaults of StyleGAN2-ADA's metrics). Unbiased, so it can be
    slightly negative when the distributions match. kid_std is the spread over blocks.
    Returns {"kid": mean, "kid_std": std}.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"kid needs at least 2 rows on each side, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    values = np.array([
        _mmd2_unbiased_poly(a[rng.choice(len(a), m, replace=False)],
                            b[rng.choice(len(b), m, replace=False)])
        for _ in range(subsets)
    ])
    return {"kid": float(values.mean()), "kid_std": float(values.std())}


@register_metric("classes", consumes={"predicted_labels": "predicted_labels", "num_classes": "num_classes"},
                 kinds=("image", "audio"))
def class_metrics(predicted_labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """How evenly samples spread over classes, from a classifier's predicted labels (N,).

    A class is covered if at least one sample is predicted as it. Entropy of the
    predicted-class histogram in nats; the ratio to log(num_classes) is 1 for a uniform
    spread and 0 for total collapse.
    Returns {"class_coverage": fraction covered, "class_entropy": ..., "class_entropy_ratio": ...}.
    """
    counts = np.bincount(np.asarray(predicted_labels, dtype=np.int64), minlength=num_classes)
    p = counts[counts > 0] / counts.sum()
    entropy = float(-np.sum(p * np.log(p)))
    return {
        "class_coverage": float(np.count_nonzero(counts)) / num_classes,
        "class_entropy": entropy,
        "class_entropy_ratio": entropy / math.log(num_classes),
    }


@register_metric("class_modes", consumes={"predicted_labels": "predicted_labels", "num_classes": "num_classes"},
                 kinds=("image", "audio"))
def mode_histogram_metrics(predicted_labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """VEEGAN's and PacGAN's mode statistics, each class a mode (stacked digits: 1,000), from a
    classifier's predicted labels (N,): modes_covered, the number of modes predicted at least
    once, and mode_kl = KL(p || uniform) = sum_k p_k log(p_k K) of the predicted-mode histogram p
    over the K = num_classes modes (0 for a uniform spread, log K for total collapse).
    Returns {"modes_covered", "mode_kl"}.
    """
    counts = np.bincount(np.asarray(predicted_labels, dtype=np.int64), minlength=num_classes)
    p = counts[counts > 0] / counts.sum()
    return {"modes_covered": float(len(p)),
            "mode_kl": max(0.0, float(np.sum(p * np.log(p * num_classes))))}


@register_metric("class_modes_test", consumes={"test_probs": "test_class_probs", "channel_classes": "channel_classes",
                                               "n": "sample_count", "seed": "seed"},
                 kinds=("image",))
def perfect_sampler_modes(test_probs: np.ndarray, channel_classes: int, n: int, seed: int) -> dict[str, float]:
    """The mode statistics a perfect sampler scores at the samples' N, under the same classifier: n stacks
    whose every channel is the same channel of an independently drawn test image (the data's own
    construction: stacks of test digits, a uniform mode each), each labelled by the classifier's digits of
    those channels (a channel-wise classifier reads each channel alone, so this is its label of the new
    stack). It holds what no model can beat here: sampling noise, about (K - 1)/(2N), plus the classifier's
    errors. Labels are base-`channel_classes` numbers, channel 0 the most significant (gm.data.stacked).
    Returns {"modes_covered_test", "mode_kl_test"}."""
    probs = np.asarray(test_probs)
    modes = probs.shape[1]
    channels = round(math.log(modes) / math.log(channel_classes))
    if channel_classes ** channels != modes:
        raise ValueError(f"{modes} classes are not {channel_classes} per channel of whole channels")
    place = channel_classes ** np.arange(channels - 1, -1, -1)
    digits = probs.argmax(axis=1)[:, None] // place % channel_classes  # (M, channels)
    pick = np.random.default_rng(seed).integers(0, len(digits), size=(n, channels))
    labels = (digits[pick, np.arange(channels)] * place).sum(axis=1)
    out = mode_histogram_metrics(labels, modes)
    return {"modes_covered_test": out["modes_covered"], "mode_kl_test": out["mode_kl"]}


def classifier_score(probs: np.ndarray) -> float:
    """The Inception score with the dataset's classifier in place of Inception:
    exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over the rows of `probs` (N, K).

    1 when every p(y|x) is the same (no class information); K at most, reached by
    confident predictions spread evenly over K classes. One value over all N rows (no
    splits): it grows with N for small N, so compare it at the same N.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"class probabilities have shape {p.shape}; expected (N, K) with N > 0")
    p = p / p.sum(axis=1, keepdims=True)
    marginal = p.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(marginal)), 0.0)  # 0 log 0 = 0
    return float(math.exp(max(0.0, terms.sum(axis=1).mean())))


@register_metric("classifier_score", consumes={"sample_probs": "sample_class_probs",
                                               "test_probs": "test_class_probs"},
                 kinds=("image", "audio"))
def classifier_scores(sample_probs: np.ndarray, test_probs: np.ndarray) -> dict[str, float]:
    """The classifier (Inception) score of the samples, and of the test data as the reference
    (a model that matches the data scores about the test score at the same N).
    Returns {"classifier_score", "classifier_score_test"}."""
    return {"classifier_score": classifier_score(sample_probs),
            "classifier_score_test": classifier_score(test_probs)}
