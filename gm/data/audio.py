"""Audio in gm: μ-law companding (van den Oord et al. 2016, "WaveNet", §2.2) and the shape of audio data.

Audio data is kind "audio", shape (1, T): one channel of T samples. It is stored, like images, as
discrete levels in data space: the waveform in [-1, 1] companded by μ-law and quantized to
`MU_LAW_LEVELS` = 256 levels, so every likelihood family reads it as a discrete sequence and its
bits/dim are bits per sample. Listening goes back through `mu_law_decode`.

    f(x) = sign(x) · ln(1 + μ|x|) / ln(1 + μ),   μ = 255                    (WaveNet, Eq. 2)
"""

from __future__ import annotations

import math

import numpy as np
import torch

MU = 255
MU_LAW_LEVELS = MU + 1


def mu_law_compand(x):
    """f(x) on a waveform in [-1, 1] (array or tensor); the result is in [-1, 1]."""
    if isinstance(x, torch.Tensor):
        x = x.clamp(-1.0, 1.0)
        return torch.sign(x) * torch.log1p(MU * x.abs()) / math.log1p(MU)
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    return np.sign(x) * np.log1p(MU * np.abs(x)) / math.log1p(MU)


def mu_law_expand(y):
    """f⁻¹(y) = sign(y) · ((1 + μ)^|y| − 1) / μ, the inverse of `mu_law_compand`."""
    if isinstance(y, torch.Tensor):
        y = y.clamp(-1.0, 1.0)
        return torch.sign(y) * torch.expm1(y.abs() * math.log1p(MU)) / MU
    y = np.clip(np.asarray(y, dtype=np.float64), -1.0, 1.0)
    return np.sign(y) * np.expm1(np.abs(y) * math.log1p(MU)) / MU


def mu_law_encode(x):
    """Waveform in [-1, 1] -> levels 0..255 (int64): companded, then rounded onto 256 even steps."""
    y = mu_law_compand(x)
    if isinstance(y, torch.Tensor):
        return torch.round((y + 1) / 2 * MU).long()
    return np.round((y + 1) / 2 * MU).astype(np.int64)


def mu_law_decode(levels):
    """Levels 0..255 -> waveform in [-1, 1]: each level's companded value 2v/μ − 1, expanded."""
    if isinstance(levels, torch.Tensor):
        return mu_law_expand(levels.double() * 2 / MU - 1).float()
    return mu_law_expand(np.asarray(levels, dtype=np.float64) * 2 / MU - 1).astype(np.float32)
