"""ProGAN (Karras et al. 2018, "Progressive Growing of GANs for Improved Quality, Stability, and Variation").

The networks (gm/nn/progan.py) grow during training: both start at 4×4, and each next resolution is
faded in (α rising linearly 0 -> 1 over `phase_steps` generator steps, §3, Fig. 2) and then stabilised
(`phase_steps` more), after which the full resolution trains for good. The stage is a deterministic
function of the `growth.step` buffer (generator steps taken), advanced in `after_step`, so it is saved
with every checkpoint and a resumed run carries on where it stopped.

At a lower resolution r the generator's images are upsampled (nearest) to the data's size, so samples and
losses always have the data's shape, and the real images are avg-pooled to r (in a fade-in blended with
their r/2 version, as ProGAN's code does) and upsampled back, so the critic compares like with like; the
critic itself reads its input avg-pooled to r. The gradient penalty is taken on these full-size images
(as in ProGAN's code, whose nets always see the full size).

Equalised learning rate everywhere, pixel norm after every generator conv, minibatch stddev before the
critic's last block (§4.1, §4.2, §3), and the loss of §A.1: WGAN-GP (λ = 10) plus the drift term
ε_drift·E[D(x)²] on the real scores (ε_drift = 0.001) that keeps the critic's outputs near 0; Adam
lr 1e-3, β = (0, 0.99), one critic step per generator step (the official config.py: D_training_repeats
= 1, learning rate 0.001, β1 = 0, β2 = 0.99).

On vectors (toy data) there is nothing to grow: `arch: progan` becomes equalised-LR MLPs (pixel norm
after every hidden generator layer, LeakyReLU 0.2) with the same loss and optimiser; `arch: mlp` picks
those on images too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gm.core.config import ConfigError, bounded
from gm.core.numerics import randn
from gm.core.registry import register_family
from gm.data.dataspec import DataSpec
from gm.models._adversarial import AdversarialConfig, AdversarialModel, Critic, gradient_penalty
from gm.models.base import Batch, ModelOutput
from gm.nn.mlp import bounded_output
from gm.nn.progan import (
    Growth,
    ProGANCritic,
    ProGANGenerator,
    equalised_mlp_critic_body,
    equalised_mlp_generator,
    progan_levels,
    real_at_stage,
)
from gm.nn.scaled import EqualLinear, PixelNorm

__all__ = ["ProGAN", "ProGANConfig", "drift_penalty"]


@dataclass(frozen=True)
class ProGANConfig(AdversarialConfig):
    # progan: the growing conv nets (images 4·2^k wide); mlp: equalised-LR MLPs, no growing (what vectors get)
    arch: Literal["mlp", "progan"] = "progan"
    ema: float = bounded(0.999, ge=0, lt=1)  # §A.1: G's weights averaged with decay 0.999 for sampling
    z_dim: int = bounded(32, gt=0)  # the paper's 512 on 1024² faces
    hidden: int = bounded(64, gt=0)  # channels of every block (MLP: width)
    depth: int = bounded(3, gt=0)  # arch mlp: hidden layers per net
    activation: Literal["leaky_relu"] = "leaky_relu"  # Table 2: LeakyReLU(0.2) in both nets
    lr_gen: float = bounded(1e-3, gt=0)  # §A.1: Adam α = 0.001
    lr_critic: float = bounded(1e-3, gt=0)
    betas: tuple[float, float] = bounded((0.0, 0.99), ge=0, lt=1)  # §A.1: β1 = 0, β2 = 0.99
    n_critic: int = bounded(1, gt=0)  # §A.1: one critic step per generator step
    gp_weight: float = bounded(10.0, ge=0)  # WGAN-GP's λ = 10 (§A.1)
    drift: float = bounded(0.001, ge=0)  # §A.1: ε_drift = 0.001
    # generator steps per phase: stabilise 4×4, then fade in and stabilise each next resolution (0 = no growing)
    phase_steps: int = bounded(250, ge=0)  # the paper: 800k images per phase

    def validate(self) -> None:
        super().validate()
        if self.virtual_batch_norm:
            raise ConfigError("virtual_batch_norm: expected false; ProGAN normalises its generator with pixel "
                              "norm, not batch statistics")


def drift_penalty(d_real: torch.Tensor) -> torch.Tensor:
    """ProGAN's drift term E[D(x)²] over the critic's scores on real samples (§A.1; weighted by ε_drift)."""
    return d_real.pow(2).mean()


class EqualCritic(Critic):
    """The adversarial `Critic` (body, optional minibatch discrimination) with an equalised-LR linear head."""

    def __init__(self, body: nn.Module, feature_dim: int, out_dim: int, mbd_kernels: int = 0):
        super().__init__(body, feature_dim, out_dim, mbd_kernels)
        self.head = EqualLinear(feature_dim + mbd_kernels, out_dim, gain=1.0)


@register_family("progan")
class ProGAN(AdversarialModel):
    """A growing generator and critic (equalised LR, pixel norm, minibatch stddev) under WGAN-GP + drift."""

    config_cls = ProGANConfig
    vector_fallback = True

    def __init__(self, config: ProGANConfig, data: DataSpec):
        super().__init__(config, data)  # build_networks sets self.growth, the schedule both nets read
        self.pixel_norm = PixelNorm()

    def build_networks(self, c: ProGANConfig, data: DataSpec) -> tuple[nn.Module, nn.Module]:
        out_dim = self._critic_out_dim()
        bound = bounded_output(data)
        gen_in = c.z_dim + self.num_labels
        levels = progan_levels(data) if c.arch == "progan" else 1
        self.growth = growth = Growth(c.phase_steps if c.arch == "progan" else 0, levels)
        if c.arch == "mlp":
            gen = equalised_mlp_generator(gen_in, data.dim, c.hidden, c.depth, out_activation=bound)
            body = equalised_mlp_critic_body((data.dim + self.critic_labels) * c.pack, c.hidden, c.depth)
            return gen, EqualCritic(body, c.hidden, out_dim, c.minibatch_discrimination)
        channels = data.shape[0]
        gen = ProGANGenerator(gen_in, channels, growth.levels, c.hidden, out_activation=bound, growth=growth)
        body = ProGANCritic((channels + self.critic_labels) * c.pack, growth.levels, c.hidden, growth=growth)
        return gen, EqualCritic(body, body.feature_dim, out_dim, c.minibatch_discrimination)

    # -- the schedule -------------------------------------------------------------
    def stage(self) -> tuple[int, float]:
        """(level, α) now: the resolution is 4·2^level (arch mlp: level 0, α = 1, nothing grows)."""
        return self.growth.stage()

    def resolution(self) -> int:
        """The width of the images the nets work at now (the data's own size once grown; 0 for vectors)."""
        return 4 * 2 ** self.stage()[0] if self.config.arch == "progan" else 0

    def after_step(self, group: str) -> None:
        """The base's counts, and one step of the growing schedule per generator step."""
        super().after_step(group)
        if group == "gen":
            self.growth.advance()

    # -- networks -----------------------------------------------------------------
    def generate(self, n: int, y: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples G(z, y) at the current stage, upsampled (nearest) to the data's size: (n, *shape)."""
        device = self.critic_steps.device
        z = self.pixel_norm(randn((n, self.config.z_dim), generator, device))  # (n, Z), on the unit sphere ·√Z
        onehot = self._one_hot(y, n, device)
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)  # (n, Z + K)
        x = self.gen(z)
        if self.config.arch == "progan" and x.shape[-1] != self.data.shape[-1]:
            x = nn.functional.interpolate(x, size=tuple(self.data.shape[1:]), mode="nearest")
        return x.reshape(n, *self.data.shape)

    def real_at_stage(self, x: torch.Tensor) -> torch.Tensor:
        """Real images as the critic sees them at the current stage (see gm.nn.progan.real_at_stage)."""
        if self.config.arch != "progan":
            return x
        return real_at_stage(x, *self.stage())

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        return super().loss(Batch(self.real_at_stage(batch.x), batch.y), group)

    # -- the objectives -----------------------------------------------------------
    def critic_objective(self, real, fake, y):
        d_real = self.critic_forward(real, y)[0]
        d_fake = self.critic_forward(fake, y)[0]
        gp, norms = gradient_penalty(lambda x: self.critic_forward(x, y)[0], real, fake, pack=self.config.pack)
        wasserstein = d_real.mean() - d_fake.mean()
        drift = drift_penalty(d_real)
        loss = -wasserstein + self.config.gp_weight * gp + self.config.drift * drift
        level, alpha = self.stage()
        return loss, {"wasserstein": wasserstein.detach(), "gp": gp.detach(), "drift": drift.detach(),
                      "grad_norm": norms.mean(), "level": float(level), "alpha": float(alpha)}

    def generator_objective(self, fake, y, real):
        return -self.critic_forward(fake, y)[0].mean(), {}
