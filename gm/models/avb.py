"""Adversarial Variational Bayes (Mescheder et al. 2017): a VAE whose encoder is implicit,
z = E(x, ε) with ε ~ N(0, I) as an extra input, so q(z|x) can take any shape.

The ELBO's KL needs log q(z|x), which an implicit encoder lacks. AVB estimates the log
density ratio with a discriminator T(x, z) trained by logistic regression to tell
(x, z ~ q(z|x)) from (x, z ~ p(z)) (the density-ratio trick, §3):

    max_T  E_{p_D(x)} [ E_{q(z|x)} log σ(T(x, z)) + E_{p(z)} log(1 - σ(T(x, z))) ]       (Eq. 3)

whose optimum is T*(x, z) = log q(z|x) - log p(z) (Prop. 1). Encoder and decoder then
maximise the ELBO with T in place of the log ratio (Algorithm 1):

    E_{p_D(x)} E_ε [ -T(x, z) + log p(x|z) ],  z = E(x, ε).

Adaptive contrast (the paper's "Adaptive Contrast" section) makes the discriminator's task
easier: with μ(x), σ(x) the mean and std of q(z|x) (estimated from `ac_samples` encoder
draws per x) and the Gaussian r_α(z|x) = N(μ(x), σ²(x)), the ELBO is rewritten as

    E_{p_D(x)} [ -KL(r_α(z|x) ‖ p(z)) + E_q ( -T(x, z̃) + log p(x|z) ) ],  z̃ = (z - μ(x)) / σ(x),

where the KL is analytic and T is trained to tell z̃ from N(0, I) samples, so that
T* = log q̃(z̃|x) - log N(z̃; 0, I) = log q(z|x) - log r_α(z|x).

T is an estimate, not a bound, so AVB reports no likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gm.core.config import bounded
from gm.data.dataspec import DataSpec
from gm.models._latent import LatentConfig, LatentVariableModel, encoder_net, gaussian_kl
from gm.models.base import Batch, ModelOutput, StepGroup
from gm.models.gan import discriminator_loss
from gm.nn.mlp import mlp
from gm.nn.precision import fp32
from gm.core.numerics import randn
from gm.core.registry import register_family

__all__ = ["AVB", "AVBConfig", "density_ratio_loss"]

AC_VAR_FLOOR = 1e-4  # added to the estimated variance of q(z|x) before normalising (the authors' code)


@dataclass(frozen=True)
class AVBConfig(LatentConfig):
    noise_dim: int = bounded(8, gt=0)  # dimension of ε, the implicit encoder's noise input (our choice)
    disc_hidden: int = bounded(256, gt=0)  # MLP width of T(x, z)
    disc_depth: int = bounded(2, gt=0)  # hidden layers of T(x, z)
    lr_disc: float = bounded(1e-3, gt=0)  # our choice: T must track T* as fast as the encoder moves
    betas: tuple[float, float] = bounded((0.5, 0.999), ge=0, lt=1)  # the authors' code: Adam β1 = 0.5
    n_disc: int = bounded(1, gt=0)  # T steps per encoder/decoder step (Algorithm 1: one)
    adaptive_contrast: bool = False  # Mescheder 2017: contrast q(z|x) with a moment-matched Gaussian
    ac_samples: int = bounded(8, ge=2)  # encoder draws per x that estimate μ(x), σ(x) (adaptive contrast)


def density_ratio_loss(logits_num: torch.Tensor, logits_den: torch.Tensor) -> torch.Tensor:
    """Logistic loss of T on samples of a numerator density q (label 1) and a denominator p (label 0).

    -E_q log σ(T) - E_p log(1 - σ(T)) (the negative of Mescheder et al.'s Eq. 3); over all
    functions its minimiser is T* = log q - log p (Prop. 1), the log density ratio.
    """
    return discriminator_loss(logits_num, logits_den)


@register_family("avb")
class AVB(LatentVariableModel):
    """Implicit encoder z = E(x, ε), decoder p(x|z), discriminator T(x, z) -> log q(z|x) / p(z) estimate.

    Step groups: "disc" (T, `n_disc` times), then "ae" (encoder + decoder on the AVB ELBO).
    """

    config_cls = AVBConfig

    def __init__(self, config: AVBConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        self.encoder = encoder_net(c, data, c.z_dim, extra_in=c.noise_dim)  # (x, ε) -> z
        self.disc = mlp(data.dim + c.z_dim, 1, c.disc_hidden, c.disc_depth, c.activation)  # T(x, z)

    # -- networks -----------------------------------------------------------------------
    def encoder_samples(self, x: torch.Tensor, k: int | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """z = E(x, ε), ε ~ N(0, I): (B, Z), or (k, B, Z) for k draws per row."""
        xf = x.flatten(1)  # (B, D)
        if k is not None:
            xf = xf.expand(k, *xf.shape)  # (k, B, D)
        eps = randn((*xf.shape[:-1], self.config.noise_dim), generator, x.device)  # (..., B, E)
        return self.encoder(torch.cat([xf, eps], dim=-1))

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """E(x, 0): the code at the noise's mode, a deterministic point code (B, Z)."""
        xf = x.flatten(1)
        return self.encoder(torch.cat([xf, xf.new_zeros(xf.shape[0], self.config.noise_dim)], dim=-1))

    def ratio(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """T(x, z) for x (B, *shape) and z (..., B, Z): (..., B)."""
        xf = x.flatten(1).expand(*z.shape[:-1], -1)  # (..., B, D)
        return fp32(self.disc(torch.cat([xf, z], dim=-1))).squeeze(-1)  # fp32 under autocast

    def normalised_samples(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Adaptive contrast's pieces: z (m, B, Z) ~ q(z|x), μ(x), σ²(x) (B, Z) from them, z̃ = (z - μ) / σ."""
        z = self.encoder_samples(x, self.config.ac_samples)  # (m, B, Z)
        mu = z.mean(0)  # (B, Z)
        var = z.var(0, unbiased=False) + AC_VAR_FLOOR  # (B, Z)
        return z, mu, var, (z - mu) / var.sqrt()

    # -- the contract -------------------------------------------------------------------
    def step_groups(self) -> list[StepGroup]:
        c = self.config
        ae = list(self.encoder.parameters()) + list(self.decoder.parameters()) + list(self.obs.parameters())
        return [
            StepGroup("disc", list(self.disc.parameters()), lr=c.lr_disc, betas=c.betas, repeats=c.n_disc),
            StepGroup("ae", ae, lr=c.lr, betas=c.betas),
        ]

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        x = batch.x  # (B, *shape)
        if group == "disc":
            return self._disc_loss(x)
        if group == "ae":
            return self._ae_loss(x)
        raise KeyError(f"AVB has step groups 'disc' and 'ae', got {group!r}")

    def _disc_loss(self, x: torch.Tensor) -> ModelOutput:
        """Eq. 3: T against (x, z ~ q(z|x)) vs (x, z ~ p(z)); with adaptive contrast z̃ vs N(0, I)."""
        with torch.no_grad():  # T's step must not reach into the encoder
            if self.config.adaptive_contrast:
                z_q = self.normalised_samples(x)[3]  # z̃ (m, B, Z)
            else:
                z_q = self.encoder_samples(x)  # (B, Z)
        z_p = randn(z_q.shape, None, x.device)  # p(z) = N(0, I), or r_0 = N(0, I) for z̃
        t_q, t_p = self.ratio(x, z_q), self.ratio(x, z_p)
        loss = density_ratio_loss(t_q, t_p)
        return ModelOutput(loss, {"disc_loss": loss.item(), "d_posterior": torch.sigmoid(t_q).mean().item(),
                                  "d_prior": torch.sigmoid(t_p).mean().item()})

    def _ae_loss(self, x: torch.Tensor) -> ModelOutput:
        """The negative AVB ELBO: E[T(x, z) - log p(x|z)] (Algorithm 1), or its adaptive-contrast form."""
        if self.config.adaptive_contrast:
            z, mu, var, z_norm = self.normalised_samples(x)  # (m, B, Z), (B, Z), (B, Z), (m, B, Z)
            recon = -self.log_px(x, z).mean()  # -E_q log p(x|z) over m·B draws
            t = self.ratio(x, z_norm).mean()  # ≈ KL(q(z|x) ‖ r_α(z|x))
            kl_r = gaussian_kl(mu, var.log()).sum(-1).mean()  # KL(r_α(z|x) ‖ p(z)), analytic
            loss = recon + t + kl_r
            logs = {"recon": recon.item(), "t": t.item(), "kl_r": kl_r.item()}
        else:
            z = self.encoder_samples(x)  # (B, Z)
            recon = -self.log_px(x, z).mean()
            t = self.ratio(x, z).mean()  # ≈ KL(q(z|x) ‖ p(z))
            loss = recon + t
            logs = {"recon": recon.item(), "t": t.item()}
        return ModelOutput(loss, {"loss": loss.item(), "elbo_estimate": -loss.item(), **logs})
