"""Cramér GAN (Bellemare et al. 2017): the energy distance between data and model in a learned space h.

The critic is a map h: x -> R^k. With two independent generator samples x_g, x_g' and the
critic function f(x) = ‖h(x) - h(x_g')‖ - ‖h(x)‖ (the paper's f(x, x_g')), Algorithm 1 of
the paper trains

    generator:  L_g = ‖h(x_r) - h(x_g)‖ + ‖h(x_r) - h(x_g')‖ - ‖h(x_g) - h(x_g')‖,
    critic:     L_critic = -(f(x_r) - f(x_g)) + λ (‖∇f(x̂)‖₂ - 1)²,  x̂ = ε x_r + (1 - ε) x_g,

batch means throughout. L_g is the energy distance 2E‖X - Y‖ - E‖X - X'‖ - E‖Y - Y'‖ in
h-space without its E‖X - X'‖ (real-real) term, which does not depend on the generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from gm.core.config import bounded
from gm.models._adversarial import AdversarialConfig, AdversarialModel, gradient_penalty
from gm.core.registry import register_family


@dataclass(frozen=True)
class CramerConfig(AdversarialConfig):
    h_dim: int = bounded(256, gt=0)  # Bellemare 2017, §5: the critic h maps into R^256
    gp_weight: float = bounded(10.0, ge=0)  # Bellemare 2017, Alg. 1: λ = 10
    critic: Literal["pooled", "radford"] = "pooled"  # a penalised critic is per sample: no batch norm (as WGAN-GP)
    n_critic: int = bounded(5, gt=0)  # Bellemare 2017, Alg. 1 follows WGAN-GP: n_critic = 5
    lr_gen: float = bounded(1e-4, gt=0)  # Bellemare 2017, Alg. 1: Adam α = 1e-4
    lr_critic: float = bounded(1e-4, gt=0)
    betas: tuple[float, float] = bounded((0.5, 0.9), ge=0, lt=1)  # Bellemare 2017, Alg. 1: β1 = 0.5, β2 = 0.9


def _norm(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v, dim=-1)  # (B,)


def cramer_critic(h_x: torch.Tensor, h_ref: torch.Tensor) -> torch.Tensor:
    """f(x, x') = ‖h(x) - h(x')‖₂ - ‖h(x)‖₂ row by row, from h(x), h(x') of shape (B, k); returns (B,)."""
    return _norm(h_x - h_ref) - _norm(h_x)


def generator_energy(h_real: torch.Tensor, h_gen: torch.Tensor, h_gen2: torch.Tensor) -> torch.Tensor:
    """L_g = E‖h(x_r) - h(x_g)‖ + E‖h(x_r) - h(x_g')‖ - E‖h(x_g) - h(x_g')‖ over paired (B, k) rows."""
    return (_norm(h_real - h_gen) + _norm(h_real - h_gen2) - _norm(h_gen - h_gen2)).mean()


def energy_distance(a: torch.Tensor, a2: torch.Tensor, b: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """An unbiased estimate of 2E‖A - B‖ - E‖A - A'‖ - E‖B - B'‖ from paired independent rows (B, k).

    Zero in expectation iff A and B have the same distribution (Székely & Rizzo 2013);
    equals `generator_energy(a, b, b2) - E‖a - a2‖` up to which pairs estimate E‖A - B‖.
    """
    return (_norm(a - b) + _norm(a2 - b2) - _norm(a - a2) - _norm(b - b2)).mean()


@register_family("cramer")
class CramerGAN(AdversarialModel):
    """Generator G: z ~ N(0, I) -> x; critic h: x -> R^h_dim without batch norm (the penalty is per sample)."""

    config_cls = CramerConfig
    critic_out_dim = 256  # the default; the config's h_dim decides

    def _critic_out_dim(self) -> int:
        return self.config.h_dim

    def h(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.critic_forward(x, y)[0]  # (B / pack, h_dim)

    def critic_objective(self, real, fake, y):
        with torch.no_grad():
            fake2 = self.generate(real.shape[0], y)  # x_g', independent of x_g = fake
        h_ref = self.h(fake2, y)  # (B, k): the critic's reference point, trained too
        f_real = cramer_critic(self.h(real, y), h_ref)  # (B,)
        f_fake = cramer_critic(self.h(fake, y), h_ref)  # (B,)
        surrogate = f_real.mean() - f_fake.mean()
        gp, norms = gradient_penalty(lambda x: cramer_critic(self.h(x, y), h_ref), real, fake,
                                     pack=self.config.pack)
        loss = -surrogate + self.config.gp_weight * gp
        return loss, {"surrogate": surrogate.detach(), "gp": gp.detach(), "grad_norm": norms.mean()}

    def generator_objective(self, fake, y, real):
        fake2 = self.generate(real.shape[0], y)  # x_g', with gradients too
        energy = generator_energy(self.h(real, y), self.h(fake, y), self.h(fake2, y))
        return energy, {"energy": energy.detach()}
