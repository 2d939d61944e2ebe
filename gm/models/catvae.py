"""Categorical VAE with the Gumbel-softmax (Jang et al. 2017) / Concrete (Maddison et al. 2017)
relaxation.

The latent is `n_latent` independent categorical variables of `n_categories` categories;
the decoder reads their one-hot codes flattened to (N·K,). Training replaces each one-hot
draw by the relaxed sample

    y = softmax((log π + g) / τ),  g ~ Gumbel(0, 1)                     (Jang et al. 2017, Eq. 2)

with τ annealed as τ = max(τ_min, τ_start·exp(-r·t)) over optimizer steps t, optionally
straight-through (a hard one-hot forward, the relaxed gradient; Jang et al. 2017 §2.2).
The KL to the uniform prior is analytic: Σ_n Σ_k q_nk log q_nk + N log K.

Evaluation needs no relaxation: `posterior` draws exact one-hot codes by Gumbel-max
(argmax(log π + g) ~ Cat(π), Jang et al. 2017 Eq. 1) with their exact log q(z|x), and
log p(z) = -N log K, so the inherited `elbo`, `iwae_bound` and `log_prob` are honest bounds
of a model with a discrete latent (p(x) = Σ_z p(x|z) p(z)).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gm.core.config import ConfigError, bounded
from gm.models._latent import ExplicitPosteriorModel, LatentConfig, encoder_net
from gm.models.base import Batch, ModelOutput, StepGroup
from gm.core.numerics import rand
from gm.core.registry import register_family

__all__ = ["CatVAE", "CatVAEConfig", "categorical_kl_to_uniform", "gumbel_noise", "gumbel_softmax"]


@dataclass(frozen=True)
class CatVAEConfig(LatentConfig):
    # The decoder's input, the flattened one-hot codes: n_latent·n_categories, filled in by the
    # model. Left out (None) in params, so tuning n_latent or n_categories never meets a stale
    # value; a value given that disagrees is an error rather than silently ignored.
    z_dim: int | None = bounded(None, gt=0)
    n_latent: int = bounded(30, gt=0)  # categorical variables N (Jang et al.'s reference code: 30 × 10)
    n_categories: int = bounded(10, gt=1)  # categories K per variable
    tau_start: float = bounded(1.0, gt=0)  # Jang et al. 2017: τ = max(0.5, exp(-r·t))
    tau_min: float = bounded(0.5, gt=0)
    anneal_rate: float = bounded(3e-5, ge=0)  # r per optimizer step (Jang et al. try r in 1e-5..1e-4)
    straight_through: bool = False  # hard one-hot forward, relaxed backward (ST Gumbel-softmax)
    beta: float = bounded(1.0, ge=0)  # weight of the KL to the uniform prior; 1 is the (relaxed) ELBO

    @property
    def code_dim(self) -> int:
        """N·K, the length of the flattened one-hot codes."""
        return self.n_latent * self.n_categories

    def validate(self):
        if self.z_dim is not None and self.z_dim != self.code_dim:
            raise ConfigError(f"z_dim: expected n_latent·n_categories = {self.code_dim} (or leave it out), "
                              f"got {self.z_dim}")
        if self.tau_min > self.tau_start:
            raise ConfigError(f"tau_min: expected a value <= tau_start ({self.tau_start}), got {self.tau_min}")


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Standard Gumbel noise g = -log(-log U), U ~ U(0, 1) kept away from 0."""
    u = rand(shape, generator, device).clamp_min(torch.finfo(torch.float32).tiny)
    return -torch.log(-torch.log(u))


