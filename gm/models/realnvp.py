"""RealNVP (Dinh et al. 2017): affine coupling layers on flattened vectors, exact likelihood.

Coupling with a binary mask m (1 = passed through, 0 = transformed):
    x_b = x·m,  y = x_b + (1 - m)·(x·exp(s(x_b)) + t(x_b)),  log|det ∂y/∂x| = Σ (1 - m)·s(x_b),
with s = scale_factor·tanh(raw) so one layer can scale by at most exp(±scale_factor).
Masks alternate: checkerboard and its complement on the H×W grid for images, even/odd
indices for vectors. Each coupling is optionally followed by a learned per-dimension affine
(ActNorm-like, Kingma & Dhariwal 2018, without the data-dependent initialisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gm.config import spec
from gm.data.spec import DataSpec
from gm.models.base import Batch, GenerativeModel, ModelOutput, StepGroup
from gm.nn.mlp import Activation, check_unconditional, clamp_to_model_space, mlp, normal_log_prob, randn
from gm.registry import register_model


@dataclass(frozen=True)
class RealNVPConfig:
    n_layers: int = spec(8, gt=0)  # coupling layers, masks alternating
    hidden: int = spec(256, gt=0)
    depth: int = spec(2, gt=0)  # hidden layers of each coupling's s/t net
    activation: Activation = "relu"
    scale_factor: float = spec(2.0, gt=0)  # bound on each coupling's log-scale (Dinh 2017 also tanh-bound s)
    actnorm: bool = True  # learned per-dimension affine after each coupling
    lr: float = spec(1e-3, gt=0)  # Dinh 2017, §4.1: ADAM with default hyperparameters
    weight_decay: float = spec(0.0, ge=0)  # Dinh 2017 use L2 5e-5; 0 keeps small toys unregularised


def coupling_masks(data: DataSpec) -> torch.Tensor:
    """The base mask, flattened to (D,): a checkerboard on the last two dims of image data
    (the same for every channel), even indices for vectors. Layers alternate it and 1 - it."""
    if data.kind == "image" and len(data.shape) >= 2:
        h, w = data.shape[-2:]
        grid = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0  # (H, W)
        return grid.expand(*data.shape).reshape(-1).float()  # (D,)
    return (torch.arange(data.dim) % 2 == 0).float()  # (D,)


class AffineCoupling(nn.Module):
    """One affine coupling layer; `mask` (D,) marks the dimensions passed through unchanged."""

    def __init__(self, mask: torch.Tensor, hidden: int, depth: int, activation: Activation, scale_factor: float):
        super().__init__()
        dim = mask.numel()
        self.register_buffer("mask", mask, persistent=False)  # rebuilt from the DataSpec on load
        self.scale_factor = scale_factor
        self.net = mlp(dim, 2 * dim, hidden, depth, activation)  # x_b -> (raw s, t)
        # Zero output weights start every coupling at the identity, a stable start for deep flows (Glow).
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, x_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw, t = self.net(x_b).chunk(2, dim=-1)  # (B, D) each
        free = 1 - self.mask
        return free * self.scale_factor * torch.tanh(raw), free * t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> y (B, D), log|det| (B,)."""
        x_b = x * self.mask
        s, t = self._scale_shift(x_b)
        y = x_b + (1 - self.mask) * (x * torch.exp(s) + t)
        return y, s.sum(-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """(B, D) -> x (B, D); exact since the masked half passes through unchanged."""
        y_b = y * self.mask
        s, t = self._scale_shift(y_b)
        return y_b + (1 - self.mask) * ((y - t) * torch.exp(-s))


class ActNorm(nn.Module):
    """y = x·exp(log_scale) + bias per dimension, starting at the identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))  # (D,)
        self.bias = nn.Parameter(torch.zeros(dim))  # (D,)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> y (B, D), log|det| (B,)."""
        y = x * torch.exp(self.log_scale) + self.bias
        return y, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.bias) * torch.exp(-self.log_scale)


@register_model("realnvp")
class RealNVP(GenerativeModel):
    """A stack of affine couplings from data x to latent z ~ N(0, I); exact log p(x)."""

    config_cls = RealNVPConfig
    likelihood = "exact"

    def __init__(self, config: RealNVPConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        base = coupling_masks(data)
        layers: list[nn.Module] = []
        for i in range(c.n_layers):
            mask = base if i % 2 == 0 else 1 - base
            layers.append(AffineCoupling(mask, c.hidden, c.depth, c.activation, c.scale_factor))
            if c.actnorm:
                layers.append(ActNorm(data.dim))
        self.layers = nn.ModuleList(layers)

    def step_groups(self) -> list[StepGroup]:
        c = self.config
        return [StepGroup("flow", list(self.parameters()), lr=c.lr, weight_decay=c.weight_decay)]

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> latent: (B, *shape) -> z of the same shape and log|det ∂z/∂x| (B,)."""
        h = x.flatten(1)  # (B, D)
        logdet = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
        for layer in self.layers:
            h, ld = layer(h)
            logdet = logdet + ld
        return h.view_as(x), logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> data: z with B rows ((B, D) or (B, *shape)) -> x (B, *shape)."""
        h = z.flatten(1)  # (B, D)
        for layer in reversed(self.layers):
            h = layer.inverse(h)
        return h.view(h.shape[0], *self.data.shape)

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) = log N(z; 0, I) + log|det ∂z/∂x| per row, in nats; (B, *shape) -> (B,)."""
        check_unconditional(self, condition)
        z, logdet = self.forward_and_logdet(x)
        return normal_log_prob(z.flatten(1)).sum(-1) + logdet

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        if group != "flow":
            raise KeyError(f"RealNVP has the single step group 'flow', got {group!r}")
        z, logdet = self.forward_and_logdet(batch.x)
        nll = -(normal_log_prob(z.flatten(1)).sum(-1) + logdet).mean()
        return ModelOutput(nll, {"nll": nll.item(), "logdet": logdet.mean().item()})

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """The inverse flow of z ~ N(0, I); discrete data is clamped into [-1, 1)."""
        check_unconditional(self, condition)
        z = randn((n, self.data.dim), generator, self.device)  # (n, D)
        return clamp_to_model_space(self.inverse(z), self.data)  # (n, *shape)
