"""Dataset sources: typed configs for `data.datasets.<name>` in params.yaml, one per registered kind.

A source turns its config into arrays in DATA space: `load(repo_root, seed)` returns
`(x float32 (N, *shape), y int64 (N,) or None, info)`, where info holds kind, shape,
levels, num_classes, source_files (relative paths read; empty for generated toys) and,
for mixtures of Gaussians, the mode centres. Toys are unlabelled. File sources also have
`check(repo_root)`, which only verifies their files exist, so params can be validated
before Ray starts.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

import numpy as np

from gm.core.config import ConfigError, build, bounded, to_dict
from gm.data import audio, shapes, stacked
from gm.data.importers import load_image_folder, load_wav_folder, read_bytes, read_idx
from gm.core.registry import Registry

SOURCES = Registry("data source")

DIGITS_PATH = "data/digits/digits.csv.gz"  # where `gm data init` puts sklearn's bundled copy

Loaded = tuple[np.ndarray, "np.ndarray | None", dict]


def build_source(name: str, cfg: Mapping, where: str | None = None):
    """`data.datasets.<name>` mapping -> its source config; ConfigError names the bad field."""
    where = where or f"data.datasets.{name}"
    known = ", ".join(sorted(SOURCES))
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: expected a mapping with a 'source' key (one of: {known}), got {cfg!r}")
    if "source" not in cfg:
        raise ConfigError(f"{where}.source: missing; expected one of: {known}")
    try:
        cls = SOURCES.get_or_fail(cfg["source"], f"{where}.source")
    except (KeyError, TypeError):  # TypeError: an unhashable value such as a list
        raise ConfigError(f"{where}.source: unknown data source {cfg['source']!r}; expected one of: {known}") from None
    return build(cls, cfg, where)


def source_hash(cfg, info: dict, repo_root: Path, seed: int) -> str:
    """md5 identifying the raw data: over each source file's recorded path and bytes, or, for
    generated toys, over the generator's params and seed; data generated from files (info
    "generated_from_files": stacked digits) over both."""
    md5 = hashlib.md5()
    if info["source_files"]:
        for rel in info["source_files"]:
            md5.update(rel.encode() + b"\0")
            md5.update((Path(repo_root) / rel).read_bytes())
    if not info["source_files"] or info.get("generated_from_files"):
        md5.update(json.dumps({"params": to_dict(cfg), "seed": seed}, sort_keys=True).encode())
    return md5.hexdigest()


def _info(kind: str, shape, levels: int | None, num_classes: int | None, files=(), **extra) -> dict:
    return {"kind": kind, "shape": [int(s) for s in shape], "levels": levels,
            "num_classes": num_classes, "source_files": [str(f) for f in files], **extra}


def _integral(a: np.ndarray) -> bool:
    """Whether every value is a whole number (integer dtypes trivially are)."""
    return not np.issubdtype(a.dtype, np.floating) or bool(np.array_equal(a, np.floor(a)))


def check_levels(x: np.ndarray, levels: int, path) -> None:
    """Discrete data must be integers in 0..levels-1 (ValueError naming `path` otherwise)."""
    if x.size == 0:
        return
    lo, hi = x.min(), x.max()
    if lo < 0 or hi > levels - 1 or not _integral(x):
        raise ValueError(f"{path}: values must be integers in 0..{levels - 1} (levels={levels}), "
                         f"found range {lo}..{hi}")


def as_class_indices(y: np.ndarray, n: int, path) -> np.ndarray:
    """Labels must be n non-negative integers (class indices); returns them as int64."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{path}: labels have shape {y.shape}; expected ({n},), one per sample")
    if y.size and (not _integral(y) or y.min() < 0):
        raise ValueError(f"{path}: labels must be non-negative integers (class indices 0..K-1)")
    return y.astype(np.int64)


def _num_classes(y: np.ndarray | None) -> int | None:
    return int(y.max()) + 1 if y is not None and y.size else None


class Source:
    """Behaviour shared by all source configs (the registered frozen dataclasses below)."""

    source: str

    def check(self, repo_root: Path) -> None:
        """Verify the source's files exist; generated sources have none."""

    def load(self, repo_root: Path, seed: int) -> Loaded:
        raise NotImplementedError


