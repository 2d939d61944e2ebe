"""WGAN-GP (Gulrajani et al. 2017): a Wasserstein critic kept 1-Lipschitz by a gradient penalty."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from gm.config import spec
from gm.data.spec import DataSpec
from gm.models.base import Batch, GenerativeModel, ModelOutput, StepGroup
from gm.nn.mlp import Activation, MLPGenerator, check_unconditional, mlp, rand
from gm.registry import register_model


@dataclass(frozen=True)
class WGANGPConfig:
    z_dim: int = spec(8, gt=0)  # latent dimension; gan_toy.py uses 2 for 2-D toys
    hidden: int = spec(512, gt=0)  # gan_toy.py: 3×512 ReLU MLPs
    depth: int = spec(3, gt=0)  # hidden layers per net
    activation: Activation = "relu"  # gan_toy.py
    gp_weight: float = spec(10.0, ge=0)  # WGAN-GP paper, λ = 10
    n_critic: int = spec(5, gt=0)  # WGAN-GP paper, Alg. 1: n_critic = 5
    lr_gen: float = spec(1e-4, gt=0)  # WGAN-GP paper, Alg. 1: α = 1e-4
    lr_critic: float = spec(1e-4, gt=0)
    betas: tuple[float, float] = spec((0.0, 0.9), ge=0, lt=1)  # WGAN-GP paper, Alg. 1: β1 = 0, β2 = 0.9


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sided penalty E (‖∇D(x̂)‖₂ - 1)² on x̂ = ε·real + (1 - ε)·fake (WGAN-GP, Eq. 3).

    real, fake: (B, ...) tensors of the shape the critic takes; `eps`: (B,) weights, drawn
    from U[0, 1] per sample when None. Returns (the mean penalty, differentiable w.r.t. the
    critic's parameters; the per-sample gradient norms, shape (B,), detached).
    """
    b = real.shape[0]
    if eps is None:
        eps = rand((b,), device=real.device)
    eps = eps.to(real).view(b, *([1] * (real.dim() - 1)))  # broadcast over the feature dims
    x_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)  # (B, ...)
    out = critic(x_hat)  # (B, 1)
    # create_graph: the penalty is itself minimised, so its gradient must be differentiable.
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)  # (B, ...)
    # The tiny constant keeps the sqrt differentiable where a gradient is exactly zero.
    norms = torch.sqrt(grad.flatten(1).pow(2).sum(1) + 1e-12)  # (B,)
    return ((norms - 1) ** 2).mean(), norms.detach()


@register_model("wgan_gp")
class WGANGP(GenerativeModel):
    """Generator G: z ~ N(0, I) -> x; critic D: x -> R without batch norm (the penalty is per sample)."""

    config_cls = WGANGPConfig
    likelihood = None

    def __init__(self, config: WGANGPConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        self.gen = MLPGenerator(c.z_dim, data, c.hidden, c.depth, c.activation)
        self.critic = mlp(data.dim, 1, c.hidden, c.depth, c.activation)

    def step_groups(self) -> list[StepGroup]:
        c = self.config
        return [
            StepGroup("critic", list(self.critic.parameters()), lr=c.lr_critic, betas=c.betas,
                      repeats=c.n_critic),
            StepGroup("gen", list(self.gen.parameters()), lr=c.lr_gen, betas=c.betas),
        ]

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        real = batch.x.flatten(1)  # (B, D)
        if group == "critic":
            fake = self.gen(real.shape[0]).detach()  # the critic's step must not reach into G
            d_real, d_fake = self.critic(real).mean(), self.critic(fake).mean()
            gp, norms = gradient_penalty(self.critic, real, fake)
            wasserstein = d_real - d_fake  # the critic's estimate of W(P_r, P_g)
            loss = -wasserstein + self.config.gp_weight * gp
            return ModelOutput(loss, {
                "critic_loss": loss.item(),
                "wasserstein": wasserstein.item(),
                "gp": gp.item(),
                "grad_norm": norms.mean().item(),
            })
        if group == "gen":
            loss = -self.critic(self.gen(real.shape[0])).mean()
            return ModelOutput(loss, {"gen_loss": loss.item()})
        raise KeyError(f"WGAN-GP has step groups 'critic' and 'gen', got {group!r}")

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        check_unconditional(self, condition)
        return self.gen.sample(n, generator)  # (n, *shape)
