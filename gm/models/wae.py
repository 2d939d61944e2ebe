"""Wasserstein Auto-Encoder (Tolstikhin et al. 2018): the penalised optimal-transport objective

    D_WAE(P_X, P_G) = inf_Q  E_{P_X} E_{Q(Z|X)} c(X, G(Z)) + λ · D_Z(Q_Z, P_Z)      (Eq. 4)

with a deterministic encoder Q(Z|X) (z = E(x)), a deterministic decoder G and the prior
P_Z = N(0, I). The cost is the paper's squared Euclidean c(x, y) = ‖x - y‖²₂, with G(z) the
mean of the configured observation head (its variance, if any, plays no part and is frozen;
samples are G(z), not draws from p(x|z): Theorem 1 needs a deterministic G). D_Z is either

- "mmd": the unbiased U-statistic of MMD² with a sum of inverse multiquadratic kernels
  (WAE-MMD, Algorithm 2), or
- "gan": the Jensen-Shannon divergence estimated by a latent discriminator (WAE-GAN,
  Algorithm 1): a discriminator step, then encoder/decoder with λ · (-log D(E(x))).

The encoder's Q_Z has no density, so there is no likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from gm.core.config import bounded
from gm.data.dataspec import DataSpec
from gm.models._latent import LatentConfig, LatentVariableModel, encoder_net
from gm.models.base import Batch, ModelOutput, StepGroup
from gm.models.gan import discriminator_loss, generator_loss
from gm.nn.mlp import clamp_to_model_space, mlp
from gm.core.registry import register_family

__all__ = ["WAE", "WAEConfig", "IMQ_SCALES", "imq_kernel", "mmd_unbiased"]

# Tolstikhin et al.'s code sums the IMQ kernel over these multiples of C = 2·d_z·σ²_z.
IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
PRIOR_VAR = 1.0  # σ²_z of the prior N(0, I)
DEFAULT_LAM = {"mmd": 10.0, "gan": 1.0}  # Tolstikhin 2018, §4 (MNIST): λ = 10 (WAE-MMD), λ = 1 (WAE-GAN)


@dataclass(frozen=True)
class WAEConfig(LatentConfig):
    penalty: Literal["mmd", "gan"] = "mmd"  # D_Z: WAE-MMD (Alg. 2) or WAE-GAN (Alg. 1)
    lam: float | None = bounded(None, gt=0)  # λ of Eq. 4; None: the paper's MNIST value (10 MMD, 1 GAN)
    mmd_scales: tuple[float, ...] = bounded(IMQ_SCALES, gt=0)  # IMQ kernel scales, multiples of 2·d_z·σ²_z
    disc_hidden: int = bounded(512, gt=0)  # WAE-GAN adversary (Tolstikhin 2018, §4, MNIST): 512 units per layer
    disc_depth: int = bounded(4, gt=0)  # ... and 4 hidden layers
    lr_disc: float = bounded(5e-4, gt=0)  # Tolstikhin 2018, §4: Adam α = 5e-4 for the adversary (lr = 1e-3 for E, G)
    betas: tuple[float, float] = bounded((0.5, 0.999), ge=0, lt=1)  # Tolstikhin 2018, §4: Adam β1 = 0.5, β2 = 0.999
    n_disc: int = bounded(1, gt=0)  # adversary steps per iteration (Alg. 1: one)

    @property
    def penalty_weight(self) -> float:
        """λ: `lam`, or the paper's default for the chosen penalty."""
        return DEFAULT_LAM[self.penalty] if self.lam is None else self.lam


def imq_kernel(a: torch.Tensor, b: torch.Tensor, scales: tuple[float, ...] = IMQ_SCALES,
               prior_var: float = PRIOR_VAR) -> torch.Tensor:
    """Σ_s C_s / (C_s + ‖a_i - b_j‖²₂), C_s = 2·Z·σ²_z·s: inverse multiquadratics (Tolstikhin 2018, §4).

    a (..., N, Z), b (..., M, Z) -> (..., N, M). C = 2·d_z·σ²_z is E‖z - z'‖² for z, z' ~ N(0, σ²_z I).
    """
    d2 = (a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1)  # (..., N, M)
    base = 2.0 * a.shape[-1] * prior_var
    return sum(base * s / (base * s + d2) for s in scales)


