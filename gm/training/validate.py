"""The cheap validation score that selects checkpoints and drives Tune (lower is better).

One definition per kind of family and data, used by training, tuning and evaluation:
- a family with a likelihood: bits/dim on the validation split (data space, dequantized);
- otherwise, toys: exact W1 between generated samples and validation data;
- otherwise, images: Fréchet distance in pixel space to validation data;
- otherwise, audio: Fréchet distance between the clips' mean log-power spectra (gm.data.audio.
  spectrum_features: 129 dB values per clip) of samples and validation data. Not FD on the raw
  samples: those are T = 2000+ dimensions (a slow, rank-deficient covariance from a few hundred
  clips), and a waveform's samples move with its phase and onset, so two clips of the same note
  are far apart sample by sample; the averaged spectrum keeps what a listener hears (pitch,
  timbre: the featurizer's classes) and is cheap and training-free, so it can rank checkpoints
  before any featurizer exists. Likelihood families on audio use bits/dim, i.e. bits per sample.
"""

from __future__ import annotations

import math

import numpy as np

from gm.data.audio import spectrum_features
from gm.data.dataspec import DataSpec
from gm.inference import data_log_prob, rate_distortion, sample_data
from gm.models.base import GenerativeModel
from gm.core.numerics import bits_per_dim
from gm.metrics.toy import w1
from gm.metrics.images import fd


VALIDATION_METRICS = ("val_bpd", "val_w1", "val_fd_pixel", "val_fd_spectrum")


def validation_metric(model: GenerativeModel, spec: DataSpec) -> str:
    if model.likelihood is not None:
        return "val_bpd"
    return {"toy": "val_w1", "audio": "val_fd_spectrum"}.get(spec.kind, "val_fd_pixel")


def reported_metric(metrics: dict) -> str:
    """The validation metric a run's reported metrics carry (what `validation_metric` named in the worker)."""
    for name in VALIDATION_METRICS:
        if name in metrics:
            return name
    raise KeyError(f"no validation metric ({', '.join(VALIDATION_METRICS)}) among the reported metrics")


def validation_scores(model: GenerativeModel, spec: DataSpec, val_x: np.ndarray, n: int, seed: int = 0) -> dict:
    """{"val_score": float, <metric name>: float}; inf when the model produces non-finite output."""
    name = validation_metric(model, spec)
    if name == "val_bpd":
        lp = data_log_prob(model, spec, val_x, seed=seed)
        score = float(bits_per_dim(-lp.mean(), spec.dim))
    else:
        samples = sample_data(model, spec, n, seed=seed)
        if not np.isfinite(samples).all():
            score = math.inf
        else:
            ref = val_x[np.random.default_rng(seed).permutation(len(val_x))[:n]]
            if name == "val_fd_spectrum":
                a, b = spectrum_features(samples), spectrum_features(ref)
            else:
                a, b = samples.reshape(len(samples), -1), ref.reshape(len(ref), -1)
            score = float(w1(a, b)["w1"] if name == "val_w1" else fd(a, b)["fd"])
    if not math.isfinite(score):
        score = math.inf
    out = {"val_score": score, name: score}
    if model.capabilities.rate_distortion:  # a VAE-like family: where it sits on the rate-distortion plane
        out.update(rate_distortion(model, spec, val_x, seed))
    return out


