"""One evaluation protocol for every family and baseline, on the same test split.

Every registered metric (gm.metrics; see gm.core.registry.Metric) that applies to the data's
kind and whose inputs the sampler can provide is computed, each input at most once:
- Toys: modes covered, % high-quality samples and reverse KL (PacGAN, for data with
  known mode centres), exact W1 to held-out data and its noise floor.
- Images: Fréchet distance, KID, precision/recall (k = 3) and density/coverage (k = 5)
  in the feature space of the dataset's featurizer (a versioned DVC output, identified
  by its hash), and class coverage/entropy under its classifier; on data drawn from a
  known factor grid (shapes32), the factors' coverage (gm.metrics.factors).
- Audio: the same feature-space and class metrics, in the space of the dataset's 1-D featurizer;
  samples are drawn as spectrograms beside test clips and written as WAV clips for the report.
- Samplers with a likelihood: test NLL (nats) and bits/dim in data space (dequantized; an
  importance-weighted bound with `iwae_k` samples where the model's bound has one).
- Autoencoders: reconstruction error; vector-quantised ones: codebook perplexity.

Anything that samples and (optionally) scores in data space can be evaluated: trained
models through `ModelSampler`, scikit-learn baselines (gm.baselines) as they are.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

import gm.metrics  # noqa: F401  (importing the package registers every metric)
from gm.core.config import bounded
from gm.core.files import CorruptFile, read_json
from gm.core.registry import METRICS, Metric
from gm.data.audio import DEFAULT_SAMPLE_RATE, mu_law_decode, spectrogram
from gm.data.importers import wav_bytes
from gm.data.io import read_meta, read_split
from gm.data.dataspec import DataSpec
from gm.models.base import Capabilities, GenerativeModel, LikelihoodOf, load_model
from gm.inference import data_log_prob, sample_data
from gm.featurizer import predict, predict_proba
from gm.featurizer import load_featurizer
from gm.featurizer import features


@dataclass(frozen=True)
class EvaluateParams:
    n_samples: int = bounded(2500, gt=0)  # PacGAN's protocol draws 2,500 samples
    seed: int = 0
    iwae_k: int = bounded(256, gt=0)  # importance samples for the bound of latent-variable families
    plot_samples: int = bounded(2500, gt=0)
    kid_subsets: int = bounded(100, gt=0)  # KID blocks (StyleGAN2-ADA's protocol)
    kid_subset_size: int = bounded(1000, gt=0)
    baseline_seeds: int = bounded(3, gt=0)  # the sklearn baselines are refitted with this many seeds


class Evaluable(Protocol):
    """What the protocol needs, in data space: samples, and what `capabilities` declares:
    `log_prob(x, seed)` with a likelihood, and (only then called) `reconstruct(x, seed)` with
    reconstruction, `codebook_perplexity(x, seed)` with a codebook."""

    spec: DataSpec
    capabilities: Capabilities

    def sample(self, n: int, seed: int) -> np.ndarray: ...

    def log_prob(self, x: np.ndarray, seed: int) -> np.ndarray: ...


@dataclass
class ModelSampler:
    """A trained gm model seen through the Evaluable protocol."""

    model: GenerativeModel
    likelihood = LikelihoodOf()

    @property
    def spec(self) -> DataSpec:
        return self.model.data

    @property
    def capabilities(self) -> Capabilities:
        return self.model.capabilities

    def sample(self, n: int, seed: int) -> np.ndarray:
        return sample_data(self.model, self.spec, n, seed=seed)

    def log_prob(self, x: np.ndarray, seed: int) -> np.ndarray:
        return data_log_prob(self.model, self.spec, x, seed=seed)

    def to_model(self, x: np.ndarray, seed: int) -> torch.Tensor:
        """Data-space x -> the model's space and device, dequantized with a seeded generator."""
        g = torch.Generator().manual_seed(seed)
        return self.spec.to_model(torch.from_numpy(np.asarray(x, dtype=np.float32)), generator=g).to(self.model.device)

    @torch.no_grad()
    def reconstruct(self, x: np.ndarray, seed: int) -> np.ndarray:
        """Data-space reconstructions of x (decoder mean at the code of x) by an autoencoding family."""
        return self.spec.to_data(self.model.reconstruct(self.to_model(x, seed))).cpu().numpy()

    @torch.no_grad()
    def codebook_perplexity(self, x: np.ndarray, seed: int) -> float:
        """The codebook perplexity of data-space x's codes, for a vector-quantised family."""
        return float(self.model.codebook_perplexity(self.to_model(x, seed)))

    @torch.no_grad()
    def level_perplexities(self, x: np.ndarray, seed: int) -> dict[str, float]:
        """Each codebook level's perplexity over data-space x's codes ({} for a single codebook)."""
        return {k: float(v) for k, v in self.model.level_perplexities(self.to_model(x, seed)).items()}


