"""f-GAN (Nowozin, Cseke & Tomioka 2016): a generator trained by variational f-divergence minimisation.

Any f-divergence D_f(P‖Q) = ∫ q(x) f(p(x)/q(x)) dx has the variational lower bound

    D_f(P‖Q) ≥ sup_T  E_P[T(x)] − E_Q[f*(T(x))],   tight at T*(x) = f'(p(x)/q(x)),

with f* the Fenchel conjugate of f. The critic is T_ω(x) = g_f(V_ω(x)): an unconstrained
network V_ω followed by an output activation g_f that maps R into dom f*. Each divergence
is therefore one row of a table, (f, g_f, f*, f'(1)) — Nowozin et al., Tables 1 and 6 —
and picking one is a config value, not a subclass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from gm.models._adversarial import AdversarialConfig, AdversarialModel
from gm.core.registry import register_family

LOG2 = math.log(2.0)
INF = math.inf

DivergenceName = Literal["kl", "reverse_kl", "pearson", "neyman", "squared_hellinger",
                         "jensen_shannon", "gan", "total_variation"]


@dataclass(frozen=True)
class Divergence:
    """One row of the f-GAN table. All callables are elementwise torch functions.

    `conjugate_of_activation` is f*(g_f(v)) in closed form. It equals the composition
    mathematically, but the composition loses everything to rounding where g_f(v) rounds
    onto the edge of dom f* (e.g. squared Hellinger: g_f(30) = 1 − e⁻³⁰ is 1.0 in float32,
    and f*(1) = 1/0); the closed forms stay finite for every finite v of moderate size.
    """

    name: str
    f: Callable[[Tensor], Tensor]  # generator function f(u), u = p/q ∈ dom f
    activation: Callable[[Tensor], Tensor]  # g_f: R -> dom f*
    conjugate: Callable[[Tensor], Tensor]  # f*(t) = sup_u {u·t − f(u)}, t ∈ dom f*
    conjugate_of_activation: Callable[[Tensor], Tensor]  # f*(g_f(v)), numerically stable
    f_prime_1: float  # f'(1): the critic's output T*(x) where p = q
    domain: str  # dom f*, in words
    t_range: tuple[float, float]  # dom f* as an interval (open unless t_closed)
    t_closed: bool = False
    u_range: tuple[float, float] = (0.0, INF)  # dom f (where the sup defining f* runs)

    def in_domain(self, t: Tensor) -> Tensor:
        """Elementwise: is t in dom f*?"""
        lo, hi = self.t_range
        if self.t_closed:
            return (t >= lo) & (t <= hi)
        return (t > lo) & (t < hi)


def _xlogx(u: Tensor) -> Tensor:
    return torch.xlogy(u, u)  # 0 log 0 = 0


# Nowozin et al. 2016, Table 1 (f) and Table 6 (g_f, f*, f'(1)). Stable forms: softplus for
# log(1 + e^x), expm1 for 1 − e^x near 0, log1p for log(1 + x).
DIVERGENCES: dict[str, Divergence] = {d.name: d for d in (
    Divergence(
        "kl", f=_xlogx,  # u log u: D = KL(P‖Q), mode covering
        activation=lambda v: v,
        conjugate=lambda t: torch.exp(t - 1),
        conjugate_of_activation=lambda v: torch.exp(v - 1),
        f_prime_1=1.0, domain="t ∈ R", t_range=(-INF, INF),
    ),
    Divergence(
        "reverse_kl", f=lambda u: -torch.log(u),  # −log u: D = KL(Q‖P), mode seeking
        # −exp(−v) as in the paper's Table 6 (increasing in v, like every other g_f: larger V
        # means "more like the data"). Some secondary sources print −exp(v); same range.
        activation=lambda v: -torch.exp(-v),
        conjugate=lambda t: -1 - torch.log(-t),
        conjugate_of_activation=lambda v: v - 1,  # −1 − log(e^(−v))
        f_prime_1=-1.0, domain="t < 0", t_range=(-INF, 0.0),
    ),
    Divergence(
        "pearson", f=lambda u: (u - 1) ** 2,  # Pearson χ²
        activation=lambda v: v,
        conjugate=lambda t: t ** 2 / 4 + t,
        conjugate_of_activation=lambda v: v ** 2 / 4 + v,
        # f*(t) = t²/4 + t is the conjugate of (u − 1)² over all of R (the maximiser
        # u = 1 + t/2 is negative for t < −2), so dom f is R here, not R+.
        f_prime_1=0.0, domain="t ∈ R", t_range=(-INF, INF), u_range=(-INF, INF),
    ),
    Divergence(
        "neyman", f=lambda u: (1 - u) ** 2 / u,  # Neyman χ²
        activation=lambda v: -torch.expm1(-v),  # 1 − e^(−v)
        conjugate=lambda t: 2 - 2 * torch.sqrt(1 - t),
        conjugate_of_activation=lambda v: 2 - 2 * torch.exp(-v / 2),  # 2 − 2√(e^(−v))
        f_prime_1=0.0, domain="t < 1", t_range=(-INF, 1.0),
    ),
    Divergence(
        "squared_hellinger", f=lambda u: (torch.sqrt(u) - 1) ** 2,
        activation=lambda v: -torch.expm1(-v),  # 1 − e^(−v)
        conjugate=lambda t: t / (1 - t),
        conjugate_of_activation=torch.expm1,  # (1 − e^(−v)) / e^(−v) = e^v − 1
        f_prime_1=0.0, domain="t < 1", t_range=(-INF, 1.0),
    ),
    Divergence(
        # u log u − (u + 1) log((u + 1)/2). Note ∫ q f(p/q) = 2·JSD(P‖Q) with JSD the usual
        # (½-weighted) Jensen-Shannon divergence: the paper's Table 1 prints ½ in front of the
        # divergence but not of f, and Table 6's conjugate belongs to this f (no ½).
        "jensen_shannon", f=lambda u: _xlogx(u) - (u + 1) * (torch.log1p(u) - LOG2),
        activation=lambda v: LOG2 - F.softplus(-v),  # log 2 − log(1 + e^(−v))
        conjugate=lambda t: -LOG2 - torch.log1p(-torch.exp(t - LOG2)),  # −log(2 − e^t)
        conjugate_of_activation=lambda v: F.softplus(v) - LOG2,  # −log(2 − 2σ(v))
        f_prime_1=0.0, domain="t < log 2", t_range=(-INF, LOG2),
    ),
    Divergence(
        # u log u − (u + 1) log(u + 1): D = 2·JSD − log 4, the original GAN's objective. This f
        # is not normalised: f(1) = −log 4, not 0 (Nowozin et al., Table 1).
        "gan", f=lambda u: _xlogx(u) - (u + 1) * torch.log1p(u),
        activation=lambda v: -F.softplus(-v),  # log σ(v) = log D(x)
        conjugate=lambda t: -torch.log(-torch.expm1(t)),  # −log(1 − e^t)
        conjugate_of_activation=F.softplus,  # −log(1 − σ(v))
        f_prime_1=-LOG2, domain="t < 0", t_range=(-INF, 0.0),
    ),
    Divergence(
        "total_variation", f=lambda u: 0.5 * torch.abs(u - 1),
        activation=lambda v: 0.5 * torch.tanh(v),
        # f* is +∞ outside [−½, ½]; g_f never leaves it, so the identity is all that is needed.
        conjugate=lambda t: t,
        conjugate_of_activation=lambda v: 0.5 * torch.tanh(v),
        # f'(1) is the subgradient 0 (f has a kink at 1), as in the paper's table.
        f_prime_1=0.0, domain="|t| ≤ ½", t_range=(-0.5, 0.5), t_closed=True,
    ),
)}


def variational_objective(div: Divergence, v_real: Tensor, v_fake: Tensor) -> Tensor:
    """F = E_P[g_f(V(x))] − E_Q[f*(g_f(V(x̃)))] from the critic's raw outputs (Nowozin et al., §3).

    v_real: (B,) or (B, 1) outputs V on data; v_fake: the same on generated samples. F is a
    lower bound on D_f(P‖Q) for any V, tight at the optimal critic.
    """
    return div.activation(v_real).mean() - div.conjugate_of_activation(v_fake).mean()


def generator_loss(div: Divergence, v_fake: Tensor, kind: Literal["minimax", "alternative"]) -> Tensor:
    """The generator's loss from the critic's raw outputs on generated samples (mean over the batch).

    minimax: minimise F, i.e. −E_Q[f*(g_f(V(G(z))))] (E_P does not depend on the generator).
    alternative (Nowozin et al., §3.2): maximise E_Q[g_f(V(G(z)))] instead, the f-GAN analogue of
    the non-saturating GAN loss (for "gan" it is exactly −E log D(G(z))), which keeps gradients
    alive early in training when the critic rejects every sample.
    """
    if kind == "minimax":
        return -div.conjugate_of_activation(v_fake).mean()
    if kind == "alternative":
        return -div.activation(v_fake).mean()
    raise ValueError(f"unknown f-GAN generator loss {kind!r}")


# --------------------------------------------------------------------------- the family


@dataclass(frozen=True)
class FGANConfig(AdversarialConfig):
    divergence: DivergenceName = "jensen_shannon"  # a row of DIVERGENCES (Nowozin et al., Table 6)
    generator_loss: Literal["minimax", "alternative"] = "alternative"  # Nowozin et al., §3.2
    # label_smoothing (inherited) has no effect here: the f-GAN critic regresses T(x) = g_f(V(x))
    # with no real/fake target to smooth.


@register_family("fgan")
class FGAN(AdversarialModel):
    """Critic V: x -> R, with T = g_f(V); critic maximises F = E_P[T] − E_Q[f*(T)] ≤ D_f(P‖Q)."""

    config_cls = FGANConfig

    @property
    def divergence(self) -> Divergence:
        return DIVERGENCES[self.config.divergence]

    def critic_objective(self, real: Tensor, fake: Tensor, y: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        v_real, _ = self.critic_forward(real, y)  # (B, 1)
        v_fake, _ = self.critic_forward(fake, y)  # (B, 1)
        estimate = variational_objective(self.divergence, v_real, v_fake)  # F: a lower bound on D_f(P‖Q)
        return -estimate, {
            "divergence": estimate.detach(),
            "t_real": self.divergence.activation(v_real).mean().detach(),
            "t_fake": self.divergence.activation(v_fake).mean().detach(),
        }

    def generator_objective(self, fake: Tensor, y: Tensor | None, real: Tensor) -> tuple[Tensor, dict[str, float]]:
        v_fake, _ = self.critic_forward(fake, y)  # (B, 1)
        return generator_loss(self.divergence, v_fake, self.config.generator_loss), {}