class ToySource(Source):
    """A 2-D point cloud drawn from a seeded generator (deterministic given the seed)."""

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, dict | None]:
        """(points (n, 2), modes {"centers", "std"} or None)."""
        raise NotImplementedError

    def load(self, repo_root: Path, seed: int) -> Loaded:
        x, modes = self.sample(np.random.default_rng(seed))
        extra = {"modes": modes} if modes else {}
        return x.astype(np.float32), None, _info("toy", (2,), None, None, **extra)


def _mixture(centers: np.ndarray, std: float, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """n points from the equal-weight isotropic Gaussian mixture on `centers`."""
    which = rng.integers(0, len(centers), size=n)
    x = centers[which] + std * rng.standard_normal((n, 2))
    return x, {"centers": centers.tolist(), "std": std}


@SOURCES.register("ring8")
@dataclass(frozen=True)
class Ring8(ToySource):
    """PacGAN's ring: 8 Gaussians at (r cos 2πk/8, r sin 2πk/8), std 0.01."""

    source: Literal["ring8"] = "ring8"
    n: int = bounded(12000, gt=0)
    std: float = bounded(0.01, gt=0)
    radius: float = bounded(1.0, gt=0)

    def centers(self) -> np.ndarray:
        angles = 2 * math.pi * np.arange(8) / 8
        return self.radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def sample(self, rng):
        return _mixture(self.centers(), self.std, self.n, rng)


@SOURCES.register("grid25")
@dataclass(frozen=True)
class Grid25(ToySource):
    """PacGAN's grid: 25 Gaussians at {-4,-2,0,2,4}^2, std 0.05."""

    source: Literal["grid25"] = "grid25"
    n: int = bounded(12500, gt=0)
    std: float = bounded(0.05, gt=0)

    def centers(self) -> np.ndarray:
        return np.array([[float(i), float(j)] for i in range(-4, 5, 2) for j in range(-4, 5, 2)])

    def sample(self, rng):
        return _mixture(self.centers(), self.std, self.n, rng)


@SOURCES.register("swissroll")
@dataclass(frozen=True)
class SwissRoll(ToySource):
    """WGAN-GP's gan_toy.py swiss roll: make_swiss_roll(n, noise=0.25), columns (0, 2), / 7.5."""

    source: Literal["swissroll"] = "swissroll"
    n: int = bounded(12000, gt=0)
    noise: float = bounded(0.25, ge=0)

    def sample(self, rng):
        from sklearn.datasets import make_swiss_roll

        # sklearn wants a RandomState; derive its seed from ours so `seed` alone decides the data
        x, _ = make_swiss_roll(self.n, noise=self.noise, random_state=int(rng.integers(2**31)))
        return x[:, [0, 2]] / 7.5, None


@SOURCES.register("moons")
@dataclass(frozen=True)
class Moons(ToySource):
    """scikit-learn's two interleaving half circles (labels dropped: toys are unlabelled)."""

    source: Literal["moons"] = "moons"
    n: int = bounded(12000, gt=0)
    noise: float = bounded(0.05, ge=0)

    def sample(self, rng):
        from sklearn.datasets import make_moons

        x, _ = make_moons(self.n, noise=self.noise, random_state=int(rng.integers(2**31)))
        return x, None


class FileSource(Source):
    """A source read from files under the repository; `paths()` lists them, as configured."""

    expected: str = "a data file"  # what the file should be, for error messages

    def paths(self) -> tuple[str, ...]:
        raise NotImplementedError

    def check(self, repo_root: Path) -> None:
        for p in self.paths():
            full = Path(repo_root) / p
            if not full.exists():
                raise FileNotFoundError(f"{full}: file not found; expected {self.expected}")


@SOURCES.register("digits")
@dataclass(frozen=True)
class Digits(FileSource):
    """scikit-learn's 8x8 digits: a CSV (gzipped or not) of 64 pixels 0..16 then the label 0..9.

    `binarize: t` makes each pixel x >= t (values 0/1, levels 2): binary digits, the setting of NADE
    and of the binarized-MNIST literature (Larochelle & Murray 2011, §5), as a thresholded image."""

    source: Literal["digits"] = "digits"
    path: str = DIGITS_PATH
    binarize: int | None = bounded(None, ge=1, le=16)  # threshold t in 1..16 (0 or 17 would leave one value)

    expected = ("sklearn's digits CSV (run `gm data init`) or point `path` of this dataset in "
                "params.yaml at a copy")
    LEVELS = 17
    CLASSES = 10
    COLUMNS = 65

    def paths(self):
        return (self.path,)

    def load(self, repo_root, seed):
        self.check(repo_root)
        full = Path(repo_root) / self.path
        table = parse_csv(read_bytes(full, self.expected), self.COLUMNS, full,
                          "64 pixel values 0..16 then the label 0..9")
        x, y = table[:, :64], table[:, 64]
        check_levels(x, self.LEVELS, full)
        if y.size and (y.min() < 0 or y.max() >= self.CLASSES or not _integral(y)):
            raise ValueError(f"{full}: labels (last column) must be integers in 0..{self.CLASSES - 1}")
        x = x.reshape(-1, 1, 8, 8).astype(np.float32)
        if self.binarize is None:
            return x, y.astype(np.int64), _info("image", (1, 8, 8), self.LEVELS, self.CLASSES, [self.path])
        # Binary: the data are the file's pixels thresholded, so the source hash covers the threshold too.
        return ((x >= self.binarize).astype(np.float32), y.astype(np.int64),
                _info("image", (1, 8, 8), 2, self.CLASSES, [self.path], generated_from_files=True))


@SOURCES.register("stacked_digits")
@dataclass(frozen=True)
class StackedDigits(Digits):
    """Three digits as the three channels of one image: 1,000 modes, label 100·d1 + 10·d2 + d3, the
    digits' 17 levels, upsampled by pixel repetition to `size` (gm.data.stacked). The digits are
    split first and each split's `n`-share of stacks is drawn from its own digits only."""

    source: Literal["stacked_digits"] = "stacked_digits"
    n: int = bounded(60000, gt=0)
    size: int = 8

    def validate(self):
        if self.binarize is not None:  # inherited from digits, whose 17 levels the stacks keep
            raise ConfigError(f"binarize: only the digits source binarizes; stacked_digits keeps the digits' "
                              f"{self.LEVELS} levels, got binarize: {self.binarize}")
        if self.size not in stacked.SIZES:
            raise ConfigError(f"size: expected one of {', '.join(map(str, stacked.SIZES))}, got {self.size!r}")

    def load(self, repo_root, seed):
        x, y, _ = super().load(repo_root, seed)  # the digit images: the material split by write_splits
        return x, y, _info("image", (3, self.size, self.size), stacked.LEVELS, stacked.MODES, [self.path],
                           per_split=stacked.StackBuilder(self.n, self.size, seed), generated_from_files=True,
                           channel_classes=stacked.DIGIT_CLASSES)  # a digit per channel: the featurizer reads each


@SOURCES.register("shapes32")
@dataclass(frozen=True)
class Shapes32(Source):
    """32x32 RGB images of one shape (the label: square, circle, triangle, cross) drawn by code from a
    grid of known factors (gm.data.shapes), 256 levels; the factor grid goes into meta.json."""

    source: Literal["shapes32"] = "shapes32"
    n: int = bounded(20000, gt=0)

    def load(self, repo_root, seed):
        x, y, _ = shapes.generate(self.n, np.random.default_rng(seed))
        return x, y, _info("image", (3, shapes.SIZE, shapes.SIZE), shapes.LEVELS, len(shapes.KINDS),
                           class_names=list(shapes.KINDS), factors=shapes.FACTORS)


def _audio_samples(sample_rate: int, duration: float) -> int:
    """T = sample_rate · duration; a ConfigError naming `duration` when it is not a whole number."""
    try:
        return audio.clip_samples(sample_rate, duration)
    except ValueError as e:
        raise ConfigError(f"duration: {e}") from None


class AudioClips:
    """Clips of `sample_rate` · `duration` samples (both fields of the source): T, checked whole."""

    @property
    def samples(self) -> int:
        return _audio_samples(self.sample_rate, self.duration)

    def validate(self):
        _audio_samples(self.sample_rate, self.duration)  # a ConfigError naming duration


@SOURCES.register("notes")
@dataclass(frozen=True)
class Notes(AudioClips, Source):
    """Audio clips of one synthesised note each (gm.data.audio: flute with vibrato, Karplus-Strong string,
    odd-harmonic clarinet, Risset bell, brass brightening with loudness; the label is the timbre), pitch from
    C major over C3..C5, ADSR envelope, random peak and onset, a little noise; μ-law levels (1, T)."""

    source: Literal["notes"] = "notes"
    n: int = bounded(4000, gt=0)
    sample_rate: int = bounded(audio.DEFAULT_SAMPLE_RATE, ge=audio.MIN_SAMPLE_RATE, le=audio.MAX_SAMPLE_RATE)
    duration: float = bounded(0.25, gt=0, le=4.0)  # seconds: 0.25 s at 8 kHz is T = 2000
    noise: float = bounded(audio.NOISE_STD, ge=0, le=0.1)  # std of the white noise, of full scale

    def load(self, repo_root, seed):
        x, y, _ = audio.generate_notes(self.n, self.sample_rate, self.duration, np.random.default_rng(seed),
                                       self.noise)
        return x, y, _info("audio", (1, self.samples), audio.MU_LAW_LEVELS, len(audio.TIMBRES),
                           class_names=list(audio.TIMBRES), sample_rate=self.sample_rate)


def parse_csv(data: bytes, columns: int, path, expected: str) -> np.ndarray:
    """A numeric CSV with exactly `columns` columns per row -> float64 (rows, columns)."""
    try:
        lines = [ln for ln in data.decode("ascii").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV; expected {columns} comma-separated columns "
                         f"per row ({expected})") from None
    if not lines:
        raise ValueError(f"{path}: no rows; expected {columns} comma-separated columns per row ({expected})")
    for i, line in enumerate(lines, 1):
        got = line.count(",") + 1
        if got != columns:
            raise ValueError(f"{path}: row {i} has {got} columns; expected {columns} ({expected})")
    try:
        return np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: unreadable CSV value ({str(e).splitlines()[0]}); expected numbers "
                         f"({expected})") from None