def mmd_unbiased(x: torch.Tensor, y: torch.Tensor, scales: tuple[float, ...] = IMQ_SCALES,
                 prior_var: float = PRIOR_VAR) -> torch.Tensor:
    """The unbiased U-statistic of MMD²_k between samples x (..., N, Z) and y (..., M, Z): (...,).

    1/(N(N-1)) Σ_{i≠j} k(x_i, x_j) + 1/(M(M-1)) Σ_{i≠j} k(y_i, y_j) - 2/(NM) Σ_{i,j} k(x_i, y_j)
    (Gretton et al. 2012, Eq. 3; WAE-MMD, Algorithm 2). Its expectation is 0 when x and y
    come from one distribution, so single estimates may be negative.
    """
    n, m = x.shape[-2], y.shape[-2]
    if n < 2 or m < 2:
        raise ValueError(f"the U-statistic needs at least 2 samples on each side, got {n} and {m}")
    kxx, kyy, kxy = (imq_kernel(u, v, scales, prior_var) for u, v in ((x, x), (y, y), (x, y)))
    # Drop the i = j terms: k(z, z) is a constant that would bias the estimate upwards.
    within_x = (kxx.sum((-1, -2)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
    within_y = (kyy.sum((-1, -2)) - kyy.diagonal(dim1=-2, dim2=-1).sum(-1)) / (m * (m - 1))
    return within_x + within_y - 2 * kxy.mean((-1, -2))


@register_family("wae")
class WAE(LatentVariableModel):
    """Deterministic encoder E: x -> z and decoder G: z -> x̂ (the head's mean), trained on Eq. 4.

    Step groups: "mmd" penalty: "ae" only; "gan" penalty: "disc" (`n_disc` times), then "ae"
    (Algorithm 1's order).
    """

    config_cls = WAEConfig

    def __init__(self, config: WAEConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        self.encoder = encoder_net(c, data, c.z_dim)
        # G is deterministic: a head's learned variance (the Gaussian's log σ) never enters the cost.
        for p in self.obs.parameters():
            p.requires_grad_(False)
        self.disc = mlp(c.z_dim, 1, c.disc_hidden, c.disc_depth, c.activation) if c.penalty == "gan" else None

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))  # (B, Z)

    def generate_mean(self, z: torch.Tensor) -> torch.Tensor:
        """G(z): the decoder head's mean in model space, (..., Z) -> (..., D)."""
        return self.obs.mean(self.decode(z))

    def decode_sample(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """G(z), clamped to model space: (n, *shape). The WAE decoder is deterministic."""
        return clamp_to_model_space(self.generate_mean(z), self.data).view(z.shape[0], *self.data.shape)

    def step_groups(self) -> list[StepGroup]:
        c = self.config
        ae = [p for m in (self.encoder, self.decoder, self.obs) for p in m.parameters() if p.requires_grad]
        groups = [StepGroup("ae", ae, lr=c.lr, betas=c.betas)]
        if self.disc is not None:
            groups.insert(0, StepGroup("disc", list(self.disc.parameters()), lr=c.lr_disc, betas=c.betas,
                                       repeats=c.n_disc))
        return groups

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        x = batch.x  # (B, *shape)
        b = x.shape[0]
        c = self.config
        lam = c.penalty_weight
        if group == "disc" and self.disc is not None:
            # Alg. 1 ascends λ·(log D(z) + log(1 - D(ẑ))); the constant λ only rescales what Adam normalises.
            with torch.no_grad():
                codes = self.encode_mean(x)  # ẑ (B, Z)
            prior = self.prior_sample(b)  # z (B, Z)
            real_logits, fake_logits = self.disc(prior), self.disc(codes)
            loss = discriminator_loss(real_logits, fake_logits)
            return ModelOutput(loss, {"disc_loss": loss.item(), "d_prior": torch.sigmoid(real_logits).mean().item(),
                                      "d_code": torch.sigmoid(fake_logits).mean().item()})
        if group != "ae":
            names = "'disc' and 'ae'" if self.disc is not None else "the single step group 'ae'"
            raise KeyError(f"WAE ({c.penalty}) has {names}, got {group!r}")
        codes = self.encode_mean(x)  # ẑ = E(x), (B, Z)
        recon = (x.flatten(1) - self.generate_mean(codes)).pow(2).sum(1).mean()  # c(x, G(ẑ)) = ‖x - G(ẑ)‖²
        if c.penalty == "mmd":
            penalty = mmd_unbiased(self.prior_sample(b), codes, c.mmd_scales, PRIOR_VAR)
            name = "mmd"
        else:
            penalty = generator_loss(self.disc(codes), "non_saturating")  # -E log D(ẑ)
            name = "gan_penalty"
        loss = recon + lam * penalty
        return ModelOutput(loss, {"loss": loss.item(), "recon": recon.item(), name: penalty.item()})
