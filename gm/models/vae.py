"""VAE (Kingma & Welling 2014) with a β-weighted KL (Higgins et al. 2017) and the IWAE bound
(Burda et al. 2015) as its log-likelihood.

Encoder q(z|x) = N(μ(x), diag σ²(x)); prior p(z) = N(0, I); decoder p(x|z) one of the
observation heads of `gm.nn.observation`: Gaussian (a learned per-dimension log-std, floored
at `min_log_std`), or for discrete data Bernoulli, categorical or a discretized logistic
mixture, whose bits/dim are exact code lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gm.core.config import bounded
from gm.models._latent import (
    ExplicitPosteriorModel,
    LatentConfig,
    encoder_net,
    gaussian_kl,
    gaussian_posterior_sample,
)
from gm.models.base import Batch, Capabilities, ModelOutput, StepGroup
from gm.core.registry import register_family

__all__ = ["VAE", "VAEConfig", "gaussian_kl"]


@dataclass(frozen=True)
class VAEConfig(LatentConfig):
    beta: float = bounded(1.0, ge=0)  # β-VAE (Higgins 2017); β = 1 is the ELBO of Kingma & Welling 2014


@register_family("vae")
class VAE(ExplicitPosteriorModel):
    """Gaussian-posterior VAE on flattened vectors; `log_prob` is the IWAE bound L_k with k = `iwae_k`."""

    config_cls = VAEConfig
    capabilities = Capabilities(likelihood="bound", importance_weighted=True, reconstruction=True,
                                rate_distortion=True)

    def __init__(self, config: VAEConfig, data):
        super().__init__(config, data)
        self.encoder = encoder_net(config, data, 2 * config.z_dim)  # -> (μ, log σ²)

    def step_groups(self) -> list[StepGroup]:
        return [StepGroup("vae", list(self.parameters()), lr=self.config.lr)]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, *shape) -> μ, log σ² of q(z|x), each (B, Z)."""
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=-1)
        return mu, logvar

    def encode_mean(self, x):
        return self.encode(x)[0]

    def posterior(self, x, k=None, generator=None):
        return gaussian_posterior_sample(*self.encode(x), k, generator)

    def recon_and_kl(self, x: torch.Tensor, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sample -log p(x|z), z ~ q(z|x) (reparameterised), and the analytic KL; each (B,)."""
        mu, logvar = self.encode(x)  # (B, Z)
        z, _ = gaussian_posterior_sample(mu, logvar, None, generator)
        return -self.log_px(x, z), gaussian_kl(mu, logvar).sum(-1)

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-row ELBO E_q log p(x|z) - KL(q(z|x) ‖ p(z)) with the KL in closed form; (B,)."""
        recon, kl = self.recon_and_kl(x, generator)
        return -(recon + kl)

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        if group != "vae":
            raise KeyError(f"VAE has the single step group 'vae', got {group!r}")
        recon, kl = self.recon_and_kl(batch.x)
        return self.beta_elbo_output(recon.mean(), kl.mean())
