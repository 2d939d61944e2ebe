"""IAF (Kingma et al. 2016) as a density model: a stack of inverse autoregressive flow steps on
a standard normal base, exact likelihood.

Each step (§4, the LSTM-type update; `gm.flows.layers.IAFLayer`) maps z -> x in the sampling
direction in one parallel pass:

    [m, s] = MADE(z),  σ = sigmoid(s),  x = σ ⊙ z + (1 - σ) ⊙ m,   log|det ∂x/∂z| = Σ_d log σ_d

so sampling is fast, while scoring data needs the inverse, solved dimension by dimension:
D MADE passes per step (MAF's trade-off reversed). log p(x) = log N(z; 0, I) - Σ log|det|,
accumulated along the inverse. Orderings are reversed between steps (§4).

The gated update has |det| = Π σ <= 1: alone it can only contract N(0, I), never widen it to
data with a larger spread. With `actnorm` (default) every step is followed by an ActNorm
(Kingma & Dhariwal 2018, data-dependent init on the first training batch), a per-dimension
affine that supplies the scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from gm.core.config import bounded
from gm.data.dataspec import DataSpec
from gm.flows.dequantization import DequantizationConfig
from gm.flows.image import ActNorm
from gm.flows.layers import Flow, FlowSequence, IAFLayer, alternating_orders
from gm.models._flow import FlowDensityModel
from gm.nn.mlp import Activation
from gm.core.registry import register_family

__all__ = ["IAF", "IAFConfig"]


@dataclass(frozen=True)
class IAFConfig(DequantizationConfig):
    n_layers: int = bounded(4, gt=0)  # IAF steps, orderings reversed in turn
    hidden: int = bounded(64, gt=0)  # units per MADE hidden layer
    depth: int = bounded(2, gt=0)  # hidden layers per MADE (Kingma 2016 use two-layer MADEs)
    activation: Activation = "relu"
    gate_bias: float = 2.0  # initial s, so σ = sigmoid(2) ≈ 0.88: near the identity (§4 advises +1 or +2)
    actnorm: bool = True  # an ActNorm after each step: the gated update alone cannot expand volume
    lr: float = bounded(1e-3, gt=0)  # Adam


@register_family("iaf")
class IAF(FlowDensityModel):
    """An IAF from z ~ N(0, I) to data: sampling in one pass per step, log p(x) in D passes per step."""

    config_cls = IAFConfig

    def __init__(self, config: IAFConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        d = data.dim
        hidden = (c.hidden,) * c.depth
        layers: list[Flow] = []
        for order in alternating_orders(d, c.n_layers):  # sampling order: z -> step 0 -> ... -> x
            layers.append(IAFLayer(d, hidden, order, activation=c.activation, gate_bias=c.gate_bias))
            if c.actnorm:
                layers.append(ActNorm(d))
        self.flow = FlowSequence(layers)
