"""BigGAN (Brock et al. 2019, "Large Scale GAN Training for High Fidelity Natural Image Synthesis").

SAGAN's recipe scaled up (§3), with the paper's changes at gm's scale:

- a residual generator with class-conditional batch norm in every block, its gains and biases linear in
  one shared class embedding concatenated with the block's chunk of z (the hierarchical latent: z is split
  into one chunk for the input linear layer and one per up block), self-attention at `attention` pixels;
- a residual critic with self-attention, global sum pooling and the projection discriminator's head
  ψ(φ(x)) + ⟨embed(y), φ(x)⟩ (Miyato & Koyama 2018);
- spectral norm on every weight of both networks; the hinge loss

      critic:     E relu(1 - D(x, y)) + E relu(1 + D(G(z, y), y)),
      generator:  -E D(G(z, y), y) + β Σ_W ‖W Wᵀ ⊙ (1 - I)‖²_F          (orthogonal regularisation, §3.1, β = 1e-4);

- Adam with β = (0, 0.999), lr 2e-4 for the critic and 5e-5 for the generator, two critic steps per
  generator step (§3: SAGAN's settings, 4e-4 in D and 1e-4 in G, with the learning rates halved and two
  D steps per G step; BigGAN-PyTorch's cheaper reproduction scripts use 4e-4 / 1e-4 and one D step);
- the truncation trick (§3.1): `sample(n, generator, condition, truncation=t)` draws z from N(0, I)
  truncated to [-t, t] (entries beyond t drawn again); without `truncation` it is the plain N(0, I).

The backbones are gm/nn/biggan.py (`arch: biggan`, residual blocks as in the paper). Not here: the
paper's batch sizes (2048) and widths, cross-replica batch norm and orthogonal initialisation, and the
EMA's start after 20k steps (here it starts at once, its decay warming up; `ema`, gm.models._adversarial).

Conditioning. BigGAN is class-conditional, but every family's default config in gm is unconditional (the
registry-wide tests build each family's defaults on labelled digits and expect a condition to be refused;
AC-GAN follows the same rule), so `conditional` is off by default. With `conditional: true` (labelled data)
the generator's batch norms read [shared embedding(y), z chunk] and the critic has the projection head:
BigGAN proper. With it off, each block's conditioning vector is its z chunk alone (the batch norms are still
conditional, on z) and the critic's head is a plain spectrally normalised linear layer.

On vectors (toy data) there are no images: `arch: biggan` becomes spectrally normalised MLPs with the same
loss, orthogonal regularisation and truncation (as SAGAN does); labels, when conditional, enter both MLPs as
one-hot inputs (the cGAN's way). `arch: dcgan` or `sagan` are also accepted, spectrally normalised likewise.
With `arch: biggan` the critic sees no label channels, so packing (PacGAN) with `conditional: true`, minibatch
discrimination and virtual batch norm (the generator's batch norms are BigGAN's own) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gm.core.config import ConfigError, bounded
from gm.core.numerics import randn
from gm.core.registry import register_family
from gm.data.dataspec import DataSpec
from gm.models._adversarial import AdversarialConfig, AdversarialModel
from gm.models.base import Batch, ModelOutput
from gm.models.sagan import HingeObjectives
from gm.nn.biggan import BigGANCritic, BigGANGenerator, biggan_blocks
from gm.nn.mlp import bounded_output, label_count, one_hot_labels
from gm.nn.precision import fp32, full_precision
from gm.nn.scaled import (
    ORTHO_BETA,
    apply_spectral_norm,
    orthogonal_regularization,
    truncated_noise,
)


@dataclass(frozen=True)
class BigGANConfig(AdversarialConfig):
    # biggan: residual nets with conditional BN, hierarchical z, self-attention, projection critic (images);
    # on vectors it becomes spectrally normalised MLPs; dcgan/sagan: the base's nets, spectrally normalised
    arch: Literal["mlp", "dcgan", "sagan", "biggan"] = "biggan"
    ema: float = bounded(0.999, ge=0, lt=1)  # §4 / App. C: samples from an EMA of G's weights, decay 0.9999 at
    # their 2048 batch and 150k+ steps; 0.999 fits runs of thousands of steps
    z_dim: int = bounded(32, gt=0)  # split into one chunk per up block plus one (the paper: 120 at 128×128)
    hidden: int = bounded(32, gt=0)  # base channel count (the paper's ch = 96 at 128×128)
    shared_dim: int = bounded(32, gt=0)  # the shared class embedding's size (the paper: 128)
    ortho_beta: float = bounded(ORTHO_BETA, ge=0)  # §3.1: β = 1e-4 of the orthogonal regularisation (0 = off)
    lr_gen: float = bounded(5e-5, gt=0)  # §3: SAGAN's 1e-4 halved
    lr_critic: float = bounded(2e-4, gt=0)  # §3: SAGAN's 4e-4 halved
    betas: tuple[float, float] = bounded((0.0, 0.999), ge=0, lt=1)  # App. C: β1 = 0, β2 = 0.999
    n_critic: int = bounded(2, gt=0)  # §3: two D steps per G step


@register_family("biggan")
class BigGAN(HingeObjectives, AdversarialModel):
    """Class-conditional (when `conditional`) residual generator and projection critic, hinge loss,
    orthogonal regularisation of G, truncated sampling."""

    config_cls = BigGANConfig
    vector_fallback = True

    def __init__(self, config: BigGANConfig, data: DataSpec):
        if config.arch == "biggan" and data.kind == "image":  # on vectors: MLPs (vector_fallback), which take these
            refused = {"minibatch_discrimination": config.minibatch_discrimination != 0,
                       "virtual_batch_norm": config.virtual_batch_norm,
                       "pack": config.pack > 1 and config.conditional}
            for name, bad in refused.items():
                if bad:
                    why = ("the projection critic reads one label per input" if name == "pack"
                           else "arch: biggan has nets of its own without it")
                    raise ConfigError(f"{name}: not available with arch: biggan ({why}), got "
                                      f"{getattr(config, name)!r}")
        super().__init__(config, data)

    def finish_networks(self, c: BigGANConfig) -> None:
        apply_spectral_norm(self.gen)  # both networks, whatever the backbone
        apply_spectral_norm(self.critic)

    # -- networks -----------------------------------------------------------------
    def _label_counts(self, config: BigGANConfig, data: DataSpec) -> tuple[int, int]:
        n = label_count(config.conditional, data)
        # arch biggan: labels go to the generator's shared embedding and the critic's projection, never as inputs
        return n, (0 if config.arch == "biggan" else n)

    def build_networks(self, c: BigGANConfig, data: DataSpec) -> tuple[nn.Module, nn.Module]:
        if c.arch != "biggan":
            return super().build_networks(c, data)
        biggan_blocks(data, c.attention)
        channels, size, _ = data.shape
        gen = BigGANGenerator(c.z_dim, data.shape, c.hidden, c.attention, self.num_labels, c.shared_dim,
                              out_activation=bounded_output(data))
        critic = BigGANCritic(channels * c.pack, size, c.hidden, c.attention, self.num_labels)
        return gen, critic

    def labels(self, y: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
        """Checked integer labels (n,) for a conditional model (a scalar is repeated), None otherwise."""
        onehot = one_hot_labels(self, y, n, self.num_labels, device)
        return None if onehot is None else onehot.argmax(1)

    def latent(self, n: int, generator: torch.Generator | None = None, truncation: float | None = None,
               device=None) -> torch.Tensor:
        """z (n, z_dim): N(0, I), or N(0, I) truncated to [-truncation, truncation] (§3.1)."""
        device = self.critic_steps.device if device is None else device
        if truncation is None:
            return randn((n, self.config.z_dim), generator, device)
        return truncated_noise((n, self.config.z_dim), truncation, generator, device)

    def generate(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 truncation: float | None = None) -> torch.Tensor:
        """n samples G(z, y) with gradients, (n, *shape) in model space; z truncated when asked."""
        z = self.latent(n, generator, truncation)  # (n, Z)
        if self.config.arch == "biggan":
            return self.gen(z, self.labels(y, n, z.device)).view(n, *self.data.shape)
        onehot = self._one_hot(y, n, z.device)
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)  # (n, Z + K)
        return self.gen(z).view(n, *self.data.shape)

    def critic_forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(D(x, y) (G, 1), φ(x) (G, F)); arch biggan: labels into the projection head, not the input."""
        if self.config.arch != "biggan":
            return super().critic_forward(x, y)
        x = self.critic_input(x)
        b, m = x.shape[0], self.config.pack
        labels = self.labels(y, b, x.device)
        if m > 1:  # unconditional only (refused otherwise): packs stacked along the channels
            x = x.reshape(b // m, m * x.shape[1], *x.shape[2:])
        out, features = self.critic(x, labels)
        return fp32(out), fp32(features)

    # -- losses (the hinge objectives: HingeObjectives) ----------------------------
    def orthogonal_penalty(self) -> torch.Tensor:
        """β Σ_W ‖W Wᵀ ⊙ (1 - I)‖²_F over the generator's Linear and conv weights (un-normalised), in fp32."""
        device = self.critic_steps.device
        with full_precision(device):
            return orthogonal_regularization(self.gen, self.config.ortho_beta).to(device)

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        out = super().loss(batch, group)
        if group != "gen" or self.config.ortho_beta == 0:
            return out
        penalty = self.orthogonal_penalty()
        return ModelOutput(out.loss + penalty, {**out.values, "ortho_penalty": penalty.detach()})

    # -- sampling -----------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, condition: torch.Tensor | None = None,
               truncation: float | None = None) -> torch.Tensor:
        """n samples (n, *shape) in model space; `truncation`: the truncation trick's threshold (None = off)."""
        return self.sample_with(n, generator, condition, truncation=truncation)
