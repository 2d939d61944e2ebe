"""WGAN (Arjovsky, Chintala & Bottou 2017): a Wasserstein critic kept Lipschitz by weight clipping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from gm.core.config import bounded
from gm.models._adversarial import AdversarialConfig, AdversarialModel
from gm.core.registry import register_family


@dataclass(frozen=True)
class WGANConfig(AdversarialConfig):
    clip: float = bounded(0.01, gt=0)  # WGAN paper, Alg. 1: c = 0.01
    optimizer: Literal["adam", "rmsprop"] = "rmsprop"  # WGAN paper, Alg. 1 (momentum-based Adam was unstable, §4)
    lr_gen: float = bounded(5e-5, gt=0)  # WGAN paper, Alg. 1: α = 5e-5
    lr_critic: float = bounded(5e-5, gt=0)  # WGAN paper, Alg. 1: α = 5e-5
    n_critic: int = bounded(5, gt=0)  # WGAN paper, Alg. 1: n_critic = 5


@register_family("wgan")
class WGAN(AdversarialModel):
    """Generator G: z ~ N(0, I) -> x; critic D: x -> R with every weight clamped to [-c, c]."""

    config_cls = WGANConfig

    def critic_objective(self, real, fake, y):
        d_real = self.critic_forward(real, y)[0].mean()
        d_fake = self.critic_forward(fake, y)[0].mean()
        wasserstein = d_real - d_fake  # the critic's estimate of W(P_r, P_g), up to the Lipschitz constant
        return -wasserstein, {"wasserstein": wasserstein.detach()}

    def generator_objective(self, fake, y, real):
        return -self.critic_forward(fake, y)[0].mean(), {}

    def after_step(self, group: str) -> None:
        if group == "critic":  # WGAN paper, Alg. 1, line 7: w <- clip(w, -c, c)
            c = self.config.clip
            with torch.no_grad():
                for p in self.critic_parameters():
                    p.clamp_(-c, c)
        super().after_step(group)  # historical averages then see the clipped weights
