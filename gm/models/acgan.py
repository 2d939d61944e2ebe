"""AC-GAN (Odena et al. 2017, "Conditional Image Synthesis with Auxiliary Classifier GANs").

The generator is class-conditional, G(z, c) with c ~ p_c; the critic reads x alone (no label
input) and has two heads: the real/fake logit (source S) and K class logits, the auxiliary
classifier P(C | x). With L_S = E log P(S = real | x_real) + E log P(S = fake | x_fake) and
L_C = E log P(C = c | x_real) + E log P(C = c | x_fake) (§3), D maximises L_S + L_C and G
maximises L_C - L_S; gm trains G with the non-saturating form of -L_S (as GAN does):

    critic:     BCE(l_real, 1) + BCE(l_fake, 0) + λ [CE(k_real, c_real) + CE(k_fake, c_fake)],
    generator:  softplus(-l_fake) + λ CE(k_fake, c_fake),             (λ = class_weight, 1 in the paper)

batch means throughout. Fakes take the labels of the batch (as gm's cGAN).

AC-GAN proper is `auxiliary_classifier: true` (labelled data only). It is off by default only
because every family's default config is unconditional (the registry-wide tests build each
family's defaults on labelled images and expect a condition to be refused); with it off the
family is the plain GAN. `conditional: true` keeps its meaning for every adversarial family
(labels into the generator and the critic's input, the cGAN); with the auxiliary classifier on
as well, the critic sees the label it is asked to predict, which makes the auxiliary task
trivial: leave `conditional` off for AC-GAN proper. With packing (PacGAN) the auxiliary head
classifies each of the pack's samples (pack·K logits).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

from gm.core.config import ConfigError, bounded
from gm.core.registry import register_family
from gm.data.dataspec import DataSpec
from gm.models.base import Capabilities
from gm.models.gan import GAN, GANConfig, discriminator_loss, generator_loss
from gm.nn.mlp import label_count


@dataclass(frozen=True)
class ACGANConfig(GANConfig):
    auxiliary_classifier: bool = False  # AC-GAN proper: G(z, c), D predicts c (needs labels); off = plain GAN
    critic: Literal["pooled", "radford"] = "radford"  # arch dcgan: Odena 2017 uses a DCGAN-style D with batch norm
    class_weight: float = bounded(1.0, ge=0)  # λ of the class log-likelihood L_C (the paper sums L_S and L_C: 1)
    lr_gen: float = bounded(2e-4, gt=0)  # Odena 2017, App. A: Adam lr 2e-4
    lr_critic: float = bounded(2e-4, gt=0)
    betas: tuple[float, float] = bounded((0.5, 0.999), ge=0, lt=1)  # Odena 2017, App. A: β1 = 0.5


def acgan_critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_class_logits: torch.Tensor,
                      fake_class_logits: torch.Tensor, y: torch.Tensor, real_target: float = 1.0,
                      class_weight: float = 1.0) -> torch.Tensor:
    """-(L_S + λ L_C): the source BCE on real (target `real_target`) and fake logits (B, 1), plus λ times
    the class cross-entropy of the auxiliary classifier's logits (B, K) on real and on fake samples,
    both against the labels y (B,)."""
    source = discriminator_loss(real_logits, fake_logits, real_target)
    classes = F.cross_entropy(real_class_logits, y) + F.cross_entropy(fake_class_logits, y)
    return source + class_weight * classes


def acgan_generator_loss(fake_logits: torch.Tensor, fake_class_logits: torch.Tensor, y: torch.Tensor,
                         kind: Literal["non_saturating", "minimax"] = "non_saturating",
                         class_weight: float = 1.0) -> torch.Tensor:
    """The generator's -(L_C - L_S): its adversarial loss (`kind`, see gan.generator_loss) plus λ times
    the class cross-entropy of its samples' auxiliary logits (B, K) against the labels it was given."""
    return generator_loss(fake_logits, kind) + class_weight * F.cross_entropy(fake_class_logits, y)


@register_family("acgan")
class ACGAN(GAN):
    """Generator G: (z, c) -> x; critic D: x -> (logit of P(real), K class logits)."""

    config_cls = ACGANConfig

    @classmethod
    def capabilities_for(cls, config: ACGANConfig) -> Capabilities:
        return replace(cls.capabilities, conditional=config.conditional or config.auxiliary_classifier)

    def _label_counts(self, config: ACGANConfig, data: DataSpec) -> tuple[int, int]:
        if config.auxiliary_classifier and not data.num_classes:
            raise ConfigError("auxiliary_classifier: true needs labelled data (the data spec has no num_classes)")
        self.aux_labels = data.num_classes if config.auxiliary_classifier else 0
        critic_labels = label_count(config.conditional, data)
        return max(self.aux_labels, critic_labels), critic_labels

    def _critic_out_dim(self) -> int:
        return 1 + self.config.pack * self.aux_labels  # the source logit, then K class logits per packed sample

    def heads(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(source logits (B / pack, 1), class logits (B, K)) of the critic on x (B, ...)."""
        out, _ = self.critic_forward(x, y)
        return out[:, :1], out[:, 1:].reshape(x.shape[0], self.aux_labels)

    def critic_objective(self, real, fake, y):
        if not self.aux_labels:
            return super().critic_objective(real, fake, y)
        real_logits, real_classes = self.heads(real, y)
        fake_logits, fake_classes = self.heads(fake, y)
        loss = acgan_critic_loss(real_logits, fake_logits, real_classes, fake_classes, y, self.real_target(),
                                 self.config.class_weight)
        return loss, {"d_real": torch.sigmoid(real_logits).mean().detach(),
                      "d_fake": torch.sigmoid(fake_logits).mean().detach(),
                      "class_ce_real": F.cross_entropy(real_classes, y).detach(),
                      "class_ce_fake": F.cross_entropy(fake_classes, y).detach(),
                      "class_acc_real": (real_classes.argmax(1) == y).float().mean().detach()}

    def generator_objective(self, fake, y, real):
        if not self.aux_labels:
            return super().generator_objective(fake, y, real)
        fake_logits, fake_classes = self.heads(fake, y)
        loss = acgan_generator_loss(fake_logits, fake_classes, y, self.config.loss, self.config.class_weight)
        return loss, {"d_gen": torch.sigmoid(fake_logits).mean().detach(),
                      "class_ce_gen": F.cross_entropy(fake_classes, y).detach()}