def _image_shape(per_row: tuple[int, ...], path) -> tuple[int, ...]:
    """Per-sample array shape -> (C, H, W): (H, W) gets a channel axis."""
    if len(per_row) == 2:
        return (1, *per_row)
    if len(per_row) == 3:
        return per_row
    raise ValueError(f"{path}: images have per-sample shape {per_row}; expected (H, W) or (C, H, W)")


@SOURCES.register("idx")
@dataclass(frozen=True)
class Idx(FileSource):
    """MNIST-style IDX files: images (N, H, W) or (N, C, H, W) of integers 0..levels-1, optional labels (N,)."""

    images: str
    source: Literal["idx"] = "idx"
    labels: str | None = None
    levels: int = bounded(256, ge=2)

    expected = "an IDX file (MNIST format, gzipped or not); set `images`/`labels` of this dataset"

    def paths(self):
        return (self.images,) + ((self.labels,) if self.labels else ())

    def load(self, repo_root, seed):
        self.check(repo_root)
        full = Path(repo_root) / self.images
        raw = read_idx(full)
        shape = _image_shape(raw.shape[1:], full)
        check_levels(raw, self.levels, full)
        x = raw.reshape(len(raw), *shape).astype(np.float32)
        y = None
        if self.labels:
            lab_path = Path(repo_root) / self.labels
            y = as_class_indices(read_idx(lab_path), len(x), lab_path)
        return x, y, _info("image", shape, self.levels, _num_classes(y), self.paths())


