"""A trained model seen from data space: seeded samples, log-densities and the rate/distortion split.

Models work in model space (see DataSpec); everything here maps to and from the user's data,
deterministically given a seed, in batches that bound memory.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from gm.data.dataspec import DataSpec
from gm.models.base import GenerativeModel


@torch.no_grad()
def data_log_prob(model: GenerativeModel, spec: DataSpec, x: np.ndarray, seed: int = 0,
                  batch_size: int = 512) -> np.ndarray:
    """Per-row log density in data space (nats): model-space log_prob plus the rescaling Jacobian.

    Change of variables: a model trained on rescaled data t(x) assigns density in model units;
    adding log |dt/dx| (DataSpec.log_det_to_model) expresses it per unit volume of the data.

    Discrete data is dequantized with seeded uniform noise, so the result estimates a
    lower bound on the discrete log-probability: E_u log p(x + u) <= log P(x) (Jensen), so bits/dim
    from it is an upper bound on the discrete model's (the convention of RealNVP, Glow and FFJORD,
    and the meaning of BENCHMARKS.md's "uniform 4.09" row: log2 17 for 17 levels).

    A bound's own draws (importance samples, a variational dequantizer's noise) come from torch's
    global generator, which torch seeds afresh in every process: it is seeded from `seed` here, and
    restored afterwards, so the same seed gives the same estimate in any process.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, len(x), batch_size):
            xb = spec.to_model(torch.from_numpy(np.asarray(x[i:i + batch_size], dtype=np.float32)), generator=g)
            out.append(model.log_prob(xb.to(model.device)).double().cpu() + spec.log_det_to_model)
    return torch.cat(out).numpy()


@torch.no_grad()
def sample_data(model: GenerativeModel, spec: DataSpec, n: int, seed: int = 0,
                condition: torch.Tensor | None = None, batch_size: int = 4096,
                truncation: float | None = None) -> np.ndarray:
    """n samples in data space, shape (n, *spec.shape), deterministic given the seed.

    A conditional family with no `condition` samples every class in turn (class-balanced),
    which is what validation and evaluation compare against.
    """
    extra = {}
    if truncation is not None:  # the truncation trick: StyleGAN's ψ in w space, BigGAN's threshold on z
        if "truncation" not in inspect.signature(model.sample).parameters:
            raise ValueError(f"truncation: {model.registry_name} has no truncation trick; drop 'truncation'")
        extra["truncation"] = float(truncation)
    g = torch.Generator(device=model.device).manual_seed(seed)
    if condition is None and model.capabilities.conditional:
        condition = torch.arange(n, device=model.device) % spec.num_classes
    out = []
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        cond = condition[i:i + m] if condition is not None else None
        out.append(spec.to_data(model.sample(m, generator=g, condition=cond, **extra)).cpu())
    return torch.cat(out).numpy().astype(np.float32)


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

