"""GAN (Goodfellow et al. 2014): a generator against a discriminator that outputs the logit of P(real)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from gm.core.config import bounded
from gm.models._adversarial import AdversarialConfig, AdversarialModel
from gm.core.registry import register_family


@dataclass(frozen=True)
class GANConfig(AdversarialConfig):
    loss: Literal["non_saturating", "minimax"] = "non_saturating"  # Goodfellow 2014, §3: -log D(G(z)) in practice
    lr_gen: float = bounded(2e-4, gt=0)  # DCGAN, Adam lr 2e-4
    lr_critic: float = bounded(2e-4, gt=0)  # DCGAN, Adam lr 2e-4
    betas: tuple[float, float] = bounded((0.5, 0.999), ge=0, lt=1)  # DCGAN, β1 = 0.5
    n_critic: int = bounded(1, gt=0)  # Goodfellow 2014, Alg. 1: k = 1 discriminator step per generator step


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       real_target: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy of D on real (target `real_target`) and fake (target 0) logits.

    With real_target = 1 this is -E log D(x) - E log(1 - D(G(z))), identical for both
    generator losses. One-sided label smoothing (Salimans et al. 2016, §3.4) lowers only the
    real target to 1 - s; since softplus(l) - softplus(-l) = l, that adds exactly s·E l_real.
    With D = σ(l): -log σ(l) = softplus(-l) and -log(1 - σ(l)) = softplus(l), which stay
    finite where σ saturates.
    """
    t = real_target
    real = t * F.softplus(-real_logits) + (1 - t) * F.softplus(real_logits)
    return real.mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, kind: Literal["non_saturating", "minimax"]) -> torch.Tensor:
    """The generator's loss from the discriminator's logits on fakes (mean over the batch).

    minimax: E log(1 - D(G(z))) = -E softplus(l), minimised; its gradient σ(l) vanishes when D
    confidently rejects the fakes (l << 0), which is why Goodfellow et al. train with
    non_saturating: -E log D(G(z)) = E softplus(-l), whose gradient tends to -1 there.
    """
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"unknown GAN generator loss {kind!r}")


@register_family("gan")
class GAN(AdversarialModel):
    """Generator G: z ~ N(0, I) -> x; discriminator D: x -> logit of P(real)."""

    config_cls = GANConfig

    def critic_objective(self, real, fake, y):
        real_logits, _ = self.critic_forward(real, y)  # (B, 1)
        fake_logits, _ = self.critic_forward(fake, y)  # (B, 1)
        loss = discriminator_loss(real_logits, fake_logits, self.real_target())
        return loss, {"d_real": torch.sigmoid(real_logits).mean().detach(),
                      "d_fake": torch.sigmoid(fake_logits).mean().detach()}

    def generator_objective(self, fake, y, real):
        fake_logits, _ = self.critic_forward(fake, y)  # (B, 1)
        loss = generator_loss(fake_logits, self.config.loss)
        return loss, {"d_gen": torch.sigmoid(fake_logits).mean().detach()}