@SOURCES.register("npz")
@dataclass(frozen=True)
class Npz(FileSource):
    """A NumPy .npz with samples under `x_key` (and labels under `y_key`, if present)."""

    path: str
    source: Literal["npz"] = "npz"
    x_key: str = "x"
    y_key: str | None = "y"  # the default may be absent (unlabelled); a name you set must exist
    levels: int | None = bounded(None, ge=2)  # None = continuous data

    expected = "a NumPy .npz archive; set `path` of this dataset"

    def paths(self):
        return (self.path,)

    def load(self, repo_root, seed):
        self.check(repo_root)
        full = Path(repo_root) / self.path
        try:
            with np.load(full, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"{full}: unreadable .npz ({type(e).__name__}); expected {self.expected}") from None
        keys = ", ".join(arrays) or "none"
        if self.x_key not in arrays:
            raise ValueError(f"{full}: no array {self.x_key!r} (x_key); found: {keys}")
        raw = arrays[self.x_key]
        if raw.ndim < 2 or not np.issubdtype(raw.dtype, np.number):
            raise ValueError(f"{full}: {self.x_key!r} has shape {raw.shape} dtype {raw.dtype}; "
                             "expected a numeric array (N, ...) with one sample per row")
        if self.levels is not None:
            shape, kind = _image_shape(raw.shape[1:], full), "image"
            check_levels(raw, self.levels, full)
        else:
            shape, kind = raw.shape[1:], ("image" if raw.ndim == 4 else "toy")
        y = None
        if self.y_key is not None and self.y_key in arrays:
            y = as_class_indices(arrays[self.y_key], len(raw), f"{full}[{self.y_key}]")
        elif self.y_key is not None and self.y_key != Npz.y_key:
            raise ValueError(f"{full}: no array {self.y_key!r} (y_key); found: {keys}")
        x = raw.reshape(len(raw), *shape).astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{full}: {self.x_key!r} has NaN or infinite values; expected finite numbers")
        return x, y, _info(kind, shape, self.levels, _num_classes(y), [self.path])


