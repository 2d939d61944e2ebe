"""Stacked digits: three 8x8 digits as the three channels of one image, 1,000 modes (VEEGAN's and
PacGAN's stacked MNIST, on scikit-learn's digits).

A stack's label is 100·d1 + 10·d2 + d3 (the digits of channels 0, 1, 2). Each channel keeps the
digits' 17 levels; a larger `size` repeats each pixel (nearest-neighbour upsampling), so the
levels stay exactly those 17 values.

No digit image may serve two splits: the prepare stage splits the *digits* (seeded, stratified,
with data.val_fraction / data.test_fraction, like any labelled source) and only then is each
split's stacks drawn from its own digits (`StackBuilder`, called once per split by
gm.data.io.write_splits). Mode labels are drawn uniformly, so every split covers the 1,000 modes
evenly in expectation, and the image for each channel is drawn uniformly from that split's
digits of the channel's class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZES = (8, 16, 32)
LEVELS = 17
DIGIT_CLASSES = 10
MODES = DIGIT_CLASSES ** 3
SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}  # each split draws from its own seeded stream


def upsample(x: np.ndarray, size: int) -> np.ndarray:
    """(N, C, 8, 8) -> (N, C, size, size) by repeating each pixel size/8 times along both axes."""
    if size not in SIZES:
        raise ValueError(f"size {size}: expected one of {', '.join(map(str, SIZES))}")
    r = size // 8
    return x if r == 1 else np.repeat(np.repeat(x, r, axis=-2), r, axis=-1)


def stack_labels(digits: np.ndarray) -> np.ndarray:
    """(N, 3) digit labels per channel -> stacked labels 100·d1 + 10·d2 + d3 (N,)."""
    digits = np.asarray(digits, dtype=np.int64)
    return digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]


def channel_digits(labels: np.ndarray) -> np.ndarray:
    """Stacked labels (N,) -> the digit label of each channel (N, 3)."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.stack([labels // 100, labels // 10 % 10, labels % 10], axis=1)


def stack(images: np.ndarray, labels: np.ndarray, n: int, size: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n stacks of the digits `images` (M, 1, 8, 8) with labels (M,) in 0..9.

    Returns (x float32 (n, 3, size, size), y int64 (n,), which (n, 3): the row of `images`
    used for each channel). Every digit class must be present.
    """
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.shape[1:] != (1, 8, 8) or labels.shape != (len(images),):
        raise ValueError(f"digits have shape {images.shape}, labels {labels.shape}; expected (M, 1, 8, 8) and (M,)")
    pools = [np.flatnonzero(labels == d) for d in range(DIGIT_CLASSES)]
    missing = [d for d, p in enumerate(pools) if len(p) == 0]
    if missing:
        raise ValueError(f"no digit of class {', '.join(map(str, missing))} to stack from {len(images)} "
                         "digits; every class 0..9 is needed (use more data or larger split fractions)")
    digits = rng.integers(0, DIGIT_CLASSES, size=(n, 3))
    which = np.empty((n, 3), dtype=np.int64)
    for d, pool in enumerate(pools):
        hit = digits == d
        which[hit] = pool[rng.integers(0, len(pool), size=int(hit.sum()))]
    x = images[which, 0]  # (n, 3, 8, 8): channel c is digit image which[:, c]
    return upsample(x.astype(np.float32), size), stack_labels(digits), which


@dataclass(frozen=True)
class StackBuilder:
    """What a stacked source hands gm.data.io.write_splits (as info["per_split"]): `n` stacks in
    all, shared out like any source's rows (gm.data.io.split_sizes), and for each split the
    stacks built from that split's digits only, from a stream of its own seeded by the data seed."""

    n: int
    size: int
    seed: int

    def __call__(self, split: str, images: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, SPLIT_STREAM[split]])
        x, y, _ = stack(images, labels, n, self.size, rng)
        return x, y
