"""The shared latent-variable base: an encoder, a decoder with an observation head, a prior, and
the importance-weighted bound for every family whose posterior q(z|x) has a density.

A family (vae.py, and the other encoder-decoder families) subclasses `LatentVariableModel`
with its config (a subclass of `LatentConfig`) and implements `loss`; it reconstructs through
`encode_mean`. Families with an explicit q(z|x) subclass `ExplicitPosteriorModel` instead and
implement `posterior` (k reparameterised draws with their log q); they inherit `elbo`,
`iwae_bound` and `log_prob` (the bound L_k, Burda et al. 2015, whose k evaluation raises), so
their test NLL is an honest upper bound. Families whose encoder has no density (AAE, WAE,
AVB's implicit encoder) have no likelihood.

Shapes: x (B, *shape) model space; z (B, Z) or (k, B, Z) for k draws per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gm.core.config import bounded
from gm.data.dataspec import DataSpec
from gm.models.base import Capabilities, GenerativeModel, ModelOutput
from gm.nn.mlp import Activation, check_unconditional, clamp_to_model_space, mlp
from gm.core.numerics import normal_log_prob, randn
from gm.nn.observation import ObservationName, make_observation
from gm.nn.precision import fp32

# Elements per tensor in one IWAE chunk (samples × rows × width): ~16 MB in float32.
IWAE_CHUNK_ELEMENTS = 1 << 22


def log_mean_exp_draws(log_weights, k: int, rows: int, width: int, device,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log (1/k) Σ_i exp(w_i) per row over k importance draws, (rows,): `log_weights(n)` draws n
    of them, (n, rows). Drawn in chunks of at most IWAE_CHUNK_ELEMENTS / (rows · width) draws
    (width: the widest activation per row and draw) and combined by a running log-sum-exp, so
    large k neither overflows memory nor underflows."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    chunk = max(1, min(k, IWAE_CHUNK_ELEMENTS // max(1, rows * width)))
    total = torch.full((rows,), -math.inf, dtype=dtype, device=device)
    for start in range(0, k, chunk):  # fp32 (or wider) under autocast: an fp32 island
        total = torch.logaddexp(total, torch.logsumexp(fp32(log_weights(min(chunk, k - start))), dim=0))
    return total - math.log(k)


@dataclass(frozen=True)
class LatentConfig:
    z_dim: int = bounded(8, gt=0)  # latent dimension; WAE/Burda-style MNIST models use 8-50
    hidden: int = bounded(256, gt=0)
    depth: int = bounded(2, gt=0)  # hidden layers in encoder and decoder (Burda 2015: 2 deterministic layers)
    activation: Activation = "relu"
    lr: float = bounded(1e-3, gt=0)  # Burda 2015, §5: Adam, initial lr 1e-3
    decoder: ObservationName = "gaussian"  # p(x|z); discrete data: logistic or categorical give exact bits/dim
    decoder_components: int = bounded(1, gt=0)  # logistic mixture components per dimension
    min_log_std: float = -7.0  # floor of the Gaussian decoder's log σ: on toys σ would otherwise shrink without end
    iwae_k: int = bounded(64, gt=0)  # importance samples for log_prob (Burda 2015 report k = 5000 for tight numbers)
    sample_noise: bool = True  # sample x ~ p(x|z); False returns the decoder's mean (pythae's convention)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(μ, exp(logvar)) ‖ N(0, 1)) in nats (Kingma & Welling 2014, App. B); fp32
    under autocast."""
    mu, logvar = fp32(mu), fp32(logvar)
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_posterior_sample(mu: torch.Tensor, logvar: torch.Tensor, k: int | None = None,
                              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised z = μ + σ ε and log N(z; μ, σ²) summed over Z.

    mu, logvar (B, Z); k None gives z (B, Z) and log q (B,), else (k, B, Z) and (k, B). In fp32
    under autocast (the code and its density are likelihood terms).
    """
    mu, logvar = fp32(mu), fp32(logvar)
    shape = mu.shape if k is None else (k, *mu.shape)
    eps = randn(shape, generator, mu.device)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_q = (normal_log_prob(eps) - 0.5 * logvar).sum(-1)  # N(z; μ, σ²) via ε: the Jacobian is 1/σ
    return z, log_q


class LatentVariableModel(GenerativeModel):
    """Decoder z -> params of p(x|z) (an `Observation` head), a prior p(z) (N(0, I) unless overridden)."""

    capabilities = Capabilities(reconstruction=True)

    def __init__(self, config: LatentConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        self.obs = make_observation(c.decoder, data, c.min_log_std, c.decoder_components)
        self.decoder = mlp(c.z_dim, data.dim * self.obs.params_per_dim, c.hidden, c.depth, c.activation)

    # -- pieces subclasses may override ---------------------------------------------------
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., Z) -> the observation's params (..., D·P)."""
        return self.decoder(z)

    def log_px(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over dims; x (B, *shape), z (..., B, Z) -> (..., B)."""
        return self.obs.log_prob(self.decode(z), x.flatten(1))

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) summed over Z: (..., Z) -> (...)."""
        return normal_log_prob(fp32(z)).sum(-1)

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return randn((n, self.config.z_dim), generator, self.device)  # (n, Z)

    def after_step(self, group: str) -> None:
        self.obs.after_step()

    def beta_elbo_output(self, recon: torch.Tensor, kl: torch.Tensor, **extra: float) -> ModelOutput:
        """The β-weighted loss recon + β·KL of batch means, logged with the β = 1 ELBO (whatever β trains)."""
        loss = recon + self.config.beta * kl
        logs = {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach(), "elbo": -(recon + kl).detach(),
                **extra}
        if hasattr(self.obs, "log_std"):
            logs["decoder_log_std"] = self.obs.floored_log_std().mean().detach()
        return ModelOutput(loss, logs)

    # -- the contract -------------------------------------------------------------------------
    def decode_sample(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x ~ p(x|z) (or its mean without `sample_noise`), clamped to model space: (n, *shape)."""
        params = self.decode(z)
        x = self.obs.sample(params, generator) if self.config.sample_noise else self.obs.mean(params)
        return clamp_to_model_space(x, self.data).view(z.shape[0], *self.data.shape)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        check_unconditional(self, condition)
        return self.decode_sample(self.prior_sample(n, generator), generator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at the posterior mean code (or the encoder's code): (B, *shape)."""
        z = self.encode_mean(x)
        return clamp_to_model_space(self.obs.mean(self.decode(z)), self.data).view(x.shape)

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """A point code for x (B, Z): the posterior mean, or a deterministic encoder's output."""
        raise NotImplementedError


class ExplicitPosteriorModel(LatentVariableModel):
    """A latent-variable family whose posterior q(z|x) has a density: `log_prob` is the IWAE bound."""

    capabilities = Capabilities(likelihood="bound", importance_weighted=True, reconstruction=True)

    def posterior(self, x: torch.Tensor, k: int | None = None,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised z ~ q(z|x) and log q(z|x): (B, Z), (B,) or, with k, (k, B, Z), (k, B)."""
        raise NotImplementedError(f"{type(self).__name__} has no explicit posterior density")

    def iwae_width(self) -> int:
        """The widest per-draw activation of one bound evaluation (sizes the IWAE chunks)."""
        return max(self.data.dim * self.obs.params_per_dim, self.config.hidden, self.config.z_dim)

    # -- bounds -----------------------------------------------------------------------------
    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One-sample ELBO log p(x|z) + log p(z) - log q(z|x), z ~ q(z|x), per row: (B,)."""
        z, log_q = self.posterior(x, None, generator)
        return self.log_px(x, z) + self.prior_log_prob(z) - log_q

    def iwae_bound(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-row IWAE bound L_k = log (1/k) Σ_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x) (Burda 2015).

        (B, *shape) -> (B,) nats. The k samples are drawn in chunks sized to bound memory and
        combined with a running log-sum-exp, so large k neither overflows nor underflows.
        """
        def log_weights(n: int) -> torch.Tensor:
            z, log_q = self.posterior(x, n, generator)  # (n, B, Z), (n, B)
            return self.log_px(x, z) + self.prior_log_prob(z) - log_q  # (n, B)

        return log_mean_exp_draws(log_weights, k, x.shape[0], self.iwae_width(), x.device)

    # -- the contract -------------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """The IWAE bound L_k (k = `iwae_k`) per row, in nats; a stochastic lower bound on log p(x)."""
        check_unconditional(self, condition)
        return self.iwae_bound(x, self.config.iwae_k)

    def with_importance_samples(self, k: int) -> "ExplicitPosteriorModel":
        return self.with_config(iwae_k=k)


def encoder_net(config: LatentConfig, data: DataSpec, out_dim: int, extra_in: int = 0) -> nn.Sequential:
    """The MLP encoder: flattened x (plus `extra_in` inputs, e.g. AVB's noise) -> out_dim."""
    return mlp(data.dim + extra_in, out_dim, config.hidden, config.depth, config.activation)
