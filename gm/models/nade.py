"""NADE (Larochelle & Murray 2011, "The Neural Autoregressive Distribution Estimator"), with
order-agnostic training and ensembles over orderings (EoNADE: Uria, Murray & Larochelle 2014,
"A Deep and Tractable Density Estimator").

A fully visible belief network p(x) = Π_d p(x_{o_d} | x_{o_<d}) (2011, Eq. 1) whose
conditionals share one hidden layer (2011, Eqs. 5-6):

    h_d = σ(c + W[:, o_<d] x_{o_<d}),    p(x_{o_d} = 1 | x_{o_<d}) = σ(b_{o_d} + V_{o_d} · h_d).

The weight sharing is what makes it cheap (2011, §3, Eq. 7): the pre-activations obey the running
sum a_1 = c, a_{d+1} = a_d + W[:, o_d] x_{o_d}, so the whole likelihood costs O(D·H) instead of
the O(D²·H) of D separate networks. In one batch the running sum is an exclusive cumulative sum
over the positions; sampling runs it one position at a time (D steps of O(H·L)).

Multi-level pixels (L levels, e.g. the digits' 17). The standard categorical extension of the
binary NADE: x_d enters as its one-hot level, so W has H × D·L columns and the running sum adds
the column of the observed level (a table lookup: still O(D·H)); the output of position d is a
softmax over its L levels with weights V_d (L × H) and biases b_d (L,). Binary data (L = 2) keep
the paper's own parametrisation: x_d ∈ {0, 1} multiplies one column of W, and the output is the
sigmoid of Eq. 5 (the softmax over the logits (0, b_d + V_d · h_d)).

Order of the positions: an image (C, H, W) is read in raster order with the channels of a pixel
consecutive (PixelRNN's order, as `gm.models.pixelcnn.ChannelGrid`); audio (1, T) in time order.

Order-agnostic training (Uria et al. 2014, §3): each training example is scored under an ordering
o drawn uniformly from all D! permutations, an unbiased estimate of E_o[-log p(x | o)]; one NADE
then models every ordering. Since a missing binary input (x = 0 ⊙ m = 0) is indistinguishable from
an observed 0, the mask m enters too, by weights U (2014, §3: the input is x ⊙ m with m appended);
a one-hot input already tells "missing" (all zero) from any level. At test time (2014, §4) an
ensemble of K orderings o_1..o_K, p(x) = (1/K) Σ_k p(x | o_k), is the exact likelihood of a
mixture of K NADEs sharing their weights; samples draw k uniformly, then x from p(x | o_k). The
first ordering is always the raster order, the others are seeded permutations (fixed for a model).

Class-conditional p(x | y): the label is a variable before the first position, always observed:
a_1 = c + E one_hot(y).

On continuous vectors (the 2-D toys) the family is the shared MADE-MoG fallback
(`gm.models.pixelcnn.MADEMixture`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gm.core.config import ConfigError, bounded
from gm.core.numerics import categorical
from gm.core.registry import register_family
from gm.data.dataspec import DataSpec
from gm.models.pixelcnn import DiscreteAutoregressiveModel
from gm.nn.observation import bin_centres, levels_of
from gm.nn.precision import fp32

__all__ = ["NADEConfig", "NADE", "NADEModel", "to_sequence", "from_sequence",
           "position_log_mass", "draw_levels", "orderings"]


@dataclass(frozen=True)
class NADEConfig:
    hidden: int = bounded(500, gt=0)  # H, the hidden units (2011, §5: 500); vectors: the MADE fallback's width
    depth: int = bounded(1, ge=1)  # vectors only: hidden layers of the MADE fallback (NADE has one, Eq. 6)
    activation: Literal["sigmoid", "relu"] = "sigmoid"  # of h_d: σ in 2011, Eq. 6; ReLU in Uria et al. 2014
    order_agnostic: bool = False  # train over random orderings (Uria et al. 2014, §3)
    orderings: int = bounded(1, ge=1)  # K orderings of the test-time ensemble (EoNADE, 2014 §4); 1: raster only
    conditional: bool = False  # class-conditional p(x | y): the label enters the running sum's start
    components: int = bounded(5, gt=0)  # vectors only: Gaussians per coordinate of the MADE fallback
    lr: float = bounded(1e-3, gt=0)  # Adam
    weight_decay: float = bounded(0.0, ge=0)
    ema: float = bounded(0.0, ge=0, lt=1)  # Polyak averaging of the weights for evaluation (PixelCNN++ §3; 0: off)

    def validate(self):
        if self.orderings > 1 and not self.order_agnostic:
            raise ConfigError(f"orderings: an ensemble of {self.orderings} orderings needs order_agnostic: true "
                              "(a NADE trained in one ordering models that ordering only)")


# --------------------------------------------------------------------------- positions of discrete data


def to_sequence(v: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) -> (B, D) in the model's order: raster order with the channels of a pixel
    consecutive for (C, H, W) images (PixelRNN's order), time order for (1, T) audio."""
    return (v.movedim(1, -1) if len(shape) > 1 else v).flatten(1)


