"""Metrics against closed forms and independent implementations."""

import dataclasses
import functools
import math

import numpy as np
import pytest
import scipy.stats

from gm.data.dataspec import DataSpec
from gm.data.io import write_splits
from gm.evaluation import PIXELS, EvaluateParams, FeatureSpace, compute_metrics, evaluate, evaluation_inputs
from gm.metrics import toy
from gm.metrics import (class_metrics, fd, frechet_distance,
                        kid, mode_metrics, held_out_likelihood, w1, w1_noise_floor)
from gm.core.registry import METRICS, register_metric
from gm.models.base import Capabilities
from tests.helpers import DIGITS

RING8 = {"centers": np.stack([np.cos(2 * np.pi * np.arange(8) / 8),
                              np.sin(2 * np.pi * np.arange(8) / 8)], axis=1), "std": 0.01}
GRID25 = {"centers": np.array([(x, y) for x in range(-4, 5, 2) for y in range(-4, 5, 2)], float),
          "std": 0.05}
P_WITHIN_3_STD = 1 - math.exp(-9 / 2)  # chi^2_2 CDF at 3^2: 98.89%


def random_spd(rng, d):
    x = rng.normal(size=(d, d))
    return x @ x.T + 0.1 * np.eye(d)


def sqrt_psd(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def mixture_samples(mixture, n, rng, modes=None):
    """Perfect sampler of an isotropic Gaussian mixture, optionally restricted to some modes."""
    centers = mixture["centers"] if modes is None else mixture["centers"][modes]
    pick = rng.integers(len(centers), size=n)
    return centers[pick] + mixture["std"] * rng.normal(size=(n, 2))


def test_registry_names():
    assert {"modes", "w1", "w1_floor", "likelihood", "fd", "kid", "prdc", "classes", "recon_mse",
            "codebook_perplexity"} <= set(METRICS)


# ---- Fréchet distance ----

def test_frechet_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 2.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_commuting_closed_form():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T  # same eigenvectors, so (s1 s2)^1/2 = Q sqrt(ab) Q^T
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_general_against_symmetric_root():
    # Tr (s1 s2)^1/2 = Tr (s1^1/2 s2 s1^1/2)^1/2, computed here only with eigh.
    rng = np.random.default_rng(1)
    s1, s2 = random_spd(rng, 6), random_spd(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    r1 = sqrt_psd(s1)
    expected = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                - 2 * np.trace(sqrt_psd(r1 @ s2 @ r1)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_singular_covariances():
    # A constant coordinate (zero variance) must not break the square root.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4))
    s1 = x.T @ x  # rank 3 in 4-D
    s2 = 2.0 * s1
    expected = np.trace(s1) * (1 + 2 - 2 * math.sqrt(2))  # commuting: sum (sqrt a - sqrt 2a)^2
    assert frechet_distance(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(expected, rel=1e-3)


def test_fd_on_samples_approaches_closed_form():
    rng = np.random.default_rng(3)
    s1, s2 = random_spd(rng, 3), random_spd(rng, 3)
    mu1, mu2 = np.zeros(3), np.array([1.0, -1.0, 0.5])
    a = rng.multivariate_normal(mu1, s1, size=50_000)
    b = rng.multivariate_normal(mu2, s2, size=50_000)
    got = fd(a, b)
    assert set(got) == {"fd"} and isinstance(got["fd"], float)
    assert got["fd"] == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=0.03)


# ---- KID ----

def test_kid_same_distribution_is_near_zero_and_shift_is_positive():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same = kid(a, b, subsets=30, subset_size=500, seed=0)
    assert abs(same["kid"]) < 3 * same["kid_std"]
    shifted = kid(a, b + 0.5, subsets=30, subset_size=500, seed=0)
    assert shifted["kid"] > 5 * shifted["kid_std"]
    assert shifted["kid"] > 10 * abs(same["kid"])


def test_kid_is_unbiased_mmd():
    # With one block holding all rows, KID is the unbiased MMD^2 written out by hand.
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 4)), rng.normal(1.0, 1.0, size=(30, 4))
    m = len(x)

    def k(p, q):
        return (p @ q.T / 4 + 1) ** 3

    def off_diagonal_mean(g):
        return (g.sum() - np.trace(g)) / (m * (m - 1))

    expected = off_diagonal_mean(k(x, x)) + off_diagonal_mean(k(y, y)) - 2 * k(x, y).mean()
    got = kid(x, y, subsets=3, subset_size=m)
    assert got["kid"] == pytest.approx(expected, rel=1e-10)
    assert got["kid_std"] == pytest.approx(0.0, abs=1e-8)  # every block is the whole set


# ---- W1 ----

def test_w1_of_shift_is_shift_length():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(500, 2))
    shift = np.array([0.3, -0.4])  # length 0.5
    assert w1(a, a + shift)["w1"] == pytest.approx(0.5, abs=1e-6)


