"""The stacked_digits and shapes32 sources: shapes, levels, labels, determinism, no digit shared
between splits, factor coverage (fast; everything under tmp_path)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from gm.core.config import ConfigError
from gm.data import shapes, stacked
from gm.data.io import read_meta, read_split, split_indices
from gm.data.sources import build_source, source_hash
from gm.stages import prepare as stage

N = 3000


def src(cfg: dict):
    return build_source("ds", cfg, "data.datasets.ds")


@pytest.fixture(scope="module")
def stacked_prepared(digits_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    meta = stage.prepare("sd", src({"source": "stacked_digits", "n": N, "size": 16}), digits_root, out, 3, 0.1, 0.2)
    return out / "sd", meta


def digit_pools(digits_root, seed=3, val=0.1, test=0.2) -> dict[str, np.ndarray]:
    """Each split's digit images (M, 8, 8), split as the prepare stage splits the digits."""
    x, y, _ = src({"source": "digits"}).load(digits_root, seed)
    parts = split_indices(len(x), y, seed, val, test)
    return {s: x[idx, 0] for s, idx in parts.items()}


def as_set(images: np.ndarray) -> set[bytes]:
    return {np.ascontiguousarray(a, dtype=np.float32).tobytes() for a in images}


# --------------------------------------------------------------------------- stacked digits


def test_stacked_meta_shapes_and_levels(stacked_prepared):
    path, meta = stacked_prepared
    assert meta["shape"] == [3, 16, 16] and meta["levels"] == 17 and meta["num_classes"] == 1000
    assert meta["n"] == {"train": N - 300 - 600, "val": 300, "test": 600}  # split_sizes of n stacks
    assert read_meta(path)["kind"] == "image"
    for split in ("train", "val", "test"):
        x, y = read_split(path, split)
        assert x.shape == (meta["n"][split], 3, 16, 16) and y.shape == (len(x),)
        assert set(np.unique(x)) <= set(range(17)) and x.max() == 16
        assert y.min() >= 0 and y.max() < 1000
        # nearest upsampling: every 2x2 block is one value, and the blocks are an 8x8 digit
        np.testing.assert_array_equal(x, np.repeat(np.repeat(x[:, :, ::2, ::2], 2, 2), 2, 3))
    train_y = read_split(path, "train")[1]
    assert len(np.unique(train_y)) > 850  # 2,100 uniform draws over 1,000 modes cover ~88%


def test_label_is_the_digit_of_each_channel(digits_root, stacked_prepared):
    path, _ = stacked_prepared
    pools = digit_pools(digits_root)
    x_digits, y_digits, _ = src({"source": "digits"}).load(digits_root, 3)
    label_of = {img.tobytes(): int(lab) for img, lab in zip(x_digits[:, 0].astype(np.float32), y_digits)}
    for split in ("train", "test"):
        x, y = read_split(path, split)
        channels = stacked.channel_digits(y)
        for c in range(3):
            got = np.array([label_of[a.tobytes()] for a in np.ascontiguousarray(x[:, c, ::2, ::2])])
            np.testing.assert_array_equal(got, channels[:, c])
        assert set(np.unique(y)) and pools  # labels are 100·d1 + 10·d2 + d3 by construction
    np.testing.assert_array_equal(stacked.stack_labels([[1, 2, 3], [9, 0, 7]]), [123, 907])


def test_no_digit_of_another_split_in_a_stack(digits_root, stacked_prepared):
    path, _ = stacked_prepared
    pools = {s: as_set(p) for s, p in digit_pools(digits_root).items()}
    for split in ("train", "val", "test"):
        x, _ = read_split(path, split)
        used = as_set(x[:, :, ::2, ::2].reshape(-1, 8, 8))
        assert used <= pools[split]  # every channel is a digit of this split
        for other in set(pools) - {split}:
            only_other = pools[other] - pools[split]  # (sklearn's digits hold a few exact duplicates)
            assert not (used & only_other), f"a {other} digit in a {split} stack"


def test_stacked_is_deterministic_and_seeded(digits_root, stacked_prepared, tmp_path):
    path, meta = stacked_prepared
    cfg = src({"source": "stacked_digits", "n": N, "size": 16})
    again = stage.prepare("sd", cfg, digits_root, tmp_path / "a", 3, 0.1, 0.2)
    assert again["sha256"] == meta["sha256"]
    other = stage.prepare("sd", cfg, digits_root, tmp_path / "b", 4, 0.1, 0.2)
    assert other["sha256"]["train"] != meta["sha256"]["train"]
    # the hash covers the digits file and the stacking params
    info = cfg.load(digits_root, 3)[2]
    bigger = src({"source": "stacked_digits", "n": N + 1, "size": 16})
    assert source_hash(cfg, info, digits_root, 3) != source_hash(bigger, info, digits_root, 3)


@pytest.mark.parametrize("size", [8, 32])
def test_stack_sizes(size):
    rng = np.random.default_rng(0)
    images = np.repeat(np.arange(10, dtype=np.float32), 64).reshape(10, 1, 8, 8)  # digit d is all d
    x, y, which = stacked.stack(images, np.arange(10), 50, size, rng)
    assert x.shape == (50, 3, size, size)
    np.testing.assert_array_equal(x[:, :, 0, 0], stacked.channel_digits(y))
    np.testing.assert_array_equal(which, stacked.channel_digits(y))


