"""Factor coverage of shapes32 (gm.metrics.factors): the decoder against the renderer, and the
coverage statistics against closed forms."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from gm.data import shapes
from gm.data.shapes import FACTOR_NAMES, FACTORS
from gm.core.registry import METRICS
from gm.evaluation import PIXELS, EvaluateParams, FeatureSpace, applicable, evaluation_inputs
from gm.metrics.factors import (CIRCLE, ON_GRID_RMS, ROTATION, UNDEFINED, combo_probabilities, coverage_stats,
                                decode, expected_distinct, factor_coverage)


def _draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, _, f = shapes.generate(n, np.random.default_rng(seed))
    return x, f


def _known(f: np.ndarray) -> np.ndarray:
    """Factor rows as the decoder reports them: a circle's rotation undefined."""
    f = f.copy()
    f[f[:, 0] == CIRCLE, ROTATION] = UNDEFINED
    return f


def test_decoding_renders_returns_their_factors():
    x, f = _draw(1500, 0)
    decoded, dist = decode(x)
    wrong = ~(decoded == _known(f)).all(1)
    # a miss is only where two grid points render pixel for pixel alike (a small cross at 15° and 30°)
    redrawn = shapes.render(np.where(decoded < 0, 0, decoded))
    assert np.array_equal(redrawn, x)
    assert wrong.mean() < 0.005
    assert np.all(dist == 0)
    assert np.all(decoded[f[:, 0] == CIRCLE, ROTATION] == UNDEFINED)


def test_decoding_survives_mild_noise():
    x, f = _draw(500, 1)
    noisy = x + np.random.default_rng(2).normal(0, 10, x.shape)  # std 10/255
    decoded, dist = decode(noisy)
    assert np.all(dist <= ON_GRID_RMS)
    for j, name in enumerate(FACTOR_NAMES):
        if name != "rotation":  # small shapes' rotations differ by a pixel or two: noise can flip them
            assert (decoded[:, j] == f[:, j]).mean() > 0.99, name


@pytest.mark.parametrize("kind", ["uniform noise", "black", "noise blobs", "mean image"])
def test_non_shapes_are_off_the_grid(kind):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    x, _ = _draw(200, 4)
    images = {"uniform noise": lambda: rng.uniform(0, 255, x.shape),
              "black": lambda: np.zeros_like(x),
              "noise blobs": lambda: gaussian_filter(rng.uniform(0, 255, x.shape), sigma=(0, 0, 2, 2)),
              "mean image": lambda: np.broadcast_to(x.mean(0), x.shape)}[kind]()
    _, dist = decode(images)
    assert np.all(dist > ON_GRID_RMS)
    out = coverage_stats(images)
    assert out["on_grid"] == 0 and out["joint_modes"] == 0 and out["factor_coverage"] == 0
    assert out["factor_kl"] == pytest.approx(np.mean([math.log(len(FACTORS[k])) for k in FACTOR_NAMES]))


def test_uniform_data_covers_every_value_with_kl_near_zero():
    n = 2000
    x, _ = _draw(n, 5)
    out = coverage_stats(x)
    assert out["on_grid"] == 1 and out["factor_coverage"] == 1
    for name in FACTOR_NAMES:
        k = len(FACTORS[name])
        m = n if name != "rotation" else n * 3 / 4  # rotation: the non-circles only (about 3/4)
        # 2 m KL(p_hat || uniform) is asymptotically chi-square with K - 1 degrees of freedom
        bound = stats.chi2.ppf(1 - 1e-6, k - 1) / (2 * 0.9 * m)
        assert out[f"factor_{name}_covered"] == 1
        assert 0 <= out[f"factor_{name}_kl"] < bound, name
    sd = math.sqrt(out["joint_modes_expected"])  # a Poisson-binomial count: variance below the mean
    assert abs(out["joint_modes"] - out["joint_modes_expected"]) < 5 * sd


def test_one_colour_generator_covers_an_eighth_with_kl_log_8():
    x, f = _draw(400, 6)
    f[:, FACTOR_NAMES.index("colour")] = 3
    out = coverage_stats(shapes.render(f))
    assert out["factor_colour_covered"] == 1 / 8
    assert out["factor_colour_kl"] == math.log(8)
    assert out["factor_kind_covered"] == 1


def test_a_value_needs_a_quarter_of_its_fair_share():
    x, f = _draw(800, 7)
    kind = f[:, 0]
    keep = (kind != 0) | (np.arange(len(kind)) % 8 == 0)  # squares at about 1/8 of their share
    out = coverage_stats(x[keep])
    assert out["factor_kind_covered"] == 3 / 4


def test_expected_distinct_against_hand_computation():
    assert expected_distinct(np.array([0.5, 0.5]), 2) == pytest.approx(1.5)  # 2 (1 - 1/4)
    assert expected_distinct(np.array([0.5, 0.25, 0.25]), 2) == pytest.approx(0.75 + 2 * 7 / 16)
    assert expected_distinct(np.array([1.0]), 3) == 1
    c, n = 19200, 2500
    assert expected_distinct(np.full(c, 1 / c), n) == pytest.approx(c * (1 - math.exp(-n / c)), rel=1e-4)


def test_combo_probabilities_merge_what_renders_alike():
    p = combo_probabilities()
    assert p.sum() == pytest.approx(1)
    # 19,200 grid points; a circle's 6 rotations are one (4 scales x 25 positions x 8 colours x 5 merged)
    assert len(p) <= 19200 - 800 * 5
    assert expected_distinct(p, 2500) < 19200 * (1 - math.exp(-2500 / 19200))


def test_metric_reports_test_reference_and_checks_the_grid():
    x, _ = _draw(300, 8)
    test, _ = _draw(500, 9)
    # as the prepared data's meta.json holds them: written with sorted keys, read back as lists
    meta_factors = json.loads(json.dumps(FACTORS, sort_keys=True))
    assert list(meta_factors) != list(FACTORS)
    out = factor_coverage(x, test, meta_factors)
    assert out["factor_coverage_test"] == 1 and out["on_grid_test"] == 1
    assert out["joint_modes_test"] <= 300
    with pytest.raises(ValueError, match="prepare the data"):
        factor_coverage(x, test, {**meta_factors, "scale": [0.1, 0.2]})


def test_evaluation_runs_it_only_where_the_data_has_factors():
    from types import SimpleNamespace

    x, _ = _draw(60, 10)
    ev = SimpleNamespace(capabilities=SimpleNamespace(likelihood=None, reconstruction=False, codebook=False),
                         spec=SimpleNamespace(kind="image", dim=x[0].size, num_classes=4))
    params = EvaluateParams(kid_subsets=2, kid_subset_size=20)
    plain = evaluation_inputs(ev, x, x, None, params, FeatureSpace(PIXELS), 0)
    assert "factor_coverage" not in [m.name for m in applicable("image", plain)]
    inputs = evaluation_inputs(ev, x, x, None, params, FeatureSpace(PIXELS), 0, factors=FACTORS)
    assert "factor_coverage" in [m.name for m in applicable("image", inputs)]
    metric = METRICS["factor_coverage"]  # alone: pixel-space FD of 3,072 dimensions takes minutes
    out = metric.fn(**{param: inputs[name] for param, name in metric.consumes.items()})
    assert out["factor_coverage"] == 1 and out["on_grid"] == 1