def test_w1_1d_matches_scipy():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=300), rng.exponential(size=200)
    expected = scipy.stats.wasserstein_distance(a, b)
    assert w1(a[:, None], b[:, None])["w1"] == pytest.approx(expected, rel=1e-8)


def test_w1_converges_on_2500_points(monkeypatch):
    # PacGAN's sample size must reach the optimum (w1 raises otherwise) ...
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(2500, 2)), rng.normal(size=(2500, 2))
    got = w1(a, b)["w1"]
    assert 0 < got < 0.5 * np.linalg.norm(a - b, axis=1).mean()
    # ... and a solver stopped early is an error, not a silently too-large W1.
    monkeypatch.setattr(toy, "EMD_MAX_ITER", 1000)
    with pytest.raises(RuntimeError, match="did not converge"), pytest.warns(UserWarning):
        w1(a, b)


def test_w1_noise_floor():
    rng = np.random.default_rng(9)
    data = rng.normal(size=(1000, 2))
    floor = w1_noise_floor(data, 400, seed=0)["w1_floor"]
    # Two 400-point samples of N(0, I_2) are ~0.2 apart; reusing one subset would give 0.
    assert 0.1 < floor < 0.5
    assert w1_noise_floor(data, 400, seed=0)["w1_floor"] == floor  # seeded
    # Too few rows for two subsets of 5,000: falls back to halves instead of failing.
    assert w1_noise_floor(data, 5000, seed=0)["w1_floor"] > 0.1


# ---- PacGAN mode metrics ----

def test_modes_perfect_ring8():
    rng = np.random.default_rng(10)
    got = mode_metrics(mixture_samples(RING8, 2500, rng), RING8["centers"], RING8["std"])
    assert got["modes"] == 8
    assert got["hq_pct"] == pytest.approx(100 * P_WITHIN_3_STD, abs=1.0)
    assert 0 <= got["rkl"] < 0.01


def test_modes_collapsed_ring8():
    rng = np.random.default_rng(11)
    got = mode_metrics(mixture_samples(RING8, 2500, rng, modes=[3]), RING8["centers"], RING8["std"])
    assert got["modes"] == 1
    assert got["rkl"] == pytest.approx(math.log(8))
    two = mode_metrics(mixture_samples(RING8, 2500, rng, modes=[0, 4]), RING8["centers"],
                       RING8["std"])
    assert two["modes"] == 2 and two["rkl"] == pytest.approx(math.log(4), abs=0.01)


def test_modes_perfect_grid25():
    rng = np.random.default_rng(12)
    got = mode_metrics(mixture_samples(GRID25, 2500, rng), GRID25["centers"], GRID25["std"])
    assert got["modes"] == 25
    assert got["hq_pct"] == pytest.approx(100 * P_WITHIN_3_STD, abs=1.0)
    assert got["rkl"] < 0.02


def test_the_registered_mode_count_uses_pacgans_2500_samples_whatever_n_samples_is():
    # 2,500 samples on one mode, then 23,500 spread over all eight: PacGAN counts the first 2,500 only
    from gm.metrics.toy import pacgan_mode_metrics

    rng = np.random.default_rng(3)
    x = np.concatenate([mixture_samples(RING8, 2500, rng, modes=[3]), mixture_samples(RING8, 23500, rng)])
    got = pacgan_mode_metrics(x, RING8["centers"], RING8["std"])
    assert got == mode_metrics(x[:2500], RING8["centers"], RING8["std"]) and got["modes"] == 1
    assert METRICS["modes"].fn is pacgan_mode_metrics


