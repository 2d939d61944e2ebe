"""WGAN-GP (Gulrajani et al. 2017): a Wasserstein critic kept 1-Lipschitz by a gradient penalty."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gm.core.config import bounded
from gm.models._adversarial import AdversarialConfig, AdversarialModel, gradient_penalty
from gm.core.registry import register_family

__all__ = ["WGANGP", "WGANGPConfig", "gradient_penalty"]


@dataclass(frozen=True)
class WGANGPConfig(AdversarialConfig):
    hidden: int = bounded(512, gt=0)  # gan_toy.py: 3×512 ReLU MLPs
    activation: Literal["relu", "leaky_relu", "tanh"] = "relu"  # gan_toy.py
    gp_weight: float = bounded(10.0, ge=0)  # WGAN-GP paper, λ = 10
    critic: Literal["pooled", "radford"] = "pooled"  # Gulrajani 2017, §4: no batch norm in a penalised critic
    n_critic: int = bounded(5, gt=0)  # WGAN-GP paper, Alg. 1: n_critic = 5
    lr_gen: float = bounded(1e-4, gt=0)  # WGAN-GP paper, Alg. 1: α = 1e-4
    lr_critic: float = bounded(1e-4, gt=0)  # WGAN-GP paper, Alg. 1: α = 1e-4
    betas: tuple[float, float] = bounded((0.0, 0.9), ge=0, lt=1)  # WGAN-GP paper, Alg. 1: β1 = 0, β2 = 0.9


@register_family("wgan_gp")
class WGANGP(AdversarialModel):
    """Generator G: z ~ N(0, I) -> x; critic D: x -> R without batch norm (the penalty is per sample)."""

    config_cls = WGANGPConfig

    def critic_objective(self, real, fake, y):
        d_real = self.critic_forward(real, y)[0].mean()
        d_fake = self.critic_forward(fake, y)[0].mean()
        gp, norms = gradient_penalty(lambda x: self.critic_forward(x, y)[0], real, fake, pack=self.config.pack)
        wasserstein = d_real - d_fake  # the critic's estimate of W(P_r, P_g)
        loss = -wasserstein + self.config.gp_weight * gp
        return loss, {"wasserstein": wasserstein.detach(), "gp": gp.detach(), "grad_norm": norms.mean()}

    def generator_objective(self, fake, y, real):
        return -self.critic_forward(fake, y)[0].mean(), {}
