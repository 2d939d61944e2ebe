"""One evaluation protocol for every family, on the same test split.

- Toys: modes covered, % high-quality samples and reverse KL (PacGAN, for data with
  known mode centres), exact W1 to held-out data and its noise floor.
- Images: pixel-space Fréchet distance and KID to the test split, class coverage and
  entropy under a classifier fitted on the training split.
- Families with a likelihood: test NLL (nats) and bits/dim in data space
  (dequantized; an IWAE bound with `iwae_k` samples for latent-variable families).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gm.config import spec
from gm.data.io import read_meta, read_split
from gm.models.base import GenerativeModel, load_model
from gm.training.validate import data_log_prob, sample_data


@dataclass(frozen=True)
class EvaluateParams:
    n_samples: int = spec(2500, gt=0)  # PacGAN's protocol draws 2,500 samples
    seed: int = 0
    iwae_k: int = spec(256, gt=0)  # importance samples for the bound of latent-variable families
    plot_samples: int = spec(2500, gt=0)


def with_eval_bound(model: GenerativeModel, k: int) -> GenerativeModel:
    """Latent-variable families evaluate their IWAE bound with the (larger) evaluation k."""
    if model.likelihood == "bound" and "iwae_k" in {f.name for f in dataclasses.fields(model.config)}:
        state = model.state_dict()
        model = type(model)(dataclasses.replace(model.config, iwae_k=k), model.data)
        model.load_state_dict(state)
        model.eval()
    return model


def evaluate(model_dir: Path, data_dir: Path, params: EvaluateParams) -> tuple[dict, dict]:
    """(metrics, arrays for plots) of the model saved in `model_dir` on `data_dir`'s test split."""
    model = with_eval_bound(load_model(model_dir), params.iwae_k)
    meta = read_meta(data_dir)
    spec_ = model.data
    test_x, _ = read_split(data_dir, "test")
    metrics: dict[str, float] = {}

    t0 = time.perf_counter()
    samples = sample_data(model, spec_, params.n_samples, seed=params.seed)
    metrics["sample_seconds"] = time.perf_counter() - t0
    metrics["samples_per_s"] = params.n_samples / max(metrics["sample_seconds"], 1e-9)
    finite = bool(np.isfinite(samples).all())
    metrics["finite_samples"] = float(finite)

    if finite and spec_.kind == "toy":
        from gm.metrics.toy import toy_report

        metrics.update(toy_report(samples, test_x, meta.get("modes"), seed=params.seed))
    elif finite:
        from gm.metrics.images import pixel_scores

        train_x, train_y = read_split(data_dir, "train")
        metrics.update(pixel_scores(samples, train_x, train_y, test_x, seed=params.seed))

    if model.likelihood is not None:
        from gm.metrics.likelihood import bits_per_dim

        t0 = time.perf_counter()
        lp = data_log_prob(model, spec_, test_x, seed=params.seed)
        metrics["log_prob_seconds"] = time.perf_counter() - t0
        metrics.update({f"test_{k}": v for k, v in bits_per_dim(-lp, spec_.dim).items()})
        metrics["test_bound"] = float(model.likelihood == "bound")
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    return metrics, {"samples": samples, "test": test_x, "meta": meta}


def plot_samples(path: Path, samples: np.ndarray, test: np.ndarray, meta: dict, title: str) -> Path:
    """A scatter over the mode centres (toys) or a grid of images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    if meta["kind"] == "toy":
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(test[:, 0], test[:, 1], s=2, c="#bbbbbb", label="test data")
        ax.scatter(samples[:, 0], samples[:, 1], s=2, c="#d62728", label="samples")
        centers = (meta.get("modes") or {}).get("centers")
        if centers:
            c = np.asarray(centers)
            ax.scatter(c[:, 0], c[:, 1], marker="x", c="k", s=30, label="modes")
        lo = np.percentile(test, 0.5, axis=0) - 0.5
        hi = np.percentile(test, 99.5, axis=0) + 0.5
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7, markerscale=4)
    else:
        n = min(100, len(samples))
        side = int(math.ceil(math.sqrt(n)))
        imgs = samples[:n].reshape(n, *samples.shape[1:])
        fig, axes = plt.subplots(side, side, figsize=(side * 0.6, side * 0.6))
        for i, ax in enumerate(np.ravel(axes)):
            ax.axis("off")
            if i < n:
                img = imgs[i]
                img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
                ax.imshow(img, cmap="gray_r", vmin=0, vmax=(meta.get("levels") or 2) - 1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
