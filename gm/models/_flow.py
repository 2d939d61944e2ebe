"""The shared base of the normalizing-flow density families (NICE, Glow, MAF, IAF, planar).

A family builds its invertible map and, where it is not a `gm.flows` sequence in `self.flow`,
overrides `forward_and_logdet` (data -> latent, the density direction) and `inverse`
(latent -> data, the sampling direction). The base supplies the rest of the contract from the
change of variables log p(x) = log p_Z(z) + log|det ∂z/∂x|: the log-likelihood, the
maximum-likelihood loss (one step group, "flow") and sampling through the inverse.

Discrete data is dequantized as the config's `dequantization` says (`gm.flows.dequantization`,
whose fields every flow config inherits): uniformly (the pipeline's noise, log p(x) exact), or
by a jointly trained q(u | v), which the base builds as `self.dequantizer`. Then the model's
likelihood is "bound": `log_prob` is the importance-weighted bound L_k (k = `iwae_k`), the loss
is -L_1 (the ELBO) and evaluation raises k (`with_importance_samples`). Sampling is the
same either way: `DataSpec.to_data` floors samples onto their levels.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from gm.core.config import ConfigError
from gm.data.dataspec import DataSpec, halvable_image
from gm.flows.dequantization import DequantizationConfig, make_dequantizer
from gm.flows.image import MultiScaleFlow
from gm.models._latent import log_mean_exp_draws
from gm.models.base import Batch, Capabilities, GenerativeModel, ModelOutput, StepGroup
from gm.nn.mlp import check_unconditional, clamp_to_model_space
from gm.core.numerics import normal_log_prob, randn
from gm.nn.observation import levels_of
from gm.nn.precision import fp32


def resolve_arch(arch: str, data: DataSpec, halvings: int, field: str) -> str:
    """"multiscale" or "vector" for an image flow's `arch` (auto: multiscale for images), with
    `halvings` of H and W (its `field`) checked; a ConfigError naming the field otherwise."""
    is_image = data.kind == "image" and len(data.shape) == 3
    arch = arch if arch != "auto" else ("multiscale" if is_image else "vector")
    if arch == "multiscale":
        halvable_image(data, halvings, field, fallback="vector")
    elif data.dim < 2:
        raise ConfigError(f"arch: 'vector' couplings need at least 2 dimensions, got shape {tuple(data.shape)}")
    return arch


class FlowDensityModel(GenerativeModel):
    """x = f(z), z ~ p_Z (N(0, I) unless `prior_log_prob`/`prior_sample` say otherwise)."""

    capabilities = Capabilities(likelihood="exact")

    def __init__(self, config: DequantizationConfig, data: DataSpec):
        super().__init__(config, data)
        self.dequantizer = make_dequantizer(config, data)  # None: uniform dequantization

    @classmethod
    def capabilities_for(cls, config: DequantizationConfig) -> Capabilities:
        if config.dequantization == "variational":
            return replace(cls.capabilities, likelihood="bound", importance_weighted=True)
        return cls.capabilities

    def step_groups(self) -> list[StepGroup]:
        return [StepGroup("flow", list(self.parameters()), lr=self.config.lr)]

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> latent: (B, *shape) -> z (B, D), log|det ∂z/∂x| (B,)."""
        if isinstance(self.flow, MultiScaleFlow):
            return self.flow.to_latent(x)
        return self.flow.inverse(x.flatten(1))

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> data: z (B, D) -> x (B, *shape)."""
        x, _ = self.flow.from_latent(z) if isinstance(self.flow, MultiScaleFlow) else self.flow(z)
        return x.reshape(z.shape[0], *self.data.shape)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p_Z(z) summed over D: (B, D) -> (B,)."""
        return normal_log_prob(fp32(z)).sum(-1)

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return randn((n, self.data.dim), generator, self.device)  # (n, D)

    def flow_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The flow's density log p(x) = log p_Z(z) + log|det ∂z/∂x|, nats; (B, *shape) -> (B,)."""
        z, logdet = self.forward_and_logdet(x)
        return self.prior_log_prob(fp32(z)) + fp32(logdet)  # fp32 under autocast

    # -- variational dequantization -------------------------------------------------------
    def dequantized_terms(self, x: torch.Tensor, k: int,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(b + u_i/scale) and log q(u_i | v) for k draws u_i ~ q(u | v), v the levels of
        x (B, *shape), b their bins' lower edges: (k, B) each."""
        v = levels_of(x.flatten(1), self.data).to(x.dtype)  # (B, D)
        u, log_q = self.dequantizer(v, k, generator)  # (k, B, D), (k, B)
        x_q = self.data.rescale(v + u)  # as DataSpec.to_model, with u ~ q instead of U[0, 1)
        log_p = self.flow_log_prob(x_q.reshape(-1, *self.data.shape)).view(k, -1)
        return log_p, log_q

    def dequantized_bound(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_k = log (1/k) Σ_i p(b + u_i/scale) / q(u_i | v) per row, model-space nats: (B, *shape) -> (B,).

        Drawn in chunks (the dequantizer's dequant_hidden per dimension the widest activation)
        and combined by a running log-sum-exp, as the latent families' IWAE bound.
        """
        def log_weights(n: int) -> torch.Tensor:
            log_p, log_q = self.dequantized_terms(x, n, generator)  # (n, B) each
            return log_p - log_q

        return log_mean_exp_draws(log_weights, k, x.shape[0], self.data.dim * self.config.dequant_hidden,
                                  x.device, x.dtype)

    # -- the contract -----------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Model-space nats per row, (B, *shape) -> (B,): the exact log p(x) under uniform
        dequantization, the bound L_k (k = `iwae_k`) under variational."""
        check_unconditional(self, condition)
        if self.dequantizer is None:
            return self.flow_log_prob(x)
        return self.dequantized_bound(x, self.config.iwae_k)

    def with_importance_samples(self, k: int) -> "FlowDensityModel":
        if not self.capabilities.importance_weighted:  # uniform dequantization: log_prob is exact
            return super().with_importance_samples(k)
        return self.with_config(iwae_k=k)

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        if group != "flow":
            raise KeyError(f"{type(self).__name__} has the single step group 'flow', got {group!r}")
        if self.dequantizer is not None:
            log_p, log_q = self.dequantized_terms(batch.x, 1)  # (1, B) each: -L_1 is the negative ELBO
            nll = -(log_p - log_q).mean()
            return ModelOutput(nll, {"nll": nll.detach(), "log_q": log_q.mean().detach()})
        z, logdet = self.forward_and_logdet(batch.x)
        z, logdet = fp32(z), fp32(logdet)  # the likelihood in fp32 under autocast
        nll = -(self.prior_log_prob(z) + logdet).mean()
        return ModelOutput(nll, {"nll": nll.detach(), "logdet": logdet.mean().detach()})

    def finish_samples(self, x: torch.Tensor) -> torch.Tensor:
        """Samples in data shape -> model space (discrete data clamped into [-1, 1))."""
        return clamp_to_model_space(x, self.data)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ p_Z through the inverse flow: (n, *shape)."""
        check_unconditional(self, condition)
        return self.finish_samples(self.inverse(self.prior_sample(n, generator)))
