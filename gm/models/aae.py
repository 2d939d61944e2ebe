"""Adversarial Autoencoder (Makhzani et al. 2016): an autoencoder whose code distribution q(z) is
matched to the prior p(z) by a GAN in latent space.

Training alternates two phases on every minibatch (Makhzani §2):

- reconstruction: encoder and decoder minimise -log p(x|z), z = E(x) (the decoder is one of
  the observation heads of `gm.nn.observation`);
- regularization: a discriminator D(z) learns to tell prior samples z ~ p(z) ("real") from
  codes E(x) ("fake"), then the encoder, as the GAN's generator, is updated to fool it
  (the non-saturating loss -log D(E(x)), Goodfellow et al. 2014, §3).

The encoder is deterministic (Makhzani §2, first choice) or a Gaussian q(z|x) sampled with
the reparameterisation trick (§2, second choice). `conditional` is the label-regularised
AAE of §2.3 (Fig. 4): the prior is a mixture of one Gaussian per class, the one-hot label
goes into the discriminator beside z, so each class's codes are pushed onto its own
component; samples of class k decode draws from component k.

There is no density of the aggregated posterior q(z), so the AAE has no likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch

from gm.core.config import bounded
from gm.data.dataspec import DataSpec
from gm.models._latent import LatentConfig, LatentVariableModel, encoder_net, gaussian_posterior_sample
from gm.models.base import Batch, Capabilities, ModelOutput, StepGroup
from gm.models.gan import discriminator_loss, generator_loss
from gm.nn.mlp import check_unconditional, label_count, mlp, one_hot_labels
from gm.nn.precision import fp32
from gm.core.numerics import randn
from gm.core.registry import register_family

__all__ = ["AAE", "AAEConfig", "class_prior_means"]


@dataclass(frozen=True)
class AAEConfig(LatentConfig):
    encoder: Literal["deterministic", "gaussian"] = "deterministic"  # Makhzani §2: q(z|x) choices 1 and 2
    disc_hidden: int = bounded(256, gt=0)  # MLP width of D (Makhzani's MNIST nets: 1000 ReLU units)
    disc_depth: int = bounded(2, gt=0)  # hidden layers of D (Makhzani's MNIST nets: two)
    lr_disc: float = bounded(5e-4, gt=0)  # our choice; the adversary rate of WAE-GAN (Tolstikhin 2018, §4)
    lr_gen: float = bounded(5e-4, gt=0)  # the encoder's rate in the regularization phase (our choice)
    betas: tuple[float, float] = bounded((0.5, 0.999), ge=0, lt=1)  # Adam β1 = 0.5 as in DCGAN / WAE
    n_disc: int = bounded(1, gt=0)  # discriminator steps per iteration (Makhzani: one of each phase)
    conditional: bool = False  # Makhzani §2.3: label-regularised prior, labels into the discriminator
    prior_radius: float = bounded(4.0, gt=0)  # conditional prior: component means on a circle of this radius
    prior_std: float = bounded(0.5, gt=0)  # conditional prior: each component's isotropic std


def class_prior_means(num_classes: int, z_dim: int, radius: float) -> torch.Tensor:
    """Means (K, Z) of the class-conditional prior's components.

    Makhzani et al. (§2.3, Fig. 4) use a mixture of 10 Gaussians arranged around the origin
    in 2-D; we place the K means evenly on a circle of `radius` in the first two latent
    coordinates (the others 0), or evenly on [-radius, radius] when z_dim = 1.
    """
    means = torch.zeros(num_classes, z_dim)
    k = torch.arange(num_classes, dtype=torch.float32)
    if z_dim == 1:
        means[:, 0] = radius * (2 * k / max(num_classes - 1, 1) - 1) if num_classes > 1 else 0.0
    else:
        angle = 2 * math.pi * k / num_classes
        means[:, 0], means[:, 1] = radius * torch.cos(angle), radius * torch.sin(angle)
    return means


@register_family("aae")
class AAE(LatentVariableModel):
    """Encoder E: x -> z, decoder p(x|z), latent discriminator D: (z[, one-hot y]) -> logit of "z ~ p(z)".

    Step groups (Makhzani §2): "ae" (encoder + decoder, reconstruction), "disc" (`n_disc`
    times), "gen" (the encoder against D).
    """

    config_cls = AAEConfig

    @classmethod
    def capabilities_for(cls, config: AAEConfig) -> Capabilities:
        return replace(cls.capabilities, conditional=config.conditional)

    def __init__(self, config: AAEConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        self.num_labels = label_count(c.conditional, data)
        out = 2 * c.z_dim if c.encoder == "gaussian" else c.z_dim  # (μ, log σ²) or z
        self.encoder = encoder_net(c, data, out)
        self.disc = mlp(c.z_dim + self.num_labels, 1, c.disc_hidden, c.disc_depth, c.activation)
        if self.num_labels:
            self.register_buffer("prior_means", class_prior_means(self.num_labels, c.z_dim, c.prior_radius))

    # -- networks ---------------------------------------------------------------------
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A code z ~ q(z|x) (deterministic: z = E(x)), (B, *shape) -> (B, Z)."""
        h = self.encoder(x.flatten(1))
        if self.config.encoder == "deterministic":
            return h
        mu, logvar = h.chunk(2, dim=-1)
        return gaussian_posterior_sample(mu, logvar, None, generator)[0]

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x.flatten(1))
        return h if self.config.encoder == "deterministic" else h.chunk(2, dim=-1)[0]

    def one_hot(self, y: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """One-hot labels (n, K) for the conditional model, None for the unconditional one."""
        return one_hot_labels(self, y, n, self.num_labels, self.device)

    def discriminate(self, z: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, 1) of "z is a prior sample" for codes (B, Z) (with their labels when conditional)."""
        return fp32(self.disc(z if onehot is None else torch.cat([z, onehot], dim=1)))  # (B, Z + K) in; fp32 out

    def prior_sample(self, n: int, generator: torch.Generator | None = None,
                     y: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ p(z) (N(0, I)), or z ~ p(z|y) = N(μ_y, prior_std² I) when conditional: (n, Z)."""
        eps = randn((n, self.config.z_dim), generator, self.device)  # (n, Z)
        onehot = self.one_hot(y, n)
        if onehot is None:
            return eps
        return onehot @ self.prior_means + self.config.prior_std * eps  # μ_y + σ ε

    # -- the contract -----------------------------------------------------------------
    def step_groups(self) -> list[StepGroup]:
        c = self.config
        ae = list(self.encoder.parameters()) + list(self.decoder.parameters()) + list(self.obs.parameters())
        return [
            StepGroup("ae", ae, lr=c.lr, betas=c.betas),
            StepGroup("disc", list(self.disc.parameters()), lr=c.lr_disc, betas=c.betas, repeats=c.n_disc),
            StepGroup("gen", list(self.encoder.parameters()), lr=c.lr_gen, betas=c.betas),
        ]

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        x = batch.x  # (B, *shape)
        b = x.shape[0]
        onehot = self.one_hot(batch.y, b) if self.num_labels else None
        if group == "ae":
            recon = -self.log_px(x, self.encode(x)).mean()  # -E log p(x|z), z = E(x)
            return ModelOutput(recon, {"recon": recon.item()})
        if group == "disc":
            with torch.no_grad():  # the discriminator's step must not reach into the encoder
                fake = self.encode(x)  # (B, Z)
            real = self.prior_sample(b, None, batch.y if self.num_labels else None)  # (B, Z)
            real_logits, fake_logits = self.discriminate(real, onehot), self.discriminate(fake, onehot)
            loss = discriminator_loss(real_logits, fake_logits)  # -E log D(z) - E log(1 - D(E(x)))
            return ModelOutput(loss, {"disc_loss": loss.item(), "d_prior": torch.sigmoid(real_logits).mean().item(),
                                      "d_code": torch.sigmoid(fake_logits).mean().item()})
        if group == "gen":
            logits = self.discriminate(self.encode(x), onehot)  # (B, 1)
            loss = generator_loss(logits, "non_saturating")  # -E log D(E(x))
            return ModelOutput(loss, {"gen_loss": loss.item()})
        raise KeyError(f"AAE has step groups 'ae', 'disc' and 'gen', got {group!r}")

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded prior draws (n, *shape); the conditional model needs int64 labels (n,) as `condition`."""
        if not self.num_labels:
            check_unconditional(self, condition)
        elif condition is None:
            raise ValueError("AAE is conditional: pass condition= int64 labels of shape (n,)")
        return self.decode_sample(self.prior_sample(n, generator, condition), generator)