def with_eval_bound(model: GenerativeModel, k: int) -> GenerativeModel:
    """An importance-weighted bound is evaluated with the (larger) evaluation k; other models as they are."""
    return model.with_importance_samples(k) if model.capabilities.importance_weighted else model


def load_sampler(model_dir: Path, params: EvaluateParams) -> ModelSampler:
    """The exported model in `model_dir` as an Evaluable (gm.models.base.load_model: weights_only, and a
    damaged folder is a CorruptFile naming the file and the stage that exports it again)."""
    return ModelSampler(with_eval_bound(load_model(model_dir), params.iwae_k))


# ---------------------------------------------------------------------------- feature space


@dataclass
class FeatureSpace:
    """Where image metrics are computed: a trained featurizer, or the pixels themselves."""

    hash: str  # the featurizer's hash, or "pixels"
    net: object | None = None  # gm.featurizer.FeatureNet

    def features(self, x: np.ndarray) -> np.ndarray:
        if self.net is None:
            return x.reshape(len(x), -1).astype(np.float64)

        return features(self.net, x)

    def predict(self, x: np.ndarray) -> np.ndarray | None:
        if self.net is None:
            return None

        return predict(self.net, x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray | None:
        """Its classifier's class probabilities (N, K), or None in pixel space."""
        if self.net is None:
            return None

        return predict_proba(self.net, x)


PIXELS = "pixels"
FEATURIZED = ("image", "audio")  # the kinds whose labelled datasets get a trained featurizer (featurize stage)
AUDIO_CLIP_COUNT = 8  # clips of samples (and as many of test data) written for listening


def load_feature_space(directory: Path) -> FeatureSpace:
    """The featurize stage's output: a featurizer (labelled images) or pixel space (anything else)."""
    marker = Path(directory) / "space.json"
    rerun = f"run the featurize stage (dvc repro featurize@{Path(directory).name})"
    if not marker.is_file():
        raise FileNotFoundError(f"{marker}: missing; {rerun}")
    space = read_json(marker, f"{rerun} again")
    if not isinstance(space, dict):
        raise CorruptFile(marker, f"expected a JSON object, got {type(space).__name__}", f"{rerun} again")
    if space.get("space") == PIXELS:
        return FeatureSpace(hash=PIXELS)

    net, digest = load_featurizer(Path(directory) / "model")
    return FeatureSpace(hash=digest, net=net)


# ------------------------------------------------------------------------------- protocol


class Inputs:
    """What metrics consume, by name: whether each is available is known up front; its value is
    computed when a metric first asks, once. `seconds` holds the timings of the timed ones."""

    def __init__(self, providers: dict[str, tuple[bool, Callable[[], object]]], timed: dict[str, str]):
        self.providers = providers  # name -> (available, compute)
        self.timed = timed  # name -> the key its computing time is reported under
        self.values: dict[str, object] = {}
        self.seconds: dict[str, float] = {}

    def available(self, name: str) -> bool:
        if name not in self.providers:
            raise KeyError(f"unknown evaluation input {name!r}; expected one of: {', '.join(sorted(self.providers))}")
        return self.providers[name][0]

    def __getitem__(self, name: str):
        if name not in self.values:
            if not self.available(name):
                raise KeyError(f"evaluation input {name!r} is not available here")
            t0 = time.perf_counter()
            self.values[name] = self.providers[name][1]()
            if name in self.timed:
                self.seconds[self.timed[name]] = time.perf_counter() - t0
        return self.values[name]


def evaluation_inputs(ev: Evaluable, samples: np.ndarray, test_x: np.ndarray, modes: dict | None,
                      params: EvaluateParams, space: FeatureSpace, seed: int, factors: dict | None = None,
                      channel_classes: int | None = None) -> Inputs:
    """The inputs a metric can consume (its `consumes` names them), and when each is available:
    - samples, sample_count: the n_samples samples, when all are finite;
    - test: the test split (data space); seed: the evaluation seed; dim: dimensions per example;
    - num_classes: of labelled data; kid_subsets, kid_subset_size: EvaluateParams';
    - mode_centers, mode_std: of toys with known modes (the prepared data's meta);
    - factors: the factor grid of data drawn from one (the prepared data's meta: shapes32);
    - channel_classes: classes per channel of data whose label is one class per channel (stacked digits);
    - sample_features, test_features: in `space`, computed together as `features` (the pair,
      timed as feature_seconds), and predicted_labels of the samples under its classifier where
      it has one; with finite samples;
    - sample_class_probs, test_class_probs: its classifier's p(y|x) of the samples (when finite)
      and of the test split, where it has a classifier;
    - likelihood ("exact"/"bound"), test_log_likelihoods (timed as log_prob_seconds): samplers
      with a likelihood;
    - test_reconstructions: samplers that reconstruct; quantizer: the sampler, when it has a codebook.
    """
    caps, spec = ev.capabilities, ev.spec
    finite = bool(np.isfinite(samples).all())
    inputs = Inputs({
        "samples": (finite, lambda: samples),
        "sample_count": (finite, lambda: len(samples)),
        "test": (True, lambda: test_x),
        "seed": (True, lambda: seed),
        "dim": (True, lambda: spec.dim),
        "num_classes": (bool(spec.num_classes), lambda: spec.num_classes),
        "kid_subsets": (True, lambda: params.kid_subsets),
        "kid_subset_size": (True, lambda: params.kid_subset_size),
        "mode_centers": (modes is not None, lambda: modes["centers"]),
        "mode_std": (modes is not None, lambda: modes["std"]),
        "factors": (factors is not None, lambda: factors),
        "channel_classes": (bool(channel_classes), lambda: channel_classes),
        "features": (finite, lambda: (space.features(samples), space.features(test_x))),
        "sample_features": (finite, lambda: inputs["features"][0]),
        "test_features": (finite, lambda: inputs["features"][1]),
        "predicted_labels": (finite and space.net is not None, lambda: space.predict(samples)),
        "sample_class_probs": (finite and space.net is not None, lambda: space.predict_proba(samples)),
        "test_class_probs": (space.net is not None, lambda: space.predict_proba(test_x)),
        "likelihood": (caps.likelihood is not None, lambda: caps.likelihood),
        "test_log_likelihoods": (caps.likelihood is not None, lambda: ev.log_prob(test_x, seed)),
        "test_reconstructions": (caps.reconstruction, lambda: ev.reconstruct(test_x, seed)),
        "quantizer": (caps.codebook, lambda: ev),
    }, timed={"features": "feature_seconds", "test_log_likelihoods": "log_prob_seconds"})
    return inputs


def applicable(kind: str, inputs: Inputs) -> list[Metric]:
    """The registered metrics for data of `kind` whose every input is available, in registration order."""
    return [m for m in METRICS.values()
            if kind in m.kinds and all(inputs.available(name) for name in m.consumes.values())]


def compute_metrics(kind: str, inputs: Inputs) -> dict[str, float]:
    """Every applicable metric's values, merged, with the timings of the inputs they used."""
    out: dict[str, float] = {}
    for metric in applicable(kind, inputs):
        out.update(metric.fn(**{param: inputs[name] for param, name in metric.consumes.items()}))
    return {**out, **inputs.seconds}


def evaluate(ev: Evaluable, data_dir: Path, params: EvaluateParams, space: FeatureSpace | None = None,
             seed: int | None = None) -> tuple[dict, np.ndarray]:
    """(metrics, samples) of one sampler on `data_dir`'s test split."""
    seed = params.seed if seed is None else seed
    meta = read_meta(data_dir)
    test_x, _ = read_split(data_dir, "test")
    metrics: dict[str, float] = {}

    t0 = time.perf_counter()
    samples = ev.sample(params.n_samples, seed)
    metrics["sample_seconds"] = time.perf_counter() - t0
    metrics["samples_per_s"] = params.n_samples / max(metrics["sample_seconds"], 1e-9)
    metrics["finite_samples"] = float(np.isfinite(samples).all())

    inputs = evaluation_inputs(ev, samples, test_x, meta.get("modes"), params, space or FeatureSpace(PIXELS), seed,
                               factors=meta.get("factors"), channel_classes=meta.get("channel_classes"))
    metrics.update(compute_metrics(ev.spec.kind, inputs))
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    return metrics, samples


def aggregate(per_seed: dict[int, dict]) -> dict:
    """{metric: mean, metric_std: sample std over seeds} plus the per-seed values."""
    keys = sorted(set.intersection(*(set(m) for m in per_seed.values())))
    out: dict = {}
    for k in keys:
        values = [per_seed[s][k] for s in per_seed]
        out[k] = statistics.fmean(values)
        if len(values) > 1:
            out[f"{k}_std"] = statistics.stdev(values)
    out["seeds"] = len(per_seed)
    out["per_seed"] = {str(s): m for s, m in per_seed.items()}
    return out


# ----------------------------------------------------------------------------------- plots


def toy_window(test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plotting window of a 2-D toy: its test data's 0.5-99.5 percentiles, padded by 0.5."""
    return np.percentile(test, 0.5, axis=0) - 0.5, np.percentile(test, 99.5, axis=0) + 0.5


def density_grid(ev: Evaluable, lo, hi, n: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xs, ys, p) with p[i, j] the model's density at (xs[j], ys[i]) on an n x n grid over [lo, hi]."""
    xs = np.linspace(lo[0], hi[0], n, dtype=np.float32)
    ys = np.linspace(lo[1], hi[1], n, dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    lp = ev.log_prob(np.stack([gx.ravel(), gy.ravel()], 1), seed)
    return xs, ys, np.exp(np.asarray(lp, dtype=np.float64)).reshape(n, n)


def plot_density(path: Path, ev: Evaluable, test: np.ndarray, title: str, seed: int = 0) -> Path:
    """Heat maps of a 2-D model's density beside a histogram of the test data, on one window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = toy_window(test)
    xs, ys, p = density_grid(ev, lo, hi, seed=seed)
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    extent = (lo[0], hi[0], lo[1], hi[1])
    axes[0].hist2d(test[:, 0], test[:, 1], bins=100, range=[[lo[0], hi[0]], [lo[1], hi[1]]], cmap="magma")
    axes[0].set_title("test data", fontsize=9)
    axes[1].imshow(p, origin="lower", extent=extent, cmap="magma", aspect="auto")
    axes[1].set_title(f"model density (mass in window {p.sum() * cell:.3f})", fontsize=9)
    for ax in axes:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def show_image(ax, img: np.ndarray, levels: int | None) -> None:
    """One data-space image (C, H, W) on `ax`: one channel on gray_r over 0..levels-1; colour scaled to
    [0, 1] (imshow ignores vmin/vmax for RGB and would clip 0..255 to all-saturated)."""
    top = (levels or 2) - 1
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray_r", vmin=0, vmax=top)
    else:
        ax.imshow(np.clip(np.moveaxis(img, 0, -1) / top, 0.0, 1.0))


def sample_rate_of(meta: dict) -> int:
    """An audio dataset's sample rate (its meta.json), DEFAULT_SAMPLE_RATE where none is recorded."""
    return int(meta.get("sample_rate") or DEFAULT_SAMPLE_RATE)


def write_audio_clips(folder: Path, samples: np.ndarray, test: np.ndarray, sample_rate: int,
                      n: int = AUDIO_CLIP_COUNT) -> Path:
    """The first n samples and n test clips (μ-law levels (N, 1, T)) as 16-bit PCM WAV files
    sample-00.wav, ..., test-00.wav, ... in `folder` (emptied of earlier clips first); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.wav"):
        old.unlink()
    for prefix, clips in (("sample", samples), ("test", test)):
        clips = np.asarray(clips)[:n]
        for i, clip in enumerate(clips.reshape(len(clips), -1)):
            (folder / f"{prefix}-{i:02d}.wav").write_bytes(wav_bytes(mu_law_decode(clip), sample_rate))
    return folder


def plot_spectrograms(ax_rows, clips: np.ndarray, sample_rate: int, label: str) -> None:
    """Log-power spectrograms (gm.data.audio.spectrogram) of μ-law clips (N, 1, T) on a grid of axes,
    each over the 80 dB below its own peak; kHz marked on the first column."""
    cols = np.shape(ax_rows)[-1]
    for i, ax in enumerate(np.ravel(ax_rows)):
        ax.set_xticks([])
        nyquist = sample_rate / 2000
        ax.set_yticks([0, nyquist / 2, nyquist] if i % cols == 0 else [])
        ax.tick_params(labelsize=5)
        if i >= len(clips):
            ax.axis("off")
            continue
        wave = mu_law_decode(np.asarray(clips[i]).reshape(-1))
        freqs, _, db = spectrogram(wave, sample_rate)
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80, vmax=db.max(),
                  extent=(0, len(wave) / sample_rate, 0, freqs[-1] / 1000))  # seconds × kHz
        ax.set_title(f"{label} {i}", fontsize=6)
        if i % cols == 0:
            ax.set_ylabel("kHz", fontsize=6)


def plot_samples(path: Path, samples: np.ndarray, test: np.ndarray, meta: dict, title: str) -> Path:
    """A scatter over the mode centres (toys), a grid of images, or (audio) spectrograms of samples
    above those of test clips."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    if meta["kind"] == "audio":
        cols, rows = 4, 2  # rows of samples, then as many of test clips
        fig, axes = plt.subplots(2 * rows, cols, figsize=(cols * 1.8, 2 * rows * 1.3))
        plot_spectrograms(axes[:rows], samples[: rows * cols], sample_rate_of(meta), "sample")
        plot_spectrograms(axes[rows:], test[: rows * cols], sample_rate_of(meta), "test")
    elif meta["kind"] == "toy":
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(test[:, 0], test[:, 1], s=2, c="#bbbbbb", label="test data")
        ax.scatter(samples[:, 0], samples[:, 1], s=2, c="#d62728", label="samples")
        centers = (meta.get("modes") or {}).get("centers")
        if centers:
            c = np.asarray(centers)
            ax.scatter(c[:, 0], c[:, 1], marker="x", c="k", s=30, label="modes")
        lo, hi = toy_window(test)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7, markerscale=4)
    else:
        n = min(100, len(samples))
        side = int(math.ceil(math.sqrt(n)))
        imgs = samples[:n]
        fig, axes = plt.subplots(side, side, figsize=(side * 0.6, side * 0.6))
        for i, ax in enumerate(np.ravel(axes)):
            ax.axis("off")
            if i < n:
                show_image(ax, imgs[i], meta.get("levels"))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