def gumbel_softmax(logits: torch.Tensor, tau: torch.Tensor | float, hard: bool = False,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A relaxed one-hot sample softmax((logits + g)/τ) over the last dim (Jang et al. 2017, Eq. 2).

    `hard`: the one-hot of its argmax in the forward pass with the relaxed sample's gradient
    (straight-through); the forward value is exactly one-hot since the added term is y - y = 0.
    """
    y = F.softmax((logits + gumbel_noise(logits.shape, generator, logits.device)) / tau, dim=-1)
    if not hard:
        return y
    y_hard = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return y_hard + (y - y.detach())


def categorical_kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(Cat(softmax(logits)) ‖ Uniform(K)) = Σ_k q_k log q_k + log K, summed over the
    variables: (..., N, K) -> (...)."""
    log_q = F.log_softmax(logits, dim=-1)
    k = logits.shape[-1]
    return ((log_q.exp() * log_q).sum(-1) + math.log(k)).sum(-1)


@register_family("catvae")
class CatVAE(ExplicitPosteriorModel):
    """VAE with N K-way categorical latents trained through the Gumbel-softmax relaxation;
    `log_prob` is the IWAE bound with exact discrete posterior samples."""

    config_cls = CatVAEConfig

    def __init__(self, config: CatVAEConfig, data):
        # The base reads z_dim (decoder input, IWAE chunk width): make it N·K. The filled-in
        # config is what checkpoints store, and it validates as given.
        config = dataclasses.replace(config, z_dim=config.code_dim)
        super().__init__(config, data)  # decoder: mlp(N·K -> observation params)
        self.encoder = encoder_net(config, data, config.code_dim)  # -> logits (B, N·K)
        # Optimizer steps taken, for the temperature schedule; a buffer, so checkpoints keep it.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def step_groups(self) -> list[StepGroup]:
        return [StepGroup("vae", list(self.parameters()), lr=self.config.lr)]

    def after_step(self, group: str) -> None:
        super().after_step(group)
        self.step += 1

    def temperature(self) -> torch.Tensor:
        """τ = max(τ_min, τ_start·exp(-r·step)), a 0-dim tensor."""
        c = self.config
        return (c.tau_start * torch.exp(-c.anneal_rate * self.step.float())).clamp_min(c.tau_min)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *shape) -> unnormalised log q(z|x) per variable: (B, N, K)."""
        return self.encoder(x.flatten(1)).unflatten(-1, (self.config.n_latent, self.config.n_categories))

    def _one_hot(self, index: torch.Tensor) -> torch.Tensor:
        """Category indices (..., N) -> flattened one-hot codes (..., N·K)."""
        return F.one_hot(index, self.config.n_categories).float().flatten(-2)

    def posterior(self, x, k=None, generator=None):
        """Exact one-hot draws z ~ q(z|x) by Gumbel-max and log q(z|x) (not reparameterised):
        (B, N·K), (B,) or, with k, (k, B, N·K), (k, B)."""
        log_q = F.log_softmax(self.logits(x), dim=-1)  # (B, N, K)
        shape = log_q.shape if k is None else (k, *log_q.shape)
        index = (log_q + gumbel_noise(shape, generator, log_q.device)).argmax(-1)  # (.., B, N)
        log_q_z = log_q.expand(shape).gather(-1, index.unsqueeze(-1)).squeeze(-1).sum(-1)  # (.., B)
        return self._one_hot(index), log_q_z

    def prior_log_prob(self, z):
        """log p(z) = -N log K, the uniform mass of any one-hot code: (..., N·K) -> (...)."""
        c = self.config
        return torch.full(z.shape[:-1], -c.n_latent * math.log(c.n_categories), dtype=z.dtype, device=z.device)

    def prior_sample(self, n, generator=None):
        c = self.config
        u = rand((n, c.n_latent), generator, self.device)  # (n, N)
        index = (u * c.n_categories).long().clamp_max(c.n_categories - 1)
        return self._one_hot(index)  # (n, N·K)

    def encode_mean(self, x):
        """The posterior mode's one-hot code: (B, N·K)."""
        return self._one_hot(self.logits(x).argmax(-1))

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        """-log p(x|y) at a relaxed sample y (straight-through if configured) + β·KL(q ‖ uniform)."""
        if group != "vae":
            raise KeyError(f"CatVAE has the single step group 'vae', got {group!r}")
        logits = self.logits(batch.x)  # (B, N, K)
        tau = self.temperature()
        y = gumbel_softmax(logits, tau, self.config.straight_through)  # (B, N, K)
        recon = -self.log_px(batch.x, y.flatten(-2)).mean()
        kl = categorical_kl_to_uniform(logits).mean()
        loss = recon + self.config.beta * kl
        logs = {"loss": loss.item(), "recon": recon.item(), "kl": kl.item(),
                "relaxed_elbo": -(recon + kl).item(), "tau": tau.item()}
        if hasattr(self.obs, "log_std"):
            logs["decoder_log_std"] = self.obs.floored_log_std().mean().item()
        return ModelOutput(loss, logs)