def from_sequence(s: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of `to_sequence`: (B, D) -> (B, *shape)."""
    if len(shape) == 1:
        return s
    return s.view(s.shape[0], *shape[1:], shape[0]).movedim(-1, 1)


def orderings(dim: int, k: int) -> torch.Tensor:
    """K orderings of D positions, (K, D): row t of ordering k is the position generated t-th.
    The first is the identity (raster order); the others are permutations seeded by their index,
    so a model rebuilt from its config has the same ones."""
    rows = [torch.arange(dim)] + [torch.randperm(dim, generator=torch.Generator().manual_seed(i))
                                  for i in range(1, k)]
    return torch.stack(rows)


def position_log_mass(logits: torch.Tensor, v: torch.Tensor, binary: bool) -> torch.Tensor:
    """log P(v_d | ...) per position: logits (B, D, 1) (binary: the logit of level 1) or (B, D, L),
    levels v (B, D) -> (B, D), in fp32 (an fp32 island under autocast)."""
    logits = fp32(logits)
    if binary:
        return F.logsigmoid((2 * v - 1).to(logits.dtype) * logits[..., 0])  # log σ(±logit), Eq. 5
    return F.log_softmax(logits, -1).gather(-1, v.unsqueeze(-1)).squeeze(-1)


def draw_levels(logits: torch.Tensor, binary: bool, generator: torch.Generator | None) -> torch.Tensor:
    """One level per row of logits (n, 1) (binary) or (n, L): (n,) int64, from `generator`."""
    logits = fp32(logits)
    if binary:
        p1 = torch.sigmoid(logits[..., 0])
        return categorical(torch.stack([1 - p1, p1], -1), generator)
    return categorical(F.softmax(logits, -1), generator)


def log_mean_exp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


# --------------------------------------------------------------------------- the NADE body


class NADE(nn.Module):
    """NADE on discrete data of any shape (see the module docstring): `log_prob(x, labels)` and
    `sample(n, shape, generator, labels)` in model space, as the autoregressive bodies."""

    def __init__(self, data: DataSpec, hidden: int, activation: str = "sigmoid", order_agnostic: bool = False,
                 n_orderings: int = 1, n_classes: int = 0):
        super().__init__()
        self.data, self.dim, self.hidden = data, data.dim, hidden
        self.binary = data.levels == 2
        self.order_agnostic, self.n_classes = order_agnostic, n_classes
        self.act = torch.sigmoid if activation == "sigmoid" else torch.relu
        d, width = self.dim, 1 if self.binary else data.levels  # one column per level; one for binary x_d
        # Init: a pre-activation sums D columns of W, so std 1/√D keeps it O(1); V reads H units.
        self.W = nn.Parameter(torch.randn(d, width, hidden) / math.sqrt(d))  # W[:, d] (one per level), Eq. 6
        self.c = nn.Parameter(torch.zeros(hidden))  # hidden bias, Eq. 6
        self.V = nn.Parameter(torch.randn(d, width, hidden) / math.sqrt(hidden))  # V_d, Eq. 5 (L rows if one-hot)
        self.b = nn.Parameter(torch.zeros(d, width))  # b_d, Eq. 5
        # The mask input of order-agnostic training (2014, §3), binary inputs only (see the docstring).
        self.U = nn.Parameter(torch.randn(d, hidden) / math.sqrt(d)) if order_agnostic and self.binary else None
        self.E = nn.Parameter(torch.randn(n_classes, hidden) / math.sqrt(d)) if n_classes else None
        self.register_buffer("orders", orderings(d, n_orderings), persistent=False)  # (K, D)

    # -- pieces of Eqs. 5-7 -------------------------------------------------------
    def start(self, n: int, labels: torch.Tensor | None) -> torch.Tensor:
        """a_1 = c (+ E one_hot(y)): (n, H)."""
        a = self.c.expand(n, -1)
        return a + self.E[labels] if self.E is not None else a

    def columns(self, pos: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The running sum's increment W[:, pos] x_pos (+ U[:, pos] for the mask), for positions pos
        and their levels v (same shape, e.g. (B, D) or (n,)) -> (..., H)."""
        if self.binary:
            inc = v.unsqueeze(-1).to(self.W.dtype) * self.W[pos, 0]  # x_d ∈ {0, 1} times column d
        else:
            inc = self.W[pos, v]  # the column of the one-hot level: W[:, d·L + v]
        return inc + self.U[pos] if self.U is not None else inc

    def logits(self, h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Output logits of positions pos given their hidden vectors h (n, H), pos (n,) -> (n, L)
        (binary: (n, 1), the logit of x = 1, Eq. 5)."""
        return torch.einsum("nh,nlh->nl", h, self.V[pos]) + self.b[pos]

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Levels (B, D) -> the inputs x_d of Eq. 6, (B, D, 1) for binary data, else one-hot (B, D, L)."""
        if self.binary:
            return seq.unsqueeze(-1).to(self.W.dtype)
        return F.one_hot(seq, self.data.levels).to(self.W.dtype)

    def sequence_logits(self, inputs: torch.Tensor, order: torch.Tensor,
                        labels: torch.Tensor | None = None) -> torch.Tensor:
        """The output logits of every position at once, by the running sum.

        inputs (B, D, L) from `encode` (or any real values there: a gradient probe), in the natural
        order; order (D,) or (B, D) (row t: the position generated t-th). Returns (B, D, L) (binary:
        (B, D, 1)) in the natural order. The pre-activations are the exclusive cumulative sum of the
        columns W[:, o_t] x_{o_t} (Eq. 7), O(B·D·H); the columns and the outputs cost O(B·D·L·H)."""
        b = inputs.shape[0]
        # Position-major (D, B, H) throughout: the running sum adds contiguous rows.
        inc = torch.bmm(inputs.transpose(0, 1), self.W)  # (D, B, H): W[:, d] x_d, natural order
        if self.U is not None:
            inc = inc + self.U.unsqueeze(1)  # the mask bit m_d = 1 of an observed input, 2014 §3
        if order.dim() == 1:  # one ordering for the batch
            inc = inc.index_select(0, order)  # (D, B, H) in generation order
        else:  # one per example
            idx = order.t().unsqueeze(-1).expand(-1, -1, self.hidden)  # (D, B, H)
            inc = inc.gather(0, idx)
        # Exclusive running sum, a_1 = 0, a_{t+1} = a_t + W[:, o_t] x_{o_t} (Eq. 7), plus c (Eq. 6).
        a = torch.cat([torch.zeros_like(inc[:1]), inc[:-1]]).cumsum(0) + self.start(b, labels)
        h = self.act(a)  # (D, B, H): h_t of Eq. 6, in generation order
        if order.dim() == 1:
            h = h.index_select(0, order.argsort())  # back to the natural order: h of position d
        else:
            h = torch.empty_like(h).scatter_(0, idx, h)
        logits = torch.baddbmm(self.b.unsqueeze(1), h, self.V.transpose(1, 2))  # (D, B, L), Eq. 5 per position
        return logits.transpose(0, 1)  # (B, D, L)

    def sequence_log_mass(self, seq: torch.Tensor, order: torch.Tensor,
                          labels: torch.Tensor | None = None) -> torch.Tensor:
        """log P(v_d | v_<d in the ordering) of every position: levels (B, D) -> (B, D), natural order."""
        return position_log_mass(self.sequence_logits(self.encode(seq), order, labels), seq, self.binary)

    # -- the body's contract -----------------------------------------------------------
    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Model-space density log P(v) + D·log(scale), (B, *shape) -> (B,).

        Training an order-agnostic NADE: one uniformly random ordering per example (2014, §3).
        Otherwise the exact log-likelihood of the ensemble of the model's K orderings,
        log (1/K) Σ_k P(v | o_k) (K = 1: the raster order alone)."""
        seq = to_sequence(levels_of(x, self.data), self.data.shape)  # (B, D)
        if self.training and self.order_agnostic:
            order = torch.rand(seq.shape, device=seq.device).argsort(1)  # (B, D), uniform permutations
            log_p = self.sequence_log_mass(seq, order, labels).sum(1)
        else:
            log_p = log_mean_exp(torch.stack([self.sequence_log_mass(seq, o, labels).sum(1) for o in self.orders]))
        return log_p + self.dim * math.log(self.data.scale)

    def run(self, n: int, order: torch.Tensor, labels: torch.Tensor | None = None, v: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequential running sum (Eq. 7), one position per step: D steps of O(H·L).

        order (n, D): each row's ordering. With levels v (n, D) given, they are read (teacher
        forcing); otherwise each position is drawn from its conditional with `generator`.
        Returns (levels (n, D), log P of each position (n, D)), in the natural order."""
        device = self.c.device
        out = torch.zeros(n, self.dim, dtype=torch.long, device=device) if v is None else v.clone()
        log_mass = torch.zeros(n, self.dim, device=device, dtype=torch.promote_types(self.c.dtype, torch.float32))
        rows = torch.arange(n, device=device)
        a = self.start(n, labels)  # (n, H)
        for t in range(self.dim):
            pos = order[:, t]  # (n,)
            logits = self.logits(self.act(a), pos)  # (n, L)
            if v is None:
                out[rows, pos] = draw_levels(logits, self.binary, generator)
            level = out[rows, pos]
            log_mass[rows, pos] = position_log_mass(logits.unsqueeze(1), level.unsqueeze(1), self.binary)[:, 0]
            a = a + self.columns(pos, level)  # a_{t+1} = a_t + W[:, o_t] x_{o_t}
        return out, log_mass

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """Draws from the ensemble: ordering k uniform per draw, then D steps of `run`; bin centres."""
        k = len(self.orders)
        which = categorical(torch.full((n, k), 1.0 / k, device=self.c.device), generator) if k > 1 \
            else torch.zeros(n, dtype=torch.long, device=self.c.device)
        seq, _ = self.run(n, self.orders[which], labels, generator=generator)
        return bin_centres(from_sequence(seq, shape), self.data)


# --------------------------------------------------------------------------- the families


@register_family("nade")
class NADEModel(DiscreteAutoregressiveModel):
    """NADE (Larochelle & Murray 2011); order-agnostic, with ensembles of orderings (EoNADE,
    Uria et al. 2014) when configured."""

    config_cls = NADEConfig

    def image_body(self) -> nn.Module:
        c = self.config
        return NADE(self.data, c.hidden, c.activation, c.order_agnostic, c.orderings, self.n_classes)
