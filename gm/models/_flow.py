"""The shared base of the normalizing-flow density families (NICE, Glow, MAF, IAF, planar).

A family builds its invertible map and, where it is not a `gm.flows` sequence in `self.flow`,
overrides `forward_and_logdet` (data -> latent, the density direction) and `inverse`
(latent -> data, the sampling direction). The base supplies the rest of the contract from the
change of variables log p(x) = log p_Z(z) + log|det ∂z/∂x|: the exact log-likelihood, the
maximum-likelihood loss (one step group, "flow") and sampling through the inverse.
"""

from __future__ import annotations

import torch

from gm.models.base import Batch, GenerativeModel, ModelOutput, StepGroup
from gm.nn.mlp import check_unconditional, clamp_to_model_space, normal_log_prob, randn


class FlowDensityModel(GenerativeModel):
    """x = f(z), z ~ p_Z (N(0, I) unless `prior_log_prob`/`prior_sample` say otherwise)."""

    likelihood = "exact"

    def step_groups(self) -> list[StepGroup]:
        return [StepGroup("flow", list(self.parameters()), lr=self.config.lr)]

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> latent: (B, *shape) -> z (B, D), log|det ∂z/∂x| (B,)."""
        return self.flow.inverse(x.flatten(1))

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> data: z (B, D) -> x (B, *shape)."""
        x, _ = self.flow(z)
        return x.view(z.shape[0], *self.data.shape)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p_Z(z) summed over D: (B, D) -> (B,)."""
        return normal_log_prob(z).sum(-1)

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return randn((n, self.data.dim), generator, self.device)  # (n, D)

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) = log p_Z(z) + log|det ∂z/∂x|, nats; (B, *shape) -> (B,)."""
        check_unconditional(self, condition)
        z, logdet = self.forward_and_logdet(x)
        return self.prior_log_prob(z) + logdet

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        if group != "flow":
            raise KeyError(f"{type(self).__name__} has the single step group 'flow', got {group!r}")
        z, logdet = self.forward_and_logdet(batch.x)
        nll = -(self.prior_log_prob(z) + logdet).mean()
        return ModelOutput(nll, {"nll": nll.item(), "logdet": logdet.mean().item()})

    def finish_samples(self, x: torch.Tensor) -> torch.Tensor:
        """Samples in data shape -> model space (discrete data clamped into [-1, 1))."""
        return clamp_to_model_space(x, self.data)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ p_Z through the inverse flow: (n, *shape)."""
        check_unconditional(self, condition)
        return self.finish_samples(self.inverse(self.prior_sample(n, generator)))