def test_modes_no_high_quality_samples():
    # Points between the modes: nothing is high quality; rKL takes its worst value log K.
    got = mode_metrics(np.full((100, 2), 0.5), RING8["centers"], RING8["std"])
    assert got == {"modes": 0.0, "hq_pct": 0.0, "rkl": pytest.approx(math.log(8))}


# ---- likelihood ----

def test_bits_per_dim_uniform_unit_cube_is_zero():
    rng = np.random.default_rng(14)
    x = rng.uniform(size=(1000, 8))
    log_p = np.zeros(len(x))  # density 1 on [0, 1)^D
    assert held_out_likelihood(log_p, 8, "exact") == {"test_nll_nats": 0.0, "test_bits_per_dim": 0.0, "test_bound": 0.0}
    assert held_out_likelihood(log_p, 8, "bound")["test_bound"] == 1.0


def test_bits_per_dim_standard_gaussian():
    d = 16
    x = np.random.default_rng(15).normal(size=(20_000, d))
    log_p = scipy.stats.multivariate_normal(np.zeros(d), np.eye(d)).logpdf(x)
    expected = d * 0.5 * math.log(2 * math.pi * math.e) / (d * math.log(2))  # entropy / (D ln 2)
    assert held_out_likelihood(log_p, d, "exact")["test_bits_per_dim"] == pytest.approx(expected, rel=5e-3)


def test_data_space_uniform_is_log2_17():
    # BENCHMARKS.md's "uniform 4.09": dequantized digits in [0, 17)^64, model space [-1, 1)^64.
    spec = DIGITS
    x = np.random.default_rng(16).uniform(0, 17, size=(100, spec.dim))
    z = (x - 8.5) / 8.5
    assert np.all(np.abs(z) <= 1)
    log_p_model = np.full(len(x), -spec.dim * math.log(2))  # uniform on [-1, 1)^D
    log_p_data = log_p_model + spec.log_det_to_model  # change of variables to data space
    got = held_out_likelihood(log_p_data, spec.dim, "exact")["test_bits_per_dim"]
    assert got == pytest.approx(math.log2(17), rel=1e-12)
    assert round(got, 2) == 4.09


# ---- class statistics ----

def test_class_metrics_uniform_and_collapsed():
    uniform = class_metrics(np.repeat(np.arange(10), 7), 10)
    assert uniform["class_coverage"] == 1.0
    assert uniform["class_entropy"] == pytest.approx(math.log(10))
    assert uniform["class_entropy_ratio"] == pytest.approx(1.0)
    collapsed = class_metrics(np.full(50, 3), 10)
    assert collapsed == {"class_coverage": 0.1, "class_entropy": 0.0, "class_entropy_ratio": 0.0}
    half = class_metrics(np.arange(100) % 5, 10)
    assert half["class_coverage"] == 0.5
    assert half["class_entropy"] == pytest.approx(math.log(5))


# ---- dispatch: evaluation calls every registered metric that applies ----


class _Gaussian:
    """An Evaluable with the given capabilities: seeded N(0, I) samples and their log-density."""

    def __init__(self, spec, capabilities, finite=True):
        self.spec, self.capabilities, self.finite = spec, capabilities, finite

    def sample(self, n, seed):
        x = np.random.default_rng(seed).normal(size=(n, *self.spec.shape)).astype(np.float32)
        return x if self.finite else np.full_like(x, np.nan)

    def log_prob(self, x, seed):
        return scipy.stats.norm.logpdf(x.reshape(len(x), -1)).sum(1)

    def reconstruct(self, x, seed):
        return x + 0.5


@pytest.fixture
def called(monkeypatch) -> list[str]:
    """The names of the registered metrics evaluation calls, in order (each still computes)."""
    names = []
    for name, metric in list(METRICS.items()):
        def record(*args, _metric=metric, **kwargs):
            names.append(_metric.name)
            return _metric.fn(*args, **kwargs)

        functools.update_wrapper(record, metric.fn)  # keeps the signature the registry checks
        monkeypatch.setitem(METRICS, name, dataclasses.replace(metric, fn=record))
    return names


