"""Dequantization of discrete data for the flow families: uniform or variational.

Discrete data (`DataSpec.levels`) reaches a flow in model space, x = (v + u - shift)/scale, with v
the integer level and u ∈ [0, 1)^D the dequantization noise. With `dequantization: uniform` (the
default) `DataSpec.to_model` draws u ~ U[0, 1)^D and the flow's log p(x) is exact on the
dequantized data. With `variational` (Ho et al. 2019, Flow++ §3.1) u ~ q(u | v), a conditional
flow trained jointly with the model, and the flow's `log_prob` becomes a bound on the discrete
log-likelihood; of the model-space x it is given, only the level v = floor(x·scale + shift) counts
(the pipeline's uniform noise is discarded).

The bound. In data space P(v) = ∫_{[0,1)^D} p_data(v + u) du, and the change of variables to
model space gives p_data(v + u) = p(b + u/scale)·scale^-D, b = (v - shift)/scale the bin's lower
edge in model space. Importance sampling with q (Burda et al. 2015; Flow++ Eq. 12 for k = 1):

    log P(v) = log E_{u~q(u|v)} [p(b + u/scale) / q(u|v)] - D·log(scale)
             >= E [L_k] - D·log(scale),   L_k = log (1/k) Σ_i p(b + u_i/scale) / q(u_i|v),  u_i ~ q(u|v)

The flow's `log_prob` returns L_k (k = `iwae_k`), in model-space units like every family's
log_prob, and the evaluation adds `DataSpec.log_det_to_model` = -D·log(scale): a stochastic lower
bound on log P(v) in data space, so bits/dim an upper bound. k = 1 is the ELBO (the training
loss is -L_1); E[L_k] is non-decreasing in k and tends to log P(v) + D·log(scale). Uniform
dequantization is the special case q = U[0, 1)^D, log q = 0.

q(u | v): ε ~ N(0, I_D), h = g(ε; v) through `dequant_layers` conditional affine autoregressive
steps, u = sigmoid(h) ∈ (0, 1)^D, so

    log q(u|v) = Σ_d log N(ε_d) - log|det ∂h/∂ε| - Σ_d log sigmoid'(h_d),   sigmoid' = σ(h)·σ(-h)

Each step is MAF's one-pass density direction h' = (h - μ(h, c))·exp(-α(h, c))
(`gm.flows.MAFLayer.inverse`), which read as a sampling map is an IAF step (Papamakarios et al.
2017, §3.3); unlike IAF's gated update it can widen as well as narrow. q only ever scores its own
draws, so MAF's sequential direction is never run. The context c(v), fed to every MADE, is the
centred levels (bin centres in model space) beside a net's features of them: a small conv net on
images (C, H, W), an MLP on vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gm.core.config import ConfigError, bounded
from gm.data.dataspec import DataSpec
from gm.flows.image import coupling_conv_net
from gm.flows.layers import maf_flows
from gm.nn.mlp import mlp
from gm.core.numerics import normal_log_prob, randn
from gm.nn.observation import bin_centres

__all__ = ["DequantizationConfig", "VariationalDequantizer", "make_dequantizer"]


@dataclass(frozen=True)
class DequantizationConfig:
    """Fields every flow family's config inherits (they come first in the config)."""

    # uniform: u ~ U[0,1)^D added by DataSpec.to_model, log_prob exact on the dequantized data;
    # variational: u ~ q(u | v), a conditional flow trained jointly (Ho et al. 2019, Flow++ §3.1),
    # log_prob an importance-weighted bound on the discrete log-likelihood (likelihood "bound")
    dequantization: Literal["uniform", "variational"] = "uniform"
    dequant_layers: int = bounded(2, gt=0)  # conditional affine autoregressive steps of q(u | v)
    dequant_hidden: int = bounded(64, gt=0)  # width of q's context net and of its MADEs' hidden layers
    iwae_k: int = bounded(1, gt=0)  # draws of u per row in log_prob (variational only; evaluation raises it)


class VariationalDequantizer(nn.Module):
    """q(u | v) on (0, 1)^D for levels v (B, D): sigmoid of N(0, I) through conditional affine
    autoregressive steps (see the module docstring)."""

    def __init__(self, config: DequantizationConfig, data: DataSpec):
        super().__init__()
        self.data = data
        d, h = data.dim, config.dequant_hidden
        if data.kind == "image" and len(data.shape) == 3:
            channels = data.shape[0]
            self.in_shape = tuple(data.shape)
            # Glow's conv net at depth 1 (3×3, zero-initialised 3×3): a feature per pixel of its 5×5
            # patch; its 1×1 hidden layers would cost several times the MADEs.
            self.features = coupling_conv_net(channels, channels, h, 1)  # (B, C, H, W) -> (B, C, H, W)
            feature_dim = d
        else:
            self.in_shape = (d,)
            self.features = mlp(d, h, h, 1)  # (B, D) -> (B, H)
            feature_dim = h
        # The MADEs' two hidden layers follow MAF's and IAF's (Kingma 2016: two-layer MADEs).
        self.steps = maf_flows(d, config.dequant_layers, (h, h), context_dim=d + feature_dim)

    def context(self, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Levels v (B, D) -> c(v) (B, D + F): the centred levels and the net's features of them."""
        centred = bin_centres(v, self.data).to(dtype)  # (B, D) in (-1, 1)
        features = self.features(centred.view(len(centred), *self.in_shape)).flatten(1)  # (B, F)
        return torch.cat([centred, features], -1)

    def transform(self, eps: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ε (..., B, D) -> u (..., B, D) in (0, 1) and log|det ∂u/∂ε| (..., B), given levels v (B, D);
        the context broadcasts over the leading draws."""
        h, log_det = self.steps.inverse(eps, self.context(v, eps.dtype))  # MAF's one-pass direction: IAF steps
        # In float32 sigmoid rounds to 1 beyond h ≈ 17: the clamp keeps u inside the open unit
        # cube (a move below float resolution; log q is computed from h, exactly).
        finfo = torch.finfo(h.dtype)
        u = torch.sigmoid(h).clamp(finfo.tiny, 1 - finfo.eps / 2)
        return u, log_det + (F.logsigmoid(h) + F.logsigmoid(-h)).sum(-1)

    def forward(self, v: torch.Tensor, k: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """k draws u ~ q(u | v) per row and log q(u | v): levels v (B, D), integers in the
        dtype of the draws -> (k, B, D), (k, B)."""
        eps = randn((k, *v.shape), generator, v.device).to(v.dtype)  # (k, B, D)
        u, log_det = self.transform(eps, v)
        return u, normal_log_prob(eps).sum(-1) - log_det


def make_dequantizer(config: DequantizationConfig, data: DataSpec) -> VariationalDequantizer | None:
    """q(u | v) for `dequantization: variational`, None for uniform; a ConfigError naming the
    field when the data is continuous."""
    if config.dequantization == "uniform":
        return None
    if not data.levels:
        raise ConfigError(f"dequantization: variational needs discrete data (levels), got continuous {data.kind} "
                          f"data of shape {tuple(data.shape)}; use dequantization: uniform")
    return VariationalDequantizer(config, data)
