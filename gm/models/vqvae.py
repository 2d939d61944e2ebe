"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning")
with a PixelCNN prior over its code grid.

x -> encoder -> z_e(x), a grid of D-dim vectors -> each vector replaced by its nearest of K
codebook vectors e_k (Eqs. 1-2) -> z_q(x) -> decoder -> an observation head p(x | z_q)
(`gm.nn.observation`). The training loss per image is Eq. 3:

    L = -log p(x | z_q(x)) + ‖sg[z_e(x)] - e‖² + β ‖z_e(x) - sg[e]‖²

The two VQ terms are averaged over the N latents of the grid (§3.2: "an average over N
terms ... one for each latent"). The gradient crosses the quantizer by the straight-through
estimator, z_q = z_e + sg[z_q - z_e] (§3.2). With `codebook: ema` the codebook term is dropped
and the codebook follows exponential moving averages of its assignment counts and sums
(App. A.1, Eqs. 6-8), with Laplace-smoothed counts (as in Sonnet's VectorQuantizerEMA).

The prior is a PixelCNN over the code grid (§3.3; `gm.nn.pixelcnn`). It trains as a second
step group, "prior", by cross-entropy on the detached codes of the current encoder. It starts
once the autoencoder has taken `prior_start` steps, counted in a buffer so that the count
survives checkpoints.

Likelihood ("bound"): the posterior is deterministic, a point mass q(z|x) = δ(z - z_q(x)). Its
ELBO is log p(x | z_q(x)) + log p(z_q(x)): a point mass has zero entropy, so the KL to the
prior is -log p(z_q(x)). It is also simply one term of log p(x) = log Σ_z p(z) p(x|z), so it
is a true lower bound, but a loose one. `log_prob` returns exactly this bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gm.core.config import ConfigError, bounded
from gm.data.dataspec import DataSpec, halvable_image
from gm.models.base import Batch, Capabilities, GenerativeModel, ModelOutput, StepGroup
from gm.nn.mlp import Activation, check_unconditional, clamp_to_model_space, label_count, mlp
from gm.nn.observation import ObservationName, make_observation
from gm.nn.pixelcnn import PixelCNN
from gm.core.registry import register_family
from gm.core.numerics import bits_per_dim
from gm.core.dist import world_size

__all__ = ["VQVAE", "VQVAEConfig", "nearest_codes", "straight_through", "commitment_loss", "codebook_loss",
           "ema_codebook_update", "perplexity", "draw_codebook", "code_statistics", "apply_ema", "embed_grid", "quantize_grid", "resolve_arch"]


@dataclass(frozen=True)
class VQVAEConfig:
    arch: Literal["auto", "conv", "mlp"] = "auto"  # auto: conv for (C, H, W) images, mlp for vectors (toys)
    hidden: int = bounded(64, gt=0)  # conv channels or MLP width (paper §4.1: 256 channels)
    depth: int = bounded(2, gt=0)  # conv: residual blocks per net (paper §4.1: 2); mlp: hidden layers
    activation: Activation = "relu"  # MLP nets only; the conv nets use ReLU (paper §4.1)
    downsample: int = bounded(1, ge=0)  # conv: stride-2 layers (paper: 2); 8×8 digits -> 4×4 codes, 28×28 with 2 -> 7×7
    mlp_codes: int = bounded(2, gt=0)  # mlp: the code grid is 1 × mlp_codes
    code_dim: int = bounded(16, gt=0)  # D, the dimension of each code vector
    codebook_size: int = bounded(64, gt=0)  # K (the paper uses 512 on CIFAR-10/ImageNet; tiny data needs fewer)
    beta: float = bounded(0.25, ge=0)  # commitment weight β; §3.2: "β = 0.25" in all experiments
    codebook: Literal["ema", "loss"] = "ema"  # EMA updates (App. A.1) or the codebook loss term of Eq. 3
    ema_decay: float = bounded(0.99, gt=0, lt=1)  # γ of App. A.1 (0.99)
    ema_eps: float = bounded(1e-5, gt=0)  # Laplace smoothing of the EMA counts (Sonnet's VectorQuantizerEMA)
    data_init: bool = True  # set the codebook to the first training batch's encodings, to avoid early collapse
    decoder: ObservationName = "gaussian"  # p(x|z_q); discrete data: logistic or categorical give exact bits/dim
    decoder_components: int = bounded(1, gt=0)  # logistic mixture components per dimension
    min_log_std: float = -7.0  # floor of the Gaussian decoder's log σ (as in LatentConfig)
    sample_noise: bool = True  # sample x ~ p(x|z_q); False returns the decoder's mean
    lr: float = bounded(1e-3, gt=0)  # encoder/decoder Adam lr (paper: 2e-4 over 250k steps; our runs are short)
    prior_hidden: int = bounded(64, gt=0)  # PixelCNN channels
    prior_blocks: int = bounded(4, ge=0)  # PixelCNN mask-B residual blocks
    prior_kernel: int = bounded(7, gt=0)  # odd; the mask-A first layer's kernel (PixelRNN §3.5: 7×7)
    prior_lr: float = bounded(1e-3, gt=0)
    prior_start: int = bounded(0, ge=0)  # autoencoder steps before the prior trains; 0 = alongside from the start
    conditional: bool = False  # a class-conditional prior p(codes | y); the label is a bias in every PixelCNN layer

    def validate(self):
        if self.prior_kernel % 2 != 1:
            raise ConfigError(f"prior_kernel: expected an odd kernel size, got {self.prior_kernel}")


# --------------------------------------------------------------------------- pure functions


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook vector in Euclidean distance (Eq. 2); (N, D), (K, D) -> (N,).

    ‖z - e‖² = ‖z‖² - 2 z·e + ‖e‖² is computed without the (N, K, D) difference tensor.
    Ties go to the lowest index.
    """
    with torch.no_grad():
        d = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.T + codebook.pow(2).sum(1)  # (N, K)
        return d.argmin(1)


def resolve_arch(arch: str, data: DataSpec) -> str:
    """`arch: auto` made concrete: conv nets for (C, H, W) images, MLPs for anything else."""
    if arch != "auto":
        return arch
    return "conv" if data.kind == "image" and len(data.shape) == 3 else "mlp"


def embed_grid(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Codebook lookup of a code grid: (B, h, w) int64 -> (B, D, h, w)."""
    return F.embedding(codes, codebook).permute(0, 3, 1, 2)


def quantize_grid(z_e: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest codes (B, h, w) of a grid of latents z_e (B, D, h, w) and their vectors (B, D, h, w)
    (Eq. 2), with no straight-through."""
    b, d, h, w = z_e.shape
    codes = nearest_codes(z_e.permute(0, 2, 3, 1).reshape(-1, d), codebook).view(b, h, w)
    return codes, embed_grid(codes, codebook)


def straight_through(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """z_e + sg[z_q - z_e]: the value of z_q, with the gradient copied onto z_e unchanged (§3.2)."""
    return z_e + (z_q - z_e).detach()


def _latent_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over latents of ‖a - b‖², with the vectors along dim 1: (N, D) or (B, D, H, W) -> scalar."""
    return (a - b).pow(2).sum(1).mean()


def commitment_loss(z_e: torch.Tensor, z_q: torch.Tensor, beta: float) -> torch.Tensor:
    """β ‖z_e - sg[z_q]‖², averaged over latents (Eq. 3, third term); gradient to the encoder only."""
    return beta * _latent_sq_dist(z_e, z_q.detach())


def codebook_loss(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """‖sg[z_e] - z_q‖², averaged over latents (Eq. 3, second term); gradient to the codebook only."""
    return _latent_sq_dist(z_e.detach(), z_q)


def ema_codebook_update(count: torch.Tensor, total: torch.Tensor, n: torch.Tensor, sums: torch.Tensor,
                        decay: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the EMA codebook (App. A.1, Eqs. 6-8), with Laplace-smoothed counts.

    count (K,), total (K, D): the running N_i and m_i. n (K,), sums (K, D): this batch's
    assignment counts n_i and the sums Σ_j z_{i,j} of the vectors assigned to code i.

        N_i <- γ N_i + (1 - γ) n_i,   m_i <- γ m_i + (1 - γ) Σ_j z_{i,j},   e_i = m_i / Ñ_i,

    with Ñ_i = (N_i + ε) / (Σ_k N_k + K ε) · Σ_k N_k. The smoothing keeps e_i finite when N_i -> 0
    and leaves the total count unchanged. Returns the new (N, m, codebook).
    """
    count = decay * count + (1 - decay) * n
    total = decay * total + (1 - decay) * sums
    size = count.sum()
    smoothed = (count + eps) / (size + count.numel() * eps) * size  # (K,)
    return count, total, total / smoothed.unsqueeze(1)


@torch.no_grad()
def draw_codebook(flat: torch.Tensor, k: int) -> torch.Tensor:
    """K code vectors drawn from the encodings flat (N, D), for data initialisation: without
    replacement, or with N < K with replacement and slightly jittered. Rank 0's draw is broadcast so
    that workers agree."""
    n = flat.shape[0]
    if n >= k:
        new = flat[torch.randperm(n, device=flat.device)[:k]].clone()
    else:
        new = flat[torch.randint(n, (k,), device=flat.device)]
        new = new + 1e-3 * (new.std() + 1e-8) * torch.randn_like(new)
    if world_size() > 1:
        dist.broadcast(new, src=0)
    return new


def code_statistics(codes: torch.Tensor, flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's assignment counts n_i (K,) and sums Σ_j z_ij (K, D) of its codes (any shape, N in all)
    and their encodings flat (N, D), for `apply_ema`."""
    onehot = F.one_hot(codes.flatten(), k).to(flat.dtype)  # (N, K)
    return onehot.sum(0), onehot.T @ flat


@torch.no_grad()
def apply_ema(count: torch.Tensor, total: torch.Tensor, codebook: torch.Tensor,
              stats: tuple[torch.Tensor, torch.Tensor], decay: float, eps: float) -> None:
    """Move the EMA buffers and the codebook in place by one batch's `code_statistics` (Eqs. 6-8),
    summed over all workers first so that their codebooks agree."""
    n, sums = stats
    if world_size() > 1:
        dist.all_reduce(n)
        dist.all_reduce(sums)
    new_count, new_total, new_codebook = ema_codebook_update(count, total, n, sums, decay, eps)
    count.copy_(new_count)
    total.copy_(new_total)
    codebook.copy_(new_codebook)


def perplexity(codes: torch.Tensor, k: int) -> torch.Tensor:
    """exp(H(p̄)), p̄ the average usage of the K codes in `codes` (any shape, int64); from 1 to K."""
    p = torch.bincount(codes.flatten(), minlength=k).double() / codes.numel()  # (K,)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()  # 0 log 0 = 0
    return entropy.exp()


# --------------------------------------------------------------------------- backbones


class ResidualBlock(nn.Module):
    """x + conv1×1(ReLU(conv3×3(ReLU(x)))): the paper's residual block (§4.1: "ReLU, 3x3 conv, ReLU, 1x1 conv")."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(channels, channels, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


def conv_encoder(in_channels: int, hidden: int, code_dim: int, downsample: int, blocks: int) -> nn.Sequential:
    """(B, C, H, W) -> (B, D, H/2^s, W/2^s). The layers are s stride-2 4×4 convs, then residual
    blocks, then a 1×1 conv to D (paper §4.1)."""
    layers: list[nn.Module] = []
    width = in_channels
    for i in range(downsample):
        layers += [nn.Conv2d(width, hidden, 4, stride=2, padding=1)] + ([nn.ReLU()] if i < downsample - 1 else [])
        width = hidden
    if downsample == 0:
        layers.append(nn.Conv2d(in_channels, hidden, 3, padding=1))
    layers += [ResidualBlock(hidden) for _ in range(blocks)]
    layers += [nn.ReLU(), nn.Conv2d(hidden, code_dim, 1)]
    return nn.Sequential(*layers)


def conv_decoder(code_dim: int, hidden: int, out_channels: int, downsample: int, blocks: int) -> nn.Sequential:
    """(B, D, h, w) -> (B, out, h·2^s, w·2^s). The layers are a 3×3 conv, residual blocks, then s
    stride-2 4×4 transposed convs (paper §4.1)."""
    layers: list[nn.Module] = [nn.Conv2d(code_dim, hidden, 3, padding=1)]
    layers += [ResidualBlock(hidden) for _ in range(blocks)]
    layers.append(nn.ReLU())
    for i in range(downsample):
        last = i == downsample - 1
        layers.append(nn.ConvTranspose2d(hidden, out_channels if last else hidden, 4, stride=2, padding=1))
        if not last:
            layers.append(nn.ReLU())
    if downsample == 0:
        layers.append(nn.Conv2d(hidden, out_channels, 1))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- the model


# Not a LatentVariableModel. That base brings an MLP decoder z -> x, a N(0, I) prior and the IWAE bound
# over a posterior density, and VQ-VAE needs none of them: its decoder reads a code grid, its prior is
# a PixelCNN over discrete codes, and its bound is deterministic. Only the observation head and the
# clamping helpers are shared, and those are imported directly.
@register_family("vqvae")
class VQVAE(GenerativeModel):
    """VQ-VAE with an EMA or loss-trained codebook and a PixelCNN prior. `log_prob` is the
    deterministic-posterior ELBO log p(x | z_q(x)) + log p(z_q(x)), a loose lower bound."""

    config_cls = VQVAEConfig
    capabilities = Capabilities(likelihood="bound", reconstruction=True, codebook=True)

    @classmethod
    def capabilities_for(cls, config: VQVAEConfig) -> Capabilities:
        return replace(cls.capabilities, conditional=config.conditional)

    def __init__(self, config: VQVAEConfig, data: DataSpec):
        super().__init__(config, data)
        c = config
        self.arch = arch = resolve_arch(c.arch, data)
        n_labels = label_count(c.conditional, data)
        self.obs = make_observation(c.decoder, data, c.min_log_std, c.decoder_components)
        p = self.obs.params_per_dim
        if arch == "conv":
            channels, height, width = halvable_image(data, c.downsample, "downsample", fallback="mlp")
            f = 2 ** c.downsample
            self.grid = (height // f, width // f)
            self.encoder = conv_encoder(channels, c.hidden, c.code_dim, c.downsample, c.depth)
            self.decoder = conv_decoder(c.code_dim, c.hidden, channels * p, c.downsample, c.depth)
        else:
            self.grid = (1, c.mlp_codes)
            self.encoder = mlp(data.dim, c.mlp_codes * c.code_dim, c.hidden, c.depth, c.activation)
            self.decoder = mlp(c.mlp_codes * c.code_dim, data.dim * p, c.hidden, c.depth, c.activation)

        k, d = c.codebook_size, c.code_dim
        init = torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k)  # a common VQ init; `data_init` replaces it
        if c.codebook == "loss":
            self.codebook = nn.Parameter(init)  # (K, D)
        else:
            self.register_buffer("codebook", init)  # (K, D), moved by EMA, not by the optimizer
            # N_i = 1, m_i = e_i: a pseudo-count of one, so e_i = m_i / N_i starts at the initial codebook
            # and an unused code keeps its vector instead of being scaled by 1/ε.
            self.register_buffer("ema_count", torch.ones(k))  # (K,)
            self.register_buffer("ema_sum", init.clone())  # (K, D)
        self.register_buffer("codebook_ready", torch.tensor(not c.data_init))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # autoencoder steps taken
        self.prior = PixelCNN(k, c.prior_hidden, c.prior_blocks, c.prior_kernel,
                              n_classes=n_labels)
        self._pending_ema: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- groups ---------------------------------------------------------------------------------
    def step_groups(self) -> list[StepGroup]:
        prior = {id(q) for q in self.prior.parameters()}
        autoencoder = [q for q in self.parameters() if id(q) not in prior]
        return [StepGroup("vqvae", autoencoder, lr=self.config.lr),
                StepGroup("prior", list(self.prior.parameters()), lr=self.config.prior_lr)]

    # -- pieces -----------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_e(x): (B, *shape) -> (B, D, h, w)."""
        if self.arch == "conv":
            return self.encoder(x)
        h, w = self.grid
        return self.encoder(x.flatten(1)).view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """A code-vector grid (B, D, h, w) -> the observation's params (B, dim·P), laid out as (C, H, W, P)."""
        if self.arch == "mlp":
            return self.decoder(z.permute(0, 2, 3, 1).flatten(1))
        out = self.decoder(z)  # (B, C·P, H, W)
        b, _, height, width = out.shape
        out = out.view(b, self.data.shape[0], self.obs.params_per_dim, height, width)
        return out.permute(0, 1, 3, 4, 2).flatten(1)  # (B, C·H·W·P)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook lookup: (B, h, w) int64 -> (B, D, h, w)."""
        return embed_grid(codes, self.codebook)

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest codes (B, h, w) and their vectors z_q (B, D, h, w), with no straight-through."""
        return quantize_grid(z_e, self.codebook)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The code grid of x under the current encoder: (B, *shape) -> (B, h, w) int64."""
        return self.quantize(self.encode(x))[0]

    @torch.no_grad()
    def codebook_perplexity(self, x: torch.Tensor) -> float:
        """exp(entropy of the average code usage) over the latents of the batch x; from 1 to K."""
        return perplexity(self.codes(x), self.config.codebook_size).item()

    @torch.no_grad()
    def _init_codebook(self, flat: torch.Tensor) -> None:
        """Codebook := K encodings drawn from the batch, (N, D) (`draw_codebook`)."""
        new = draw_codebook(flat, self.config.codebook_size)
        self.codebook.data.copy_(new)
        if self.config.codebook == "ema":
            self.ema_sum.copy_(new * self.ema_count.unsqueeze(1))
        self.codebook_ready.fill_(True)

    # -- losses -------------------------------------------------------------------------------------
    def loss(self, batch: Batch, group: str) -> ModelOutput:
        if group == "vqvae":
            return self._autoencoder_loss(batch.x)
        if group == "prior":
            return self._prior_loss(batch)
        raise KeyError(f"VQVAE has the step groups 'vqvae' and 'prior', got {group!r}")

    def _autoencoder_loss(self, x: torch.Tensor) -> ModelOutput:
        c = self.config
        z_e = self.encode(x)  # (B, D, h, w)
        flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, c.code_dim)  # (N, D), N = B·h·w
        if self.training and not bool(self.codebook_ready):
            self._init_codebook(flat)
        codes, z_q = self.quantize(z_e)  # (B, h, w), (B, D, h, w)
        recon = -self.obs.log_prob(self.decode(straight_through(z_e, z_q)), x.flatten(1)).mean()
        commit = commitment_loss(z_e, z_q, c.beta)
        loss = recon + commit
        logs = {"recon": recon.item(), "commitment": commit.item()}
        if c.codebook == "loss":
            cb = codebook_loss(z_e, z_q)
            loss = loss + cb
            logs["codebook_loss"] = cb.item()
        elif self.training:
            # Applied in after_step, so the codebook moves with the optimizer step and not on every loss call.
            self._pending_ema = code_statistics(codes, flat, c.codebook_size)
        logs.update(loss=loss.item(), perplexity=perplexity(codes, c.codebook_size).item(),
                    codes_used=float(codes.unique().numel()))
        if hasattr(self.obs, "log_std"):
            logs["decoder_log_std"] = self.obs.floored_log_std().mean().item()
        return ModelOutput(loss, logs)

    def _labels(self, batch: Batch) -> torch.Tensor | None:
        if not self.config.conditional:
            return None
        if batch.y is None:
            raise ValueError("VQVAE is conditional: the batch has no labels")
        return batch.y

    def _prior_loss(self, batch: Batch) -> ModelOutput:
        if int(self.steps) < self.config.prior_start:
            # A zero with a path to the prior's parameters: backward works and their gradients are exactly 0.
            zero = sum(q.sum() for q in self.prior.parameters()) * 0.0
            return ModelOutput(zero, {"prior_active": 0.0})
        codes = self.codes(batch.x)  # (B, h, w), detached
        nll = -self.prior.log_prob(codes, self._labels(batch)).mean()
        return ModelOutput(nll, {"prior_active": 1.0, "prior_nll": nll.item(),
                                 "prior_bits_per_code": bits_per_dim(nll.item(), codes[0].numel())})

    def after_step(self, group: str) -> None:
        if group != "vqvae":
            return
        self.obs.after_step()
        if self._pending_ema is not None:
            apply_ema(self.ema_count, self.ema_sum, self.codebook, self._pending_ema, self.config.ema_decay,
                      self.config.ema_eps)
            self._pending_ema = None
        self.steps.add_(1)

    # -- the contract ---------------------------------------------------------------------------------
    def prior_log_prob(self, codes: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """log p(codes) under the PixelCNN prior, (B, h, w) -> (B,). A conditional model given no
        condition marginalises the label under a uniform p(y): log (1/C) Σ_y p(codes | y)."""
        if not self.config.conditional:
            check_unconditional(self, condition)
            return self.prior.log_prob(codes)
        if condition is not None:
            return self.prior.log_prob(codes, condition)
        b, n_classes = codes.shape[0], self.data.num_classes
        per_class = torch.stack([self.prior.log_prob(codes, torch.full((b,), y, dtype=torch.long,
                                                                       device=codes.device))
                                 for y in range(n_classes)])  # (C, B)
        return torch.logsumexp(per_class, 0) - math.log(n_classes)

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | z_q(x)) + log p(z_q(x)) per row, in nats (model space). This is the ELBO of the
        one-point posterior q = δ(z_q(x)), a deterministic and loose lower bound on log p(x)."""
        codes, z_q = self.quantize(self.encode(x))
        return self.obs.log_prob(self.decode(z_q), x.flatten(1)) + self.prior_log_prob(codes, condition)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """Codes from the PixelCNN prior, looked up in the codebook, decoded, then x ~ p(x | z_q)
        (or its mean without `sample_noise`), clamped to model space: (n, *shape)."""
        if self.config.conditional:
            if condition is None:
                raise ValueError("VQVAE is conditional: pass condition= int64 labels of shape (n,)")
        else:
            check_unconditional(self, condition)
        codes = self.prior.sample(n, *self.grid, generator=generator, labels=condition)  # (n, h, w)
        params = self.decode(self.embed_codes(codes))
        x = self.obs.sample(params, generator) if self.config.sample_noise else self.obs.mean(params)
        return clamp_to_model_space(x, self.data).view(n, *self.data.shape)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at z_q(x): (B, *shape)."""
        _, z_q = self.quantize(self.encode(x))
        return clamp_to_model_space(self.obs.mean(self.decode(z_q)), self.data).view(x.shape)
