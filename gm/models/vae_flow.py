"""VAE with normalizing flows: a flow posterior (Rezende & Mohamed 2015, planar/radial; Kingma
et al. 2016, IAF) and optionally a flow prior (a MAF, Papamakarios et al. 2017).

Posterior: z₀ ~ q₀(z₀|x) = N(μ(x), diag σ²(x)), pushed through K flow steps to z_K, with

    log q_K(z_K|x) = log q₀(z₀|x) - Σ_k log|det ∂f_k/∂z_{k-1}|      (Rezende & Mohamed 2015, Eq. 13)

so the free energy (Eq. 15) is the ELBO with the flow's log-determinant inside the KL term:

    ELBO = E_q₀ [log p(x|z_K) + log p(z_K) - log q₀(z₀|x) + Σ_k log|det ∂f_k/∂z_{k-1}|].

Planar and radial steps are amortised (their parameters are encoder outputs per data point,
Rezende & Mohamed 2015 §4.2); IAF steps are conditioned on a context h(x) from the encoder
(Kingma et al. 2016, Fig. 2). The prior p(z) is N(0, I), or N(0, I) pushed through a MAF whose
density direction z -> u is one pass, so log p(z) = log N(u; 0, I) + log|det ∂u/∂z| is exact
and `prior_sample` inverts it dimension by dimension.

Because `posterior` returns exact draws and their exact log q_K, the base class's `elbo`,
`iwae_bound` and `log_prob` are honest bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from gm.core.config import bounded
from gm.flows import FlowSequence, iaf_flows, maf_flows, planar_flows, radial_flows
from gm.models._latent import ExplicitPosteriorModel, encoder_net, gaussian_posterior_sample
from gm.models.base import Batch, Capabilities, ModelOutput, StepGroup
from gm.models.vae import VAEConfig
from gm.core.numerics import normal_log_prob, randn
from gm.core.registry import register_family

__all__ = ["VAEFlow", "VAEFlowConfig"]

PosteriorFlow = Literal["none", "planar", "radial", "iaf"]
PriorFlow = Literal["none", "maf"]


@dataclass(frozen=True)
class VAEFlowConfig(VAEConfig):
    posterior_flow: PosteriorFlow = "planar"  # Rezende & Mohamed 2015; "iaf": Kingma et al. 2016
    posterior_layers: int = bounded(4, ge=0)  # K flow steps; R&M 2015 report K from 2 up to 80, 0 = plain VAE
    amortized: bool = True  # planar/radial parameters from the encoder per data point (R&M 2015 §4.2)
    context_dim: int = bounded(16, ge=0)  # the encoder's context h fed to every IAF step (Kingma 2016); 0: none
    prior_flow: PriorFlow = "none"  # "maf": N(0, I) through a MAF, an exact learned prior density
    prior_layers: int = bounded(2, ge=0)  # MAF steps of the prior
    flow_hidden: int = bounded(64, gt=0)  # width of each MADE hidden layer (IAF posterior, MAF prior)
    flow_depth: int = bounded(2, gt=0)  # hidden layers per MADE (Kingma 2016 use two-layer MADEs)


def build_posterior_flow(c: VAEFlowConfig) -> FlowSequence:
    """The K steps of q_K(z|x); an empty (identity) sequence for "none" or K = 0."""
    hidden = (c.flow_hidden,) * c.flow_depth
    builders = {
        "none": lambda: FlowSequence(),
        "planar": lambda: planar_flows(c.z_dim, c.posterior_layers, c.amortized),
        "radial": lambda: radial_flows(c.z_dim, c.posterior_layers, c.amortized),
        "iaf": lambda: iaf_flows(c.z_dim, c.posterior_layers, hidden, c.context_dim, c.activation),
    }
    return builders[c.posterior_flow]()


def build_prior_flow(c: VAEFlowConfig) -> FlowSequence:
    """The sampling-direction flow u -> z of the prior; empty for N(0, I)."""
    if c.prior_flow == "none":
        return FlowSequence()
    return maf_flows(c.z_dim, c.prior_layers, (c.flow_hidden,) * c.flow_depth, 0, c.activation)


@register_family("vae_flow")
class VAEFlow(ExplicitPosteriorModel):
    """Gaussian VAE whose posterior q_K(z|x) (and optionally prior) is a normalizing flow;
    `log_prob` is the IWAE bound L_k (k = `iwae_k`) under the flow posterior."""

    config_cls = VAEFlowConfig
    capabilities = Capabilities(likelihood="bound", importance_weighted=True, reconstruction=True,
                                rate_distortion=True)

    def __init__(self, config: VAEFlowConfig, data):
        super().__init__(config, data)
        c = config
        self.posterior_flow = build_posterior_flow(c)
        self.prior_flow = build_prior_flow(c)
        self.n_flow_params = self.posterior_flow.param_dim
        self.n_context = self.posterior_flow.context_dim
        # -> (μ, log σ², amortised flow parameters, context h)
        self.encoder = encoder_net(c, data, 2 * c.z_dim + self.n_flow_params + self.n_context)

    def iwae_width(self) -> int:
        return max(super().iwae_width(), self.config.flow_hidden)

    def step_groups(self) -> list[StepGroup]:
        return [StepGroup("vae", list(self.parameters()), lr=self.config.lr)]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(B, *shape) -> μ, log σ² of q₀ (B, Z) each, flow params (B, P) or None, context (B, H) or None."""
        z = self.config.z_dim
        mu, logvar, params, h = self.encoder(x.flatten(1)).split(
            [z, z, self.n_flow_params, self.n_context], dim=-1)
        return mu, logvar, (params if self.n_flow_params else None), (h if self.n_context else None)

    def posterior(self, x, k=None, generator=None):
        """z_K = f_K ∘ ... ∘ f_1(z₀), z₀ ~ q₀(z|x) reparameterised, and log q_K(z_K|x) (Eq. 13):
        (B, Z), (B,) or, with k, (k, B, Z), (k, B)."""
        mu, logvar, params, h = self.encode(x)
        z0, log_q0 = gaussian_posterior_sample(mu, logvar, k, generator)  # (.., B, Z), (.., B)
        z, log_det = self.posterior_flow(z0, h, params)  # params and h broadcast over the k draws
        return z, log_q0 - log_det

    def encode_mean(self, x):
        """The flow applied to q₀'s mean: (B, Z)."""
        mu, _, params, h = self.encode(x)
        return self.posterior_flow(mu, h, params)[0]

    def prior_log_prob(self, z):
        """log p(z) = log N(u; 0, I) + log|det ∂u/∂z|, u the prior flow's inverse of z: (..., Z) -> (...)."""
        u, log_det = self.prior_flow.inverse(z)
        return normal_log_prob(u).sum(-1) + log_det

    def prior_sample(self, n, generator=None):
        u = randn((n, self.config.z_dim), generator, self.device)  # (n, Z)
        return self.prior_flow(u)[0]

    def recon_and_kl(self, x: torch.Tensor, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sample -log p(x|z_K) and the Monte Carlo KL log q_K(z_K|x) - log p(z_K), z_K ~ q_K;
        each (B,). No closed form under a flow, so the KL is a one-sample estimate."""
        z, log_q = self.posterior(x, None, generator)  # (B, Z), (B,)
        return -self.log_px(x, z), log_q - self.prior_log_prob(z)

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        """-log p(x|z_K) + β·(log q_K(z_K|x) - log p(z_K)), batch means, z_K ~ q_K."""
        if group != "vae":
            raise KeyError(f"VAEFlow has the single step group 'vae', got {group!r}")
        recon, kl = self.recon_and_kl(batch.x)
        return self.beta_elbo_output(recon.mean(), kl.mean())
