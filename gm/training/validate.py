"""The cheap validation score that selects checkpoints and drives Tune (lower is better).

One definition per kind of family and data, used by training, tuning and evaluation:
- a family with a likelihood: bits/dim on the validation split (data space, dequantized);
- otherwise, toys: exact W1 between generated samples and validation data;
- otherwise, images: Fréchet distance in pixel space to validation data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gm.data.spec import DataSpec
from gm.models.base import GenerativeModel


def validation_metric(model: GenerativeModel, spec: DataSpec) -> str:
    if model.likelihood is not None:
        return "val_bpd"
    return "val_w1" if spec.kind == "toy" else "val_fd_pixel"


@torch.no_grad()
def data_log_prob(model: GenerativeModel, spec: DataSpec, x: np.ndarray, seed: int = 0,
                  batch_size: int = 512) -> np.ndarray:
    """Per-row log density in data space (nats): model-space log_prob plus the rescaling Jacobian.

    Discrete data is dequantized with seeded uniform noise, so the result estimates a
    lower bound on the discrete log-probability (the usual convention for bits/dim).
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(x), batch_size):
        xb = spec.to_model(torch.from_numpy(np.asarray(x[i:i + batch_size], dtype=np.float32)), generator=g)
        out.append(model.log_prob(xb.to(model.device)).double().cpu() + spec.log_det_to_model)
    return torch.cat(out).numpy()


@torch.no_grad()
def sample_data(model: GenerativeModel, spec: DataSpec, n: int, seed: int = 0,
                condition: torch.Tensor | None = None, batch_size: int = 4096) -> np.ndarray:
    """n samples in data space, shape (n, *spec.shape), deterministic given the seed.

    A conditional family with no `condition` samples every class in turn (class-balanced),
    which is what validation and evaluation compare against.
    """
    g = torch.Generator(device=model.device).manual_seed(seed)
    if condition is None and getattr(model.config, "conditional", False):
        condition = torch.arange(n, device=model.device) % spec.num_classes
    out = []
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        cond = condition[i:i + m] if condition is not None else None
        out.append(spec.to_data(model.sample(m, generator=g, condition=cond)).cpu())
    return torch.cat(out).numpy().astype(np.float32)


def validation_scores(model: GenerativeModel, spec: DataSpec, val_x: np.ndarray, n: int, seed: int = 0) -> dict:
    """{"val_score": float, <metric name>: float}; inf when the model produces non-finite output."""
    from gm.metrics.images import fd
    from gm.metrics.toy import w1

    name = validation_metric(model, spec)
    if name == "val_bpd":
        lp = data_log_prob(model, spec, val_x, seed=seed)
        score = float(-lp.mean() / (spec.dim * math.log(2)))
    else:
        samples = sample_data(model, spec, n, seed=seed)
        if not np.isfinite(samples).all():
            score = math.inf
        else:
            ref = val_x[np.random.default_rng(seed).permutation(len(val_x))[:n]]
            a, b = samples.reshape(len(samples), -1), ref.reshape(len(ref), -1)
            score = float(w1(a, b)["w1"] if name == "val_w1" else fd(a, b)["fd"])
    if not math.isfinite(score):
        score = math.inf
    out = {"val_score": score, name: score}
    if hasattr(model, "recon_and_kl"):  # a VAE-like family: where it sits on the rate-distortion plane
        out.update(rate_distortion(model, spec, val_x, seed))
    return out


@torch.no_grad()
def rate_distortion(model: GenerativeModel, spec: DataSpec, x: np.ndarray, seed: int = 0,
                    batch_size: int = 512) -> dict[str, float]:
    """Mean rate KL(q(z|x) ‖ p(z)) and distortion -E_q log p(x|z) per example, in nats, data space.

    Their sum is the negative ELBO; β trades one for the other (Alemi et al. 2018), which is
    what a β sweep's rate-distortion plot shows. Discrete data is dequantized as in
    `data_log_prob`, so the distortion is in the same units as the bits/dim.
    """
    g = torch.Generator().manual_seed(seed)
    recon_sum, kl_sum = 0.0, 0.0
    for i in range(0, len(x), batch_size):
        xb = spec.to_model(torch.from_numpy(np.asarray(x[i:i + batch_size], dtype=np.float32)), generator=g)
        recon, kl = model.recon_and_kl(xb.to(model.device), generator=torch.Generator(model.device).manual_seed(seed))
        recon_sum += float((recon - spec.log_det_to_model).sum())
        kl_sum += float(kl.sum())
    return {"val_rate": kl_sum / len(x), "val_distortion": recon_sum / len(x)}
