"""Precision/recall and density/coverage against theory, failure modes and a brute-force twin."""

import math

import numpy as np
import pytest

from gm.metrics import prdc
from gm.core.registry import METRICS

SQUARE4 = 10.0 * np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])  # 4 modes 14 std apart


def mixture(centers, n, rng, std=1.0):
    return centers[rng.integers(len(centers), size=n)] + std * rng.normal(size=(n, centers.shape[1]))


def expected_coverage_same_distribution(n, m, k):
    """P(some fake lies in a real point's k-NN ball) when real and fake are iid from one law.

    The ball holds no fake iff the k nearest of the other n - 1 + m points are all real,
    which has probability C(n-1, k) / C(n-1+m, k) (Naeem et al. 2020, Sec. 4): 2^-k for n = m
    large.
    """
    return 1.0 - math.prod((n - 1 - t) / (n - 1 + m - t) for t in range(k))


def brute_force_prdc(real, fake, k_pr, k_dc):
    """All pairs at once, straight from the definitions, "<=" for inside."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    d_rr, d_ff, d_fr = dist(real, real), dist(fake, fake), dist(fake, real)
    r_real_pr = np.sort(d_rr, axis=1)[:, k_pr]  # column 0 is the point itself
    r_real_dc = np.sort(d_rr, axis=1)[:, k_dc]
    r_fake_pr = np.sort(d_ff, axis=1)[:, k_pr]
    inside_dc = d_fr <= r_real_dc[None, :]  # (M, N)
    return {
        "precision": int((d_fr <= r_real_pr[None, :]).any(axis=1).sum()) / len(fake),
        "recall": int((d_fr <= r_fake_pr[:, None]).any(axis=0).sum()) / len(real),
        "density": int(inside_dc.sum()) / (k_dc * len(fake)),
        "coverage": int(inside_dc.any(axis=0).sum()) / len(real),
    }


def test_registered():
    assert METRICS["prdc"].fn is prdc


def test_identical_distributions():
    rng = np.random.default_rng(0)
    n = 3000
    scores = prdc(rng.normal(size=(n, 8)), rng.normal(size=(n, 8)))
    assert scores["density"] == pytest.approx(1.0, abs=0.1)  # E[density] = 1 exactly
    expected = expected_coverage_same_distribution(n, n, 5)
    assert expected == pytest.approx(1 - 2 ** -5, abs=1e-3)
    assert scores["coverage"] == pytest.approx(expected, abs=0.02)
    assert scores["precision"] > 0.8 and scores["recall"] > 0.8
    assert abs(scores["precision"] - scores["recall"]) < 0.05


def test_mode_dropping_lowers_recall_and_coverage_only():
    rng = np.random.default_rng(1)
    real = mixture(SQUARE4, 2000, rng)
    fake = mixture(SQUARE4[:2], 2000, rng)  # two of the four modes, perfectly sampled
    scores = prdc(real, fake)
    assert scores["recall"] == pytest.approx(0.5, abs=0.1)
    assert scores["coverage"] == pytest.approx(0.5, abs=0.1)
    assert scores["precision"] > 0.8
    assert scores["density"] > 0.8


def test_far_away_fakes_score_zero():
    rng = np.random.default_rng(2)
    real = mixture(SQUARE4, 1000, rng)
    fake = mixture(SQUARE4, 1000, rng) + 1000.0
    scores = prdc(real, fake)
    assert scores == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_collapse_onto_one_mode_has_no_recall():
    rng = np.random.default_rng(3)
    real = mixture(SQUARE4, 2000, rng)
    fake = SQUARE4[0] + 1e-3 * rng.normal(size=(2000, 2))  # every fake near one centre
    scores = prdc(real, fake)
    assert scores["recall"] < 0.02
    assert scores["coverage"] < 0.05
    assert scores["precision"] > 0.95  # each fake is a plausible real point


def test_tie_on_the_radius_counts_as_inside():
    # Real points 0..3 on a line: every 1-NN radius is 1. Fake 4 sits at exactly distance 1
    # from real 3, fake 5 at distance 2; the fakes' own 1-NN radii are 1.
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[4.0], [5.0]])
    scores = prdc(real, fake, k_pr=1, k_dc=1)
    assert scores == {"precision": 0.5, "recall": 0.25, "density": 0.5, "coverage": 0.25}


def small_inputs(data):
    rng = np.random.default_rng(4)
    if data == "gaussian":
        return rng.normal(size=(57, 5)), rng.normal(0.3, 1.2, size=(43, 5))
    # Small integers: many duplicates and exact ties with the radii, all computed exactly.
    return rng.integers(0, 4, size=(60, 2)).astype(float), rng.integers(0, 5, size=(50, 2)).astype(float)


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1000])
@pytest.mark.parametrize("data", ["gaussian", "lattice"])
def test_chunking_matches_brute_force(chunk_rows, data):
    real, fake = small_inputs(data)
    assert prdc(real, fake, chunk_rows=chunk_rows) == brute_force_prdc(real, fake, 3, 5)


def test_lattice_inputs_have_ties():
    """So the brute-force comparison pins the tie convention ("<" would count differently)."""
    real, fake = small_inputs("lattice")
    d_fr = np.sqrt(((fake[:, None] - real[None]) ** 2).sum(-1))
    r_dc = np.sort(np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1)), axis=1)[:, 5]
    assert (d_fr == r_dc[None, :]).any()


def test_rejects_bad_inputs():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="features"):
        prdc(rng.normal(size=(20, 3)), rng.normal(size=(20, 4)))
    with pytest.raises(ValueError, match="rows"):
        prdc(rng.normal(size=(5, 3)), rng.normal(size=(20, 3)))  # 5 rows cannot give a 5-NN radius