class FolderSource(FileSource):
    """A source read from one folder of files (`path`), one subfolder per class or all loose."""

    def paths(self):
        return (self.path,)

    def check(self, repo_root):
        full = Path(repo_root) / self.path
        if not full.is_dir():
            raise FileNotFoundError(f"{full}: folder not found; expected {self.expected}")


@SOURCES.register("image_folder")
@dataclass(frozen=True)
class ImageFolderSource(FolderSource):
    """PNG/JPEG images: one subfolder per class (labelled) or directly in `path` (unlabelled)."""

    path: str
    source: Literal["image_folder"] = "image_folder"
    grayscale: bool = True
    size: int | None = bounded(None, gt=0)  # resize to size x size; None = all images must match

    expected = "a folder of PNG/JPEG images, one subfolder per class; set `path` of this dataset"
    LEVELS = 256

    def load(self, repo_root, seed):
        self.check(repo_root)
        loaded = load_image_folder(Path(repo_root) / self.path, self.grayscale, self.size)
        files = [(Path(self.path) / f).as_posix() for f in loaded.files]
        extra = {"class_names": list(loaded.class_names)} if loaded.class_names else {}
        return (loaded.x.astype(np.float32), loaded.y,
                _info("image", loaded.x.shape[1:], self.LEVELS, _num_classes(loaded.y), files, **extra))


@SOURCES.register("wav_folder")
@dataclass(frozen=True)
class WavFolder(AudioClips, FolderSource):
    """WAV files (PCM 8/16/24/32-bit or float; stereo averaged to mono): one subfolder per class (labelled)
    or directly in `path` (unlabelled); every file at `sample_rate`, cropped or zero-padded to `duration`,
    μ-law encoded to 256 levels (1, T)."""

    path: str
    source: Literal["wav_folder"] = "wav_folder"
    sample_rate: int = bounded(audio.DEFAULT_SAMPLE_RATE, ge=1000, le=192000)  # every file's own; no resampling
    duration: float = bounded(0.25, gt=0, le=60.0)  # seconds kept of each file
    crop: Literal["start", "center"] = "start"  # which part of a longer file is kept

    expected = "a folder of WAV files, one subfolder per class; set `path` of this dataset"

    def load(self, repo_root, seed):
        self.check(repo_root)
        loaded = load_wav_folder(Path(repo_root) / self.path, self.sample_rate, self.samples, self.crop)
        files = [(Path(self.path) / f).as_posix() for f in loaded.files]
        extra = {"class_names": list(loaded.class_names)} if loaded.class_names else {}
        return (loaded.x.astype(np.float32), loaded.y,
                _info("audio", (1, self.samples), audio.MU_LAW_LEVELS, _num_classes(loaded.y), files,
                      sample_rate=self.sample_rate, **extra))
