"""GAN (Goodfellow et al. 2014): an MLP generator against an MLP discriminator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from gm.config import spec
from gm.data.spec import DataSpec
from gm.models.base import Batch, GenerativeModel, ModelOutput, StepGroup
from gm.nn.mlp import Activation, MLPGenerator, check_unconditional, mlp
from gm.registry import register_model


@dataclass(frozen=True)
class GANConfig:
    z_dim: int = spec(8, gt=0)  # latent dimension; 2 is enough for 2-D toys
    hidden: int = spec(256, gt=0)
    depth: int = spec(3, gt=0)  # hidden layers per net
    activation: Activation = "leaky_relu"  # discriminator; DCGAN (Radford 2016): LeakyReLU(0.2) in D, ReLU in G
    loss: Literal["non_saturating", "minimax"] = "non_saturating"  # Goodfellow 2014, §3: -log D(G(z)) in practice
    lr_gen: float = spec(2e-4, gt=0)  # DCGAN, Adam lr 2e-4
    lr_disc: float = spec(2e-4, gt=0)
    betas: tuple[float, float] = spec((0.5, 0.999), ge=0, lt=1)  # DCGAN, β1 = 0.5
    n_disc: int = spec(1, gt=0)  # Goodfellow 2014, Alg. 1: k = 1 discriminator step per generator step


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-E log D(x) - E log(1 - D(G(z))) from logits; identical for both generator losses.

    With D = σ(l): -log σ(l) = softplus(-l) and -log(1 - σ(l)) = softplus(l), which stay
    finite where σ saturates.
    """
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, kind: Literal["non_saturating", "minimax"]) -> torch.Tensor:
    """The generator's loss from the discriminator's logits on fakes (mean over the batch).

    minimax: E log(1 - D(G(z))) = -E softplus(l), minimised; its gradient σ(l) vanishes when D
    confidently rejects the fakes (l << 0), which is why Goodfellow et al. train with
    non_saturating: -E log D(G(z)) = E softplus(-l), whose gradient tends to -1 there.
    """
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"unknown GAN generator loss {kind!r}")


@register_model("gan")
class GAN(GenerativeModel):
    """Generator G: z ~ N(0, I) -> x; discriminator D: x -> logit of P(real)."""

    config_cls = GANConfig
    likelihood = None

    def __init__(self, config: GANConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        self.gen = MLPGenerator(c.z_dim, data, c.hidden, c.depth, "relu")
        self.disc = mlp(data.dim, 1, c.hidden, c.depth, c.activation)

    def step_groups(self) -> list[StepGroup]:
        c = self.config
        return [
            StepGroup("disc", list(self.disc.parameters()), lr=c.lr_disc, betas=c.betas, repeats=c.n_disc),
            StepGroup("gen", list(self.gen.parameters()), lr=c.lr_gen, betas=c.betas),
        ]

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        real = batch.x.flatten(1)  # (B, D)
        if group == "disc":
            fake = self.gen(real.shape[0]).detach()  # D's step must not reach into G
            real_logits, fake_logits = self.disc(real), self.disc(fake)  # (B, 1) each
            loss = discriminator_loss(real_logits, fake_logits)
            return ModelOutput(loss, {
                "disc_loss": loss.item(),
                "d_real": torch.sigmoid(real_logits).mean().item(),
                "d_fake": torch.sigmoid(fake_logits).mean().item(),
            })
        if group == "gen":
            fake_logits = self.disc(self.gen(real.shape[0]))  # (B, 1)
            loss = generator_loss(fake_logits, self.config.loss)
            return ModelOutput(loss, {"gen_loss": loss.item(),
                                      "d_gen": torch.sigmoid(fake_logits).mean().item()})
        raise KeyError(f"GAN has step groups 'disc' and 'gen', got {group!r}")

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        check_unconditional(self, condition)
        return self.gen.sample(n, generator)  # (n, *shape)
