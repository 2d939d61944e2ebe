"""VAE (Kingma & Welling 2014) with a β-weighted KL (Higgins et al. 2017) and the IWAE bound
(Burda et al. 2015) as its log-likelihood.

Encoder q(z|x) = N(μ(x), diag σ²(x)); prior p(z) = N(0, I); decoder p(x|z) = N(m(z), diag s²)
with a learned per-dimension log-std s (not a function of z), floored at `min_log_std`.
All densities are continuous densities in model space, summed over every dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gm.config import spec
from gm.data.spec import DataSpec
from gm.models.base import Batch, GenerativeModel, ModelOutput, StepGroup
from gm.nn.mlp import Activation, check_unconditional, clamp_to_model_space, mlp, normal_log_prob, randn
from gm.registry import register_model

# Elements per tensor in one IWAE chunk (samples × rows × width): ~16 MB in float32.
_IWAE_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class VAEConfig:
    z_dim: int = spec(8, gt=0)  # latent dimension; WAE/Burda-style MNIST models use 8-50
    hidden: int = spec(256, gt=0)
    depth: int = spec(2, gt=0)  # hidden layers in encoder and decoder (Burda 2015: 2 deterministic layers)
    activation: Activation = "relu"
    beta: float = spec(1.0, ge=0)  # β-VAE (Higgins 2017); β = 1 is the ELBO of Kingma & Welling 2014
    lr: float = spec(1e-3, gt=0)  # Burda 2015, §5: Adam, initial lr 1e-3
    min_log_std: float = -7.0  # floor of the decoder's log σ: on toys σ would otherwise shrink without end
    iwae_k: int = spec(64, gt=0)  # importance samples for log_prob (Burda 2015 report k = 5000 for tight numbers)
    sample_noise: bool = True  # sample = m(z) + s·ε; the mean alone (pythae's convention) collapses toys onto a curve


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(μ, exp(logvar)) ‖ N(0, 1)) in nats (Kingma & Welling 2014, App. B)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


@register_model("vae")
class VAE(GenerativeModel):
    """Gaussian VAE on flattened vectors; `log_prob` is the IWAE bound L_k with k = `iwae_k`."""

    config_cls = VAEConfig
    likelihood = "bound"

    def __init__(self, config: VAEConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        self.encoder = mlp(data.dim, 2 * c.z_dim, c.hidden, c.depth, c.activation)  # -> (μ, log σ²)
        self.decoder = mlp(c.z_dim, data.dim, c.hidden, c.depth, c.activation)  # -> decoder mean
        self.log_std = nn.Parameter(torch.zeros(data.dim))  # (D,) decoder log σ, shared over z

    # -- pieces ---------------------------------------------------------------------
    def step_groups(self) -> list[StepGroup]:
        return [StepGroup("vae", list(self.parameters()), lr=self.config.lr)]

    def after_step(self, group: str) -> None:
        # Project rather than clamp in the forward pass alone: a clamped forward has zero
        # gradient below the floor, so a parameter that crossed it could never come back.
        with torch.no_grad():
            self.log_std.clamp_(min=self.config.min_log_std)

    def decoder_log_std(self) -> torch.Tensor:
        """The decoder's per-dimension log σ, floored at `min_log_std`; shape (D,)."""
        return self.log_std.clamp(min=self.config.min_log_std)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, *shape) -> μ, log σ² of q(z|x), each (B, Z)."""
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=-1)
        return mu, logvar

    def log_likelihood(self, x_flat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over dims; x_flat (B, D), z (..., B, Z) -> (..., B)."""
        mean = self.decoder(z)  # (..., B, D)
        return normal_log_prob(x_flat, mean, self.decoder_log_std()).sum(-1)

    def _recon_and_kl(self, x: torch.Tensor, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sample -log p(x|z), z ~ q(z|x) (reparameterised), and the analytic KL; each (B,)."""
        mu, logvar = self.encode(x)  # (B, Z)
        z = mu + torch.exp(0.5 * logvar) * randn(mu.shape, generator, mu.device)  # (B, Z)
        recon = -self.log_likelihood(x.flatten(1), z)  # (B,)
        kl = gaussian_kl(mu, logvar).sum(-1)  # (B,)
        return recon, kl

    # -- bounds -----------------------------------------------------------------------
    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-row ELBO E_q log p(x|z) - KL(q(z|x) ‖ p(z)), one-sample estimate; (B, *shape) -> (B,)."""
        recon, kl = self._recon_and_kl(x, generator)
        return -(recon + kl)

    def iwae_bound(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-row IWAE bound L_k = log (1/k) Σ_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x) (Burda 2015).

        (B, *shape) -> (B,) nats. The k samples are drawn in chunks sized to bound memory, and
        combined with a running log-sum-exp so large k neither overflows nor underflows.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        x_flat = x.flatten(1)  # (B, D)
        b = x_flat.shape[0]
        mu, logvar = self.encode(x)  # (B, Z)
        std = torch.exp(0.5 * logvar)
        width = max(self.data.dim, self.config.hidden, self.config.z_dim)
        chunk = max(1, min(k, _IWAE_CHUNK_ELEMENTS // max(1, b * width)))
        total = torch.full((b,), -math.inf, dtype=x_flat.dtype, device=x_flat.device)
        for start in range(0, k, chunk):
            kc = min(chunk, k - start)
            eps = randn((kc, b, self.config.z_dim), generator, mu.device)  # (kc, B, Z)
            z = mu + std * eps  # (kc, B, Z)
            log_q = normal_log_prob(eps).sum(-1) - 0.5 * logvar.sum(-1)  # (kc, B): N(z; μ, σ²) via ε
            log_prior = normal_log_prob(z).sum(-1)  # (kc, B)
            log_w = self.log_likelihood(x_flat, z) + log_prior - log_q  # (kc, B)
            total = torch.logaddexp(total, torch.logsumexp(log_w, dim=0))
        return total - math.log(k)

    # -- the contract -------------------------------------------------------------------
    def loss(self, batch: Batch, group: str) -> ModelOutput:
        if group != "vae":
            raise KeyError(f"VAE has the single step group 'vae', got {group!r}")
        recon, kl = self._recon_and_kl(batch.x)
        recon, kl = recon.mean(), kl.mean()
        loss = recon + self.config.beta * kl
        return ModelOutput(loss, {
            "loss": loss.item(),
            "recon": recon.item(),
            "kl": kl.item(),
            "elbo": -(recon + kl).item(),  # the β = 1 bound, whatever β trains
            "decoder_log_std": self.decoder_log_std().mean().item(),
        })

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """The IWAE bound L_k (k = `iwae_k`) per row, in nats; a stochastic lower bound on log p(x)."""
        check_unconditional(self, condition)
        return self.iwae_bound(x, self.config.iwae_k)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ N(0, I), then the decoder mean m(z), plus s·ε when `sample_noise` (the default).

        With `sample_noise` off this is pythae's convention (the mean only). Discrete data is
        clamped into [-1, 1), the model space of `DataSpec`.
        """
        check_unconditional(self, condition)
        z = randn((n, self.config.z_dim), generator, self.device)  # (n, Z)
        x = self.decoder(z)  # (n, D)
        if self.config.sample_noise:
            x = x + self.decoder_log_std().exp() * randn(x.shape, generator, self.device)
        return clamp_to_model_space(x, self.data).view(n, *self.data.shape)
