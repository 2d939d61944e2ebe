"""SAGAN (Zhang et al. 2019, "Self-Attention Generative Adversarial Networks").

Self-attention in both networks at a chosen resolution (`attention`, §3), spectral normalisation of every
weight of both networks (§4.1, the generator's too), the hinge loss (§5)

    critic:     E relu(1 - D(x)) + E relu(1 + D(G(z))),        generator:  -E D(G(z)),

and two time-scale learning rates (TTUR, §4.2): the critic's 4e-4, the generator's 1e-4, Adam β = (0, 0.9),
one critic step per generator step. The backbones are gm/nn/sagan.py (`arch: sagan`, which any adversarial
family can use); the stabilisers of the adversarial base apply as for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gm.core.config import bounded
from gm.core.registry import register_family
from gm.models._adversarial import AdversarialConfig, AdversarialModel
from gm.nn.scaled import apply_spectral_norm, hinge_critic_loss, hinge_generator_loss


@dataclass(frozen=True)
class SAGANConfig(AdversarialConfig):
    arch: Literal["mlp", "dcgan", "sagan"] = "sagan"
    hidden: int = bounded(32, gt=0)  # base channel count (the paper's 64 on 128×128 ImageNet)
    lr_gen: float = bounded(1e-4, gt=0)  # TTUR, §4.2
    lr_critic: float = bounded(4e-4, gt=0)  # TTUR, §4.2
    betas: tuple[float, float] = bounded((0.0, 0.9), ge=0, lt=1)  # §5: β1 = 0, β2 = 0.9
    n_critic: int = bounded(1, gt=0)  # §4.2: one critic step per generator step (TTUR instead of 5)


class HingeObjectives:
    """The hinge loss (Lim & Ye 2017; SAGAN §5, BigGAN): E relu(1 - D(x)) + E relu(1 + D(G(z))) for the critic,
    -E D(G(z)) for the generator."""

    def critic_objective(self, real, fake, y):
        d_real = self.critic_forward(real, y)[0]
        d_fake = self.critic_forward(fake, y)[0]
        loss = hinge_critic_loss(d_real, d_fake)
        return loss, {"d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}

    def generator_objective(self, fake, y, real):
        return hinge_generator_loss(self.critic_forward(fake, y)[0]), {}


@register_family("sagan")
class SAGAN(HingeObjectives, AdversarialModel):
    """Generator and critic with self-attention and spectral norm, trained with the hinge loss.

    On vectors (toy data) there are no positions to attend over: `arch: sagan` becomes spectrally
    normalised MLPs (SNGAN's networks, Miyato et al. 2018) with the same loss and learning rates."""

    config_cls = SAGANConfig
    vector_fallback = True

    def finish_networks(self, c: SAGANConfig) -> None:
        apply_spectral_norm(self.gen)  # §4.1: both networks, whatever the backbone
        apply_spectral_norm(self.critic)