TOY2 = DataSpec(shape=(2,), kind="toy")
PARAMS = EvaluateParams(n_samples=200, kid_subsets=2, kid_subset_size=50)


@pytest.mark.parametrize("spec,caps,finite,modes,expected", [
    (TOY2, Capabilities(likelihood="exact"), True, RING8, {"w1", "w1_floor", "modes", "likelihood"}),
    (TOY2, Capabilities(), True, None, {"w1", "w1_floor"}),
    (TOY2, Capabilities(likelihood="bound", reconstruction=True), False, RING8, {"likelihood", "recon_mse"}),
    (DIGITS, Capabilities(likelihood="bound", reconstruction=True), True, None,
     {"fd", "kid", "prdc", "likelihood", "recon_mse"}),
    (DIGITS, Capabilities(), False, None, set()),
], ids=["toy-modes-exact", "toy-implicit", "toy-non-finite", "image-autoencoder", "image-non-finite"])
def test_dispatch_calls_exactly_the_applicable_metrics(called, spec, caps, finite, modes, expected):
    ev = _Gaussian(spec, caps, finite)
    test = np.random.default_rng(1).normal(size=(150, *spec.shape))
    inputs = evaluation_inputs(ev, ev.sample(PARAMS.n_samples, 0), test, modes, PARAMS, FeatureSpace(PIXELS), 0)
    out = compute_metrics(spec.kind, inputs)
    assert sorted(called) == sorted(expected)  # each applicable metric once, no other
    assert ("feature_seconds" in out) == ("fd" in expected) and ("test_bound" in out) == ("likelihood" in expected)
    if "recon_mse" in expected:
        assert out["test_recon_mse"] == pytest.approx(0.25)


def test_features_are_computed_only_for_a_metric_that_needs_them(monkeypatch):
    for name in ("fd", "kid", "prdc"):
        monkeypatch.delitem(METRICS, name)
    ev = _Gaussian(DIGITS, Capabilities(likelihood="exact"), True)
    test = np.random.default_rng(1).normal(size=(50, *DIGITS.shape))
    inputs = evaluation_inputs(ev, ev.sample(60, 0), test, None, PARAMS, FeatureSpace(PIXELS), 0)
    out = compute_metrics("image", inputs)
    assert "features" not in inputs.values and "feature_seconds" not in out and "log_prob_seconds" in out


def test_a_metric_registered_in_a_test_shows_up_in_evaluation(tmp_path):
    data_dir = tmp_path / "blob"
    x = np.random.default_rng(2).normal(size=(400, 2))
    write_splits(data_dir, x, None, {"kind": "toy", "shape": [2], "levels": None, "num_classes": None}, seed=0, val_fraction=0.1,
                 test_fraction=0.25, source_hash="test")

    @register_metric("test_mean_norm", consumes={"samples": "samples", "data": "test"}, kinds=("toy",))
    def mean_norm(samples, data):
        return {"sample_norm": float(np.linalg.norm(samples, axis=1).mean()),
                "test_norm": float(np.linalg.norm(data, axis=1).mean())}

    try:
        metrics, samples = evaluate(_Gaussian(TOY2, Capabilities(), True), data_dir, PARAMS)
    finally:
        METRICS.pop("test_mean_norm")
    assert metrics["sample_norm"] == float(np.linalg.norm(samples, axis=1).mean())
    assert {"w1", "w1_floor", "test_norm"} <= set(metrics) and "test_mean_norm" not in METRICS


def test_a_metric_must_bind_every_parameter_it_has_no_default_for():
    def fn(samples, k):
        return {}

    with pytest.raises(ValueError, match="parameter 'k' of fn has no default"):
        register_metric("test_unbound", consumes={"samples": "samples"}, kinds=("toy",))(fn)
    with pytest.raises(ValueError, match="fn has no parameter 'n'"):
        register_metric("test_unknown", consumes={"samples": "samples", "k": "seed", "n": "dim"}, kinds=("toy",))(fn)
    assert "test_unbound" not in METRICS and "test_unknown" not in METRICS
