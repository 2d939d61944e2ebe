"""MADE on discrete data (Germain, Gregor, Murray & Larochelle 2015, "MADE: Masked Autoencoder
for Distribution Estimation").

One masked autoencoder pass gives every conditional p(x_{o_d} | x_{o_<d}) at once (§4): the
network is `gm.flows.MADE` (hidden unit k of layer l has a degree m^l(k); a weight is kept when
m^l(k) >= m^{l-1}(k'), Eq. 12, and an output of position d sees the units of degree < its rank,
Eq. 13). Its input is each position's level as a bin centre in [-1, 1); its outputs are a softmax
over the L levels of every position (the categorical output the paper's §4 reads for non-binary
data), and for binary data the sigmoid of Eq. 1 (p(x_d = 1 | x_<d) = x̂_d). Positions are read as
NADE reads them (`gm.models.nade.to_sequence`): raster order, the channels of a pixel consecutive.

Order- and connectivity-agnostic training (§3.3-3.4): a pool of K masks, each an ordering of the
inputs and hidden-unit degrees drawn uniformly from [min_k' m^{l-1}(k'), D-1] (§4); one mask is
drawn for each minibatch. The first mask is the natural ordering with `gm.flows.MADE`'s cyclic
degrees, so K = 1 is the plain MADE. At test time the K masks form an ensemble: p(x) =
(1/K) Σ_k p(x | mask k), the exact likelihood of a mixture of K MADEs sharing their weights
(the "mask sampling" ensembles of Table 6); samples draw k uniformly, then D passes under mask k.

Class-conditional p(x | y): the one-hot label is the MADE's context (first hidden layer and the
outputs, unmasked). On continuous vectors the family is the shared MADE-MoG fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gm.core.config import bounded
from gm.core.numerics import categorical
from gm.core.registry import register_family
from gm.data.dataspec import DataSpec
from gm.flows import MADE
from gm.flows.layers import MaskedLinear
from gm.models.nade import draw_levels, from_sequence, log_mean_exp, position_log_mass, to_sequence
from gm.models.pixelcnn import DiscreteAutoregressiveModel
from gm.nn.observation import bin_centres, levels_of

__all__ = ["MADEConfig", "DiscreteMADE", "MADEModel", "random_masks"]


@dataclass(frozen=True)
class MADEConfig:
    hidden: int = bounded(500, gt=0)  # units per hidden layer (2015, §6: 500 on binarized MNIST)
    depth: int = bounded(1, ge=1)  # hidden layers (2015, Table 6: one or two)
    activation: Literal["relu", "tanh"] = "relu"  # 2015, §6: ReLU
    masks: int = bounded(1, ge=1)  # K: connectivity/order-agnostic pool, and the test ensemble (§3.3-3.4)
    conditional: bool = False  # class-conditional p(x | y): the label as the MADE's context
    components: int = bounded(5, gt=0)  # vectors only: Gaussians per coordinate of the MADE fallback
    lr: float = bounded(1e-3, gt=0)  # Adam
    weight_decay: float = bounded(0.0, ge=0)
    ema: float = bounded(0.0, ge=0, lt=1)  # Polyak averaging of the weights for evaluation (PixelCNN++ §3; 0: off)


def random_masks(dim: int, hidden: list[int], n_out: int, generator: torch.Generator
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One draw of §3.3-3.4: an ordering (each input's rank, (D,)) and the masks (out, in) of
    every layer, hidden degrees uniform in [min of the previous layer's, D-1] (Eq. 12), outputs
    of strictly higher rank (Eq. 13)."""
    order = torch.randperm(dim, generator=generator)
    prev, masks = order + 1, []  # input degrees 1..D
    for width in hidden:
        lo = int(prev.min())
        deg = torch.randint(lo, max(lo, dim - 1) + 1, (width,), generator=generator)  # (H,) in [lo, D-1]
        masks.append(deg[:, None] >= prev[None, :])
        prev = deg
    out_deg = (order + 1).repeat(n_out)  # output p·D + d has the degree of input d, as gm.flows.MADE
    masks.append(out_deg[:, None] > prev[None, :])
    return order, masks