def test_stacked_config_errors(digits_root):
    with pytest.raises(ConfigError, match=r"^data\.datasets\.ds\.size: expected one of 8, 16, 32, got 12$"):
        src({"source": "stacked_digits", "size": 12})
    with pytest.raises(ValueError, match="no digit of class 9"):
        stacked.stack(np.zeros((9, 1, 8, 8)), np.arange(9), 5, 8, np.random.default_rng(0))


# --------------------------------------------------------------------------------- shapes32


@pytest.fixture(scope="module")
def shapes_prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    meta = stage.prepare("sh", src({"source": "shapes32", "n": 2000}), Path("."), out, 0, 0.1, 0.2)
    return out / "sh", meta


def test_shapes_meta_shapes_levels(shapes_prepared):
    path, meta = shapes_prepared
    assert meta["shape"] == [3, 32, 32] and meta["levels"] == 256 and meta["num_classes"] == 4
    assert meta["class_names"] == ["square", "circle", "triangle", "cross"]
    assert meta["factors"] == shapes.FACTORS and meta["source_hash"]
    x, y = read_split(path, "train")
    assert x.shape == (meta["n"]["train"], 3, 32, 32)
    assert np.array_equal(x, np.floor(x)) and x.min() == 0 and x.max() == 255
    assert set(np.unique(y)) == {0, 1, 2, 3}
    # every image has a shape, inside the image: no foreground on the border rows/columns
    fg = x.max(axis=1) > 0
    assert fg.any(axis=(1, 2)).all()
    assert not fg[:, [0, -1], :].any() and not fg[:, :, [0, -1]].any()


def test_shapes_is_deterministic(tmp_path):
    a = src({"source": "shapes32", "n": 300}).load(tmp_path, 5)
    b = src({"source": "shapes32", "n": 300}).load(tmp_path, 5)
    c = src({"source": "shapes32", "n": 300}).load(tmp_path, 6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_every_factor_value_is_drawn():
    x, y, f = shapes.generate(2000, np.random.default_rng(0))
    for col, name in enumerate(shapes.FACTOR_NAMES):
        assert set(np.unique(f[:, col])) == set(range(len(shapes.FACTORS[name]))), name
    np.testing.assert_array_equal(y, f[:, 0])  # the label is the kind
    # each image's colour is its colour factor's, on black
    colours = np.asarray(shapes.COLOURS)
    for i in range(0, 2000, 97):
        fg = x[i].max(axis=0) > 0
        np.testing.assert_array_equal(x[i][:, fg].T, np.broadcast_to(colours[f[i, 5]], (fg.sum(), 3)))
        assert not x[i][:, ~fg].any()


def test_pixel_mass_identifies_the_kind():
    # each kind, scale 0.4 (6.4 px half-size), centred, unrotated: its area in pixels
    areas = {"square": 4.0, "circle": math.pi, "triangle": 3 * math.sqrt(3) / 4, "cross": 20 / 9}
    mass = {}
    for k, name in enumerate(shapes.KINDS):
        img = shapes.render(np.array([[k, 3, 0, 2, 2, 0]]))[0]
        mass[name] = int((img.max(axis=0) > 0).sum())
        assert mass[name] == pytest.approx(areas[name] * 0.4 ** 2 * 256, rel=0.15), name
    assert mass["square"] > mass["circle"] > mass["cross"] > mass["triangle"]
    # rotation and position keep the area (up to pixel rounding), scale grows it as its square
    turned = shapes.render(np.array([[0, 3, 3, 0, 4, 0]]))[0].max(axis=0) > 0
    assert turned.sum() == pytest.approx(areas["square"] * 0.4 ** 2 * 256, rel=0.15)
    small = shapes.render(np.array([[1, 0, 0, 2, 2, 0]]))[0].max(axis=0) > 0
    assert small.sum() == pytest.approx(mass["circle"] * (0.2 / 0.4) ** 2, rel=0.15)
    # the triangle points up: apex 6.4 px above the centre (y = 9.6), base 3.2 px below (y = 19.2)
    tri = shapes.render(np.array([[2, 3, 0, 2, 2, 0]]))[0].max(axis=0) > 0
    rows = np.flatnonzero(tri.any(axis=1))
    assert (rows.min(), rows.max()) == (10, 18) and tri[16:].sum() > tri[:16].sum()


# ------------------------------------------------------------------------ write_splits per split


def test_split_rows_builds_each_split_from_its_own_rows():
    from gm.data.io import split_rows

    class Echo:  # a "sample" per row of material: the material's own row ids, labelled
        n = 40

        def __call__(self, split, x, y, n):
            assert len(x) == len(y) and n == {"train": 28, "val": 4, "test": 8}[split]
            return np.resize(x, (n, 1)), np.resize(y, n)

    x = np.arange(100, dtype=np.float32)[:, None]
    y = np.arange(100) % 2
    rows = split_rows(x, y, {"per_split": Echo()}, 0, 0.1, 0.2)
    parts = split_indices(100, y, 0, 0.1, 0.2)
    for s, (xs, ys) in rows.items():
        assert set(xs[:, 0].astype(int)) <= set(parts[s].tolist())
    with pytest.raises(ValueError, match="must be labelled"):
        split_rows(x, None, {"per_split": Echo()}, 0, 0.1, 0.2)
