"""shapes32: 32x32 colour images of one flat shape on black, drawn by code from known factors.

Like dSprites (and 3D Shapes), every image is a point of a discrete factor grid, each factor drawn
uniformly and independently per image:

- kind (the label): square, circle, triangle, cross;
- scale: the shape's half-size, as a fraction of the image's half-width;
- rotation: an angle in degrees (a circle looks the same at every angle);
- x, y: the centre, as a fraction of the image's half-width from the centre (y grows downwards);
- colour: one of 8 hues at full saturation and value, as 0..255 RGB.

A pixel takes the colour when its centre lies inside the shape and 0 otherwise, so values are
integers 0..255 (256 levels) and a pixel's value says exactly which shape covers it. The grid is
chosen so that every shape at every position stays inside the image. `FACTORS` (the values of each
factor) goes into the prepared data's meta.json, so that later checks can ask which factor values
a model's samples cover.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

SIZE = 32
LEVELS = 256
KINDS = ("square", "circle", "triangle", "cross")
SCALES = (0.2, 0.26, 0.33, 0.4)  # a square's corner is at most 0.4·√2 ≈ 0.57 from its centre
ROTATIONS = tuple(float(a) for a in range(0, 90, 15))  # degrees: 0, 15, ..., 75
POSITIONS = (-0.4, -0.2, 0.0, 0.2, 0.4)  # 0.4 + 0.57 < 1: no shape leaves the image
COLOURS = tuple(tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h / 8, 1.0, 1.0)) for h in range(8))
FACTORS = {"kind": list(KINDS), "scale": list(SCALES), "rotation": list(ROTATIONS), "x": list(POSITIONS),
           "y": list(POSITIONS), "colour": [list(c) for c in COLOURS]}
FACTOR_NAMES = tuple(FACTORS)  # the column order of a factor-index array


def _inside(kind: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the points (u, v), in each shape's own frame (unit half-size), are inside shape `kind`.
    kind (N, 1, 1) broadcasts against u, v (N, H, W)."""
    au, av = np.abs(u), np.abs(v)
    square = np.maximum(au, av) <= 1
    circle = u * u + v * v <= 1
    # equilateral triangle inscribed in the unit circle, a vertex up (-v is up): inside when its
    # projection on each edge's outward normal is at most the inradius 1/2
    triangle = np.ones_like(square)
    for b in (math.radians(270), math.radians(30), math.radians(150)):  # the normals, y up
        triangle &= u * math.cos(b) - v * math.sin(b) <= 0.5
    cross = ((au <= 1) & (av <= 1 / 3)) | ((au <= 1 / 3) & (av <= 1))
    return np.select([kind == 0, kind == 1, kind == 2, kind == 3], [square, circle, triangle, cross], False)


def render(factors: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Images float32 (N, 3, size, size), values 0..255, of factor-index rows (N, 6) in FACTOR_NAMES order."""
    f = np.asarray(factors, dtype=np.int64).reshape(-1, len(FACTOR_NAMES))
    kind = f[:, 0, None, None]
    scale = np.asarray(SCALES)[f[:, 1]][:, None, None]
    theta = np.radians(np.asarray(ROTATIONS)[f[:, 2]])[:, None, None]
    cx = np.asarray(POSITIONS)[f[:, 3]][:, None, None]
    cy = np.asarray(POSITIONS)[f[:, 4]][:, None, None]
    colour = np.asarray(COLOURS, dtype=np.float32)[f[:, 5]]  # (N, 3)
    grid = (np.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    px, py = grid[None, None, :], grid[None, :, None]  # x along columns, y along rows
    dx, dy = px - cx, py - cy
    cos, sin = np.cos(theta), np.sin(theta)
    u = (cos * dx + sin * dy) / scale  # rotate the pixel by -theta into the shape's frame
    v = (-sin * dx + cos * dy) / scale
    mask = _inside(kind, u, v).astype(np.float32)  # (N, size, size)
    return mask[:, None] * colour[:, :, None, None]


def draw_factors(n: int, rng: np.random.Generator) -> np.ndarray:
    """n factor-index rows (N, 6), each factor uniform over its values, independently."""
    return np.stack([rng.integers(0, len(FACTORS[k]), size=n) for k in FACTOR_NAMES], axis=1)


def generate(n: int, rng: np.random.Generator, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x float32 (n, 3, 32, 32) in 0..255, y int64 (n,) the kind, factor indices int64 (n, 6))."""
    f = draw_factors(n, rng)
    x = np.concatenate([render(f[i:i + chunk]) for i in range(0, n, chunk)]) if n else np.zeros((0, 3, SIZE, SIZE),
                                                                                                    np.float32)
    return x, f[:, 0].copy(), f