class DiscreteMADE(nn.Module):
    """A MADE with a softmax (binary: sigmoid) per position over a pool of K masks; `log_prob` and
    `sample` as the autoregressive bodies."""

    def __init__(self, data: DataSpec, hidden: int, depth: int, activation: str = "relu", n_masks: int = 1,
                 n_classes: int = 0):
        super().__init__()
        self.data, self.dim, self.n_classes = data, data.dim, n_classes
        self.binary = data.levels == 2
        self.n_out = 1 if self.binary else data.levels
        widths = [hidden] * depth
        self.made = MADE(self.dim, widths, self.n_out, context_dim=n_classes, activation=activation)
        self.layers = [m for m in self.made.modules() if isinstance(m, MaskedLinear)]  # hidden..., output
        first = [layer.mask.bool() for layer in self.layers]  # mask 0: the MADE's own (natural order)
        draws = [random_masks(self.dim, widths, self.n_out, torch.Generator().manual_seed(k))
                 for k in range(1, n_masks)]
        ranks = [torch.arange(self.dim)] + [order for order, _ in draws]
        # Rebuilt from the config on construction (seeded), so not saved.
        self.register_buffer("ranks", torch.stack(ranks), persistent=False)  # (K, D): rank of each position
        for i in range(len(self.layers)):
            pool = torch.stack([first[i]] + [masks[i] for _, masks in draws])  # (K, out, in)
            self.register_buffer(f"pool_{i}", pool, persistent=False)
        self.active = 0

    def use_mask(self, k: int) -> None:
        """Put mask k of the pool into the MADE's layers."""
        for i, layer in enumerate(self.layers):  # a new tensor, not in place: a graph may hold the old one
            layer.mask = getattr(self, f"pool_{i}")[k].to(layer.weight.dtype)
        self.active = k

    def inputs(self, seq: torch.Tensor) -> torch.Tensor:
        """Levels (B, D) -> the network's input, their bin centres in [-1, 1)."""
        return bin_centres(seq, self.data).to(self.made.output.weight.dtype)

    def logits(self, x_seq: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Model-space values (B, D) in the natural order -> logits (B, D, L) (binary: (B, D, 1))."""
        context = F.one_hot(labels.long(), self.n_classes).to(x_seq.dtype) if self.n_classes else None
        return torch.stack(self.made(x_seq, context), dim=-1)

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Model-space density log P(v) + D·log(scale), (B, *shape) -> (B,). Training: one mask drawn
        from the pool per minibatch (§3.4); otherwise the ensemble of all K masks."""
        seq = to_sequence(levels_of(x, self.data), self.data.shape)  # (B, D)
        inputs = self.inputs(seq)  # what the network reads: the levels, never the noise
        k_all = len(self.ranks)
        chosen = [int(torch.randint(k_all, ()))] if self.training and k_all > 1 else range(k_all)
        per_mask = []
        for k in chosen:
            self.use_mask(k)
            per_mask.append(position_log_mass(self.logits(inputs, labels), seq, self.binary).sum(1))
        return log_mean_exp(torch.stack(per_mask)) + self.dim * math.log(self.data.scale)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mask k uniform per draw, then D passes in its ordering (§4): bin centres (n, *shape)."""
        device = self.ranks.device
        k_all = len(self.ranks)
        which = categorical(torch.full((n, k_all), 1.0 / k_all, device=device), generator) if k_all > 1 \
            else torch.zeros(n, dtype=torch.long, device=device)
        seq = torch.zeros(n, self.dim, dtype=torch.long, device=device)
        for k in which.unique().tolist():
            rows = (which == k).nonzero().flatten()
            self.use_mask(k)
            lab = labels[rows] if labels is not None else None
            part = torch.zeros(len(rows), self.dim, dtype=torch.long, device=device)
            for pos in self.ranks[k].argsort().tolist():  # positions in increasing rank
                logits = self.logits(self.inputs(part), lab)[:, pos]  # (m, L)
                part[:, pos] = draw_levels(logits, self.binary, generator)
            seq[rows] = part
        return bin_centres(from_sequence(seq, shape), self.data)


@register_family("made")
class MADEModel(DiscreteAutoregressiveModel):
    """MADE (Germain et al. 2015) with a softmax over the levels; order/connectivity-agnostic with
    a mask ensemble when `masks` > 1."""

    config_cls = MADEConfig

    def image_body(self) -> nn.Module:
        c = self.config
        return DiscreteMADE(self.data, c.hidden, c.depth, c.activation, c.masks, self.n_classes)
