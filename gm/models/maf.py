"""MAF (Papamakarios et al. 2017): a stack of masked autoregressive flow steps, exact likelihood.

Each step (§3, `gm.flows.layers.MAFLayer`) is x_d = u_d·exp(α_d) + μ_d with (μ_d, α_d) from a
MADE of x_{<d}, so the density direction u = (x - μ(x))·exp(-α(x)) is one parallel pass and

    log p(x) = log N(u; 0, I) + Σ_steps Σ_d -α_d          (log|det ∂u/∂x| = -Σ_d α_d)

while sampling takes D sequential MADE passes per step (the price MAF pays for one-pass
densities; IAF is the mirror image). The ordering is reversed between steps, as in the
paper's experiments. Optionally a batch-norm bijection sits between steps, as the paper's
MAFs have it (after Dinh et al. 2017): density direction u = (x - m)/sqrt(v + ε)·exp(γ) + β
with batch statistics while training and running averages otherwise; off by default, so a
row's density never depends on its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gm.core.config import bounded
from gm.data.dataspec import DataSpec
from gm.flows.dequantization import DequantizationConfig
from gm.flows.layers import Flow, FlowSequence, MAFLayer, alternating_orders
from gm.models._flow import FlowDensityModel
from gm.nn.mlp import Activation
from gm.core.registry import register_family

__all__ = ["MAF", "MAFConfig", "BatchNormFlow"]


@dataclass(frozen=True)
class MAFConfig(DequantizationConfig):
    n_layers: int = bounded(5, gt=0)  # MADE steps (the paper's "MAF 5"; also MAF 10)
    hidden: int = bounded(100, gt=0)  # units per MADE hidden layer (the paper's UCI models: 100)
    depth: int = bounded(2, gt=0)  # hidden layers per MADE (the paper: 1 or 2)
    activation: Activation = "relu"
    log_scale_bound: float = bounded(3.0, gt=0)  # α = b·tanh(α̂/b): each step scales by at most exp(±b)
    batch_norm: bool = False  # the paper's batch norm between steps; off keeps each row's density batch-free
    lr: float = bounded(1e-3, gt=0)  # Adam (the paper's optimiser); 1e-3 suits the short runs here


class BatchNormFlow(Flow):
    """Batch normalisation as a bijection (Dinh et al. 2017, §3.7; used between MADEs by
    Papamakarios et al. 2017). Density direction (`inverse`): u = (x - m)/sqrt(v + ε)·exp(γ) + β,
    log|det ∂u/∂x| = Σ_d (γ_d - ½ log(v_d + ε)); (m, v) are the batch's mean and variance in
    training mode (the running averages are updated then) and the running averages otherwise.
    Sampling (`forward`) always uses the running averages: it has no data batch.
    """

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(dim))  # (D,)
        self.beta = nn.Parameter(torch.zeros(dim))  # (D,)
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return self.running_mean, self.running_var
        flat = x.reshape(-1, x.shape[-1])  # (N, D)
        mean, var = flat.mean(0), flat.var(0, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var, self.momentum)
        return mean, var

    def forward(self, u, context=None, params=None):
        self._refuse_context(context)
        mean, var = self.running_mean, self.running_var
        log_std = 0.5 * torch.log(var + self.eps)  # (D,)
        x = (u - self.beta) * torch.exp(log_std - self.log_gamma) + mean
        return x, (log_std - self.log_gamma).sum().expand(u.shape[:-1])

    def inverse(self, x, context=None, params=None):
        self._refuse_context(context)
        mean, var = self._stats(x)
        log_std = 0.5 * torch.log(var + self.eps)  # (D,)
        u = (x - mean) * torch.exp(self.log_gamma - log_std) + self.beta
        return u, (self.log_gamma - log_std).sum().expand(x.shape[:-1])


@register_family("maf")
class MAF(FlowDensityModel):
    """A MAF from data x to u ~ N(0, I): density in one pass, sampling in D passes per step."""

    config_cls = MAFConfig

    def __init__(self, config: MAFConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        d = data.dim
        hidden = (c.hidden,) * c.depth
        layers: list[Flow] = []
        for i, order in enumerate(alternating_orders(d, c.n_layers)):  # sampling order: u -> step 0 -> ... -> x
            if i and c.batch_norm:
                layers.append(BatchNormFlow(d))
            layers.append(MAFLayer(d, hidden, order, activation=c.activation,
                                   log_scale_bound=c.log_scale_bound))
        self.flow = FlowSequence(layers)
