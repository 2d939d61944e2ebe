"""VQ-VAE-2 (Razavi, van den Oord & Vinyals 2019, "Generating Diverse High-Fidelity Images with
VQ-VAE-2"): a two-level hierarchy of vector-quantized codes with PixelCNN priors over both.

The autoencoder (§3.1, Fig. 2a, Alg. 1). The bottom encoder maps x (C, H, W) down by 2^s
(`downsample` stride-2 convs; the paper's s = 2, 4× down) to features h_b; the top encoder maps
h_b down by 2 more to z_e^top, which is quantized to e_top with its own codebook. The top decoder
brings e_top back to the bottom grid; concatenated with h_b and mixed by a 1×1 conv it gives the
bottom latents z_e^bottom, quantized to e_bottom with the second codebook. The decoder reads
e_bottom beside e_top upsampled by a stride-2 transposed conv. On 32×32 images: bottom codes
8×8, top codes 4×4. The paper gives the data flow (Fig. 2a, Alg. 1) but not every layer; the top
decoder, the 1×1 conv of the concatenation and the transposed conv before the decoder are the
common reading of it (as in rosinality/vq-vae-2-pytorch, the usual PyTorch port).

The loss per image is VQ-VAE's Eq. 3 summed over the levels (Alg. 1):

    L = -log p(x | e_bottom, e_top) + Σ_level β ‖z_e^level - sg[e^level]‖²

with β = 0.25, each level's term averaged over its latents, and each codebook moved by
exponential moving averages of its assignments (§3.1 updates the codebooks by EMA; VQ-VAE
App. A.1, γ = 0.99). The gradient crosses both quantizers by
the straight-through estimator. Everything per level reuses `gm.models.vqvae`: the nearest
codes, straight-through, the commitment, codebook and EMA formulas, the perplexity, the conv
encoder/decoder stacks and the observation heads.

The priors (§3.2, Fig. 2b, Alg. 2; `gm.nn.vq_priors`): a PixelCNN with causal multi-head
self-attention over the top codes, p(e_top), and a PixelCNN over the bottom codes whose every
layer reads a conditioning stack of the (fully visible) top codes, p(e_bottom | e_top). Each
trains as its own step group ("prior_top", "prior_bottom") by cross-entropy on the detached
codes of the current encoder, once the autoencoder has taken `prior_start` steps (the paper
trains the priors on the codes of a trained autoencoder). Sampling is Alg. 2: top codes from the
top prior, bottom codes from the bottom prior given them, then the decoder.

Likelihood ("bound"), as VQ-VAE's: the posterior is a point mass at the encoder's codes, so the
ELBO is log p(x | e_bottom, e_top) + log p(e_top) + log p(e_bottom | e_top), one term of
log p(x) = log Σ_z p(z) p(x | z): a true but loose lower bound. `log_prob` returns it.

Data where two levels do not fit. `downsample` unset takes the paper's 2 on images at least 16
pixels on a side (32×32 -> 8×8 / 4×4, 16×16 -> 4×4 / 2×2) and 1 on smaller ones (8×8 digits ->
4×4 / 2×2); a size that cannot be halved downsample + 1 times is a ConfigError naming
`downsample`. On vectors (toys) or with `arch: mlp` every net is an MLP, as VQ-VAE's `arch: mlp`:
the bottom level is a 1 × `mlp_codes` grid, the top a coarser 1 × `mlp_top_codes` one, and the
bottom prior's conditioning stack is an MLP from the top codes' embeddings to the bottom grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gm.core.config import ConfigError, bounded
from gm.core.numerics import bits_per_dim
from gm.core.registry import register_family
from gm.data.dataspec import DataSpec, halvable_image
from gm.models.base import Batch, Capabilities, GenerativeModel, ModelOutput, StepGroup
from gm.models.vqvae import (
    apply_ema,
    code_statistics,
    codebook_loss,
    commitment_loss,
    conv_decoder,
    conv_encoder,
    draw_codebook,
    embed_grid,
    perplexity,
    quantize_grid,
    resolve_arch,
    straight_through,
)
from gm.nn.mlp import Activation, check_unconditional, clamp_to_model_space, mlp
from gm.nn.observation import ObservationName, make_observation
from gm.nn.vq_priors import AttentionPixelCNN, ConditionedPixelCNN

__all__ = ["VQVAE2", "VQVAE2Config", "Codebook"]

@dataclass(frozen=True)
class VQVAE2Config:
    arch: Literal["auto", "conv", "mlp"] = "auto"  # auto: conv for (C, H, W) images, mlp for vectors (toys)
    hidden: int = bounded(64, gt=0)  # conv channels or MLP width (App. A, ImageNet 256²: 128 hidden units)
    depth: int = bounded(2, gt=0)  # conv: residual blocks per encoder/decoder (paper App. A: 2); mlp: hidden layers
    activation: Activation = "relu"  # MLP nets only; the conv nets use ReLU
    downsample: int | None = bounded(None, ge=1)  # bottom encoder's stride-2 convs (§3.1: 4× down, 2); None: 2 on
    #                                               images >= 16 pixels a side, 1 below; the top level halves again
    mlp_codes: int = bounded(2, gt=0)  # mlp: the bottom grid is 1 × mlp_codes
    mlp_top_codes: int = bounded(1, gt=0)  # mlp: the top grid is 1 × mlp_top_codes (coarser: <= mlp_codes)
    code_dim: int = bounded(16, gt=0)  # D of both codebooks (paper App. A: 64)
    codebook_size_top: int = bounded(64, gt=0)  # K_top (paper App. A: 512; small data needs fewer)
    codebook_size_bottom: int = bounded(64, gt=0)  # K_bottom (paper App. A: 512)
    beta: float = bounded(0.25, ge=0)  # commitment weight β (§3.1 / VQ-VAE §3.2: 0.25)
    codebook: Literal["ema", "loss"] = "ema"  # EMA updates (§3.1, VQ-VAE App. A.1) or VQ-VAE's codebook loss term
    ema_decay: float = bounded(0.99, gt=0, lt=1)  # γ (VQ-VAE App. A.1: 0.99)
    ema_eps: float = bounded(1e-5, gt=0)  # Laplace smoothing of the EMA counts (as vqvae)
    data_init: bool = True  # each codebook starts at its level's encodings of the first training batch
    decoder: ObservationName = "gaussian"  # p(x | e_bottom, e_top); discrete data: logistic or categorical
    decoder_components: int = bounded(1, gt=0)  # logistic mixture components per dimension
    min_log_std: float = -7.0  # floor of the Gaussian decoder's log σ (as vqvae)
    sample_noise: bool = True  # sample x ~ p(x | codes); False returns the decoder's mean
    lr: float = bounded(1e-3, gt=0)  # autoencoder Adam lr (as vqvae: high for short runs)
    prior_hidden: int = bounded(64, gt=0)  # channels of both PixelCNN priors (paper App. A: 512)
    prior_blocks: int = bounded(4, ge=0)  # mask-B residual blocks of each prior (paper App. A: 20)
    prior_kernel: int = bounded(7, gt=0)  # odd; the mask-A first layer's kernel (PixelRNN §3.5: 7×7)
    top_attention: int = bounded(1, ge=0)  # attention layers among the top prior's blocks (App. A: 4); <= prior_blocks
    attention_heads: int = bounded(4, gt=0)  # heads per attention layer (App. A: 8); must divide prior_hidden
    cond_blocks: int = bounded(2, ge=0)  # residual blocks of the bottom prior's conditioning stack (App. A: 20)
    prior_lr: float = bounded(1e-3, gt=0)  # Adam lr of both priors
    prior_start: int = bounded(0, ge=0)  # autoencoder steps before the priors train; 0 = alongside from the start

    @property
    def codebook_size(self) -> int:
        """Entries of both codebooks together: the top of `codebook_perplexity`, which pools both levels."""
        return self.codebook_size_top + self.codebook_size_bottom

    def validate(self):
        if self.prior_kernel % 2 != 1:
            raise ConfigError(f"prior_kernel: expected an odd kernel size, got {self.prior_kernel}")
        if self.top_attention > self.prior_blocks:
            raise ConfigError(f"top_attention: {self.top_attention} attention layers go between residual blocks; "
                              f"prior_blocks is {self.prior_blocks}")
        if self.prior_hidden % self.attention_heads:
            raise ConfigError(f"attention_heads: {self.attention_heads} heads must divide prior_hidden "
                              f"{self.prior_hidden}")
        if self.mlp_top_codes > self.mlp_codes:
            raise ConfigError(f"mlp_top_codes: the top level is the coarser one; {self.mlp_top_codes} > "
                              f"mlp_codes {self.mlp_codes}")


def auto_downsample(height: int, width: int) -> int:
    """The bottom level's halvings when the config leaves them unset: the paper's 2 (§3.1) on images at
    least 16 pixels a side, 1 on smaller ones, so that the top grid stays at least 2×2 (8×8 -> 4×4 -> 2×2)."""
    return 2 if min(height, width) >= 16 else 1


# --------------------------------------------------------------------------- one level's codebook


class Codebook(nn.Module):
    """One level's K × D codebook: nearest-code quantization (VQ-VAE Eq. 2) and its update, by EMA
    (`ema_codebook_update`, moved in `apply_ema` after the optimizer step) or as a parameter
    trained by the codebook loss. Buffers and initialisation as vqvae's (a pseudo-count of one,
    data initialisation from the first training batch)."""

    def __init__(self, k: int, d: int, kind: Literal["ema", "loss"], decay: float, eps: float, data_init: bool):
        super().__init__()
        self.k, self.kind, self.decay, self.eps = k, kind, decay, eps
        init = torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k)
        if kind == "loss":
            self.codebook = nn.Parameter(init)  # (K, D)
        else:
            self.register_buffer("codebook", init)  # (K, D), moved by EMA, not by the optimizer
            self.register_buffer("ema_count", torch.ones(k))  # (K,)
            self.register_buffer("ema_sum", init.clone())  # (K, D)
        self.register_buffer("ready", torch.tensor(not data_init))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 -> (B, D, h, w)."""
        return embed_grid(codes, self.codebook)

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest codes (B, h, w) of z_e (B, D, h, w) and their vectors (B, D, h, w), no straight-through."""
        return quantize_grid(z_e, self.codebook)

    @torch.no_grad()
    def init_from(self, z_e: torch.Tensor) -> None:
        """Codebook := K of the encodings z_e (B, D, h, w) (with replacement and a small jitter when there
        are fewer than K); rank 0's draw is broadcast so that workers agree."""
        new = draw_codebook(z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]), self.k)
        self.codebook.data.copy_(new)
        if self.kind == "ema":
            self.ema_sum.copy_(new * self.ema_count.unsqueeze(1))
        self.ready.fill_(True)

    def stash(self, codes: torch.Tensor, z_e: torch.Tensor) -> None:
        """Keep this batch's assignment counts n_i and sums Σ_j z_ij for `apply_ema`."""
        flat = z_e.detach().float().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])  # (N, D); fp32 under autocast
        self._pending = code_statistics(codes, flat, self.k)

    @torch.no_grad()
    def apply_ema(self) -> None:
        if self._pending is None:
            return
        apply_ema(self.ema_count, self.ema_sum, self.codebook, self._pending, self.decay, self.eps)
        self._pending = None


# --------------------------------------------------------------------------- the model


@dataclass
class Encoding:
    """One pass of the two-level encoder: each level's latents z_e, codes and code vectors e (B, D, h, w)."""

    z_top: torch.Tensor
    codes_top: torch.Tensor
    e_top: torch.Tensor
    z_bottom: torch.Tensor
    codes_bottom: torch.Tensor
    e_bottom: torch.Tensor


@register_family("vqvae2")
class VQVAE2(GenerativeModel):
    """VQ-VAE-2: two levels of EMA codebooks, a self-attention PixelCNN over the top codes and a
    top-conditioned PixelCNN over the bottom codes. `log_prob` is the deterministic-posterior ELBO
    log p(x | e_bottom, e_top) + log p(e_top) + log p(e_bottom | e_top), a loose lower bound."""

    config_cls = VQVAE2Config
    capabilities = Capabilities(likelihood="bound", reconstruction=True, codebook=True)

    def __init__(self, config: VQVAE2Config, data: DataSpec):
        super().__init__(config, data)
        c = config
        self.arch = arch = resolve_arch(c.arch, data)
        self.obs = make_observation(c.decoder, data, c.min_log_std, c.decoder_components)
        p, d, ch = self.obs.params_per_dim, c.code_dim, c.prior_hidden
        if arch == "conv":
            if data.kind == "image" and len(data.shape) == 3:
                down = c.downsample if c.downsample is not None else auto_downsample(*data.shape[1:])
            else:
                down = 1  # halvable_image refuses the data below, naming `arch`
            channels, height, width = halvable_image(data, down + 1, "downsample", fallback="mlp")
            self.grid_bottom = (height >> down, width >> down)
            self.grid_top = (height >> (down + 1), width >> (down + 1))
            self.encoder_bottom = conv_encoder(channels, c.hidden, c.hidden, down, c.depth)  # x -> h_b
            self.encoder_top = conv_encoder(c.hidden, c.hidden, d, 1, c.depth)  # h_b -> z_e^top, 2× down
            self.decoder_top = conv_decoder(d, c.hidden, d, 1, c.depth)  # e_top -> the bottom grid
            self.mix_bottom = nn.Conv2d(c.hidden + d, d, 1)  # [h_b, dec_t(e_top)] -> z_e^bottom
            self.upsample_top = nn.ConvTranspose2d(d, d, 4, stride=2, padding=1)  # e_top for the decoder
            self.decoder = conv_decoder(2 * d, c.hidden, channels * p, down, c.depth)
            # The conditioning stack: residual blocks on the top grid, then the stride-2 transposed conv.
            cond_net: nn.Module = conv_decoder(ch, ch, ch, 1, c.cond_blocks)
        else:
            nb, nt = c.mlp_codes, c.mlp_top_codes
            self.grid_bottom, self.grid_top = (1, nb), (1, nt)
            self.encoder_bottom = mlp(data.dim, c.hidden, c.hidden, c.depth, c.activation)
            self.encoder_top = mlp(c.hidden, nt * d, c.hidden, c.depth, c.activation)
            self.decoder_top = mlp(nt * d, c.hidden, c.hidden, c.depth, c.activation)
            self.mix_bottom = nn.Linear(2 * c.hidden, nb * d)
            self.upsample_top = nn.Identity()  # the MLP decoder reads both levels' flat codes
            self.decoder = mlp((nb + nt) * d, data.dim * p, c.hidden, c.depth, c.activation)
            cond_net = nn.Sequential(nn.Flatten(), mlp(nt * ch, nb * ch, ch, c.cond_blocks, "relu"),
                                     nn.Unflatten(1, (nb, ch)), _ToGrid())
        self.top = Codebook(c.codebook_size_top, d, c.codebook, c.ema_decay, c.ema_eps, c.data_init)
        self.bottom = Codebook(c.codebook_size_bottom, d, c.codebook, c.ema_decay, c.ema_eps, c.data_init)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # autoencoder steps taken
        self.prior_top = AttentionPixelCNN(c.codebook_size_top, ch, c.prior_blocks, c.prior_kernel,
                                           n_attention=c.top_attention, heads=c.attention_heads)
        self.prior_bottom = ConditionedPixelCNN(c.codebook_size_bottom, c.codebook_size_top, cond_net, ch,
                                                c.prior_blocks, c.prior_kernel)

    # -- groups ---------------------------------------------------------------------------------
    def step_groups(self) -> list[StepGroup]:
        priors = {id(q) for q in self.prior_top.parameters()} | {id(q) for q in self.prior_bottom.parameters()}
        autoencoder = [q for q in self.parameters() if id(q) not in priors]
        return [StepGroup("vqvae2", autoencoder, lr=self.config.lr),
                StepGroup("prior_top", list(self.prior_top.parameters()), lr=self.config.prior_lr),
                StepGroup("prior_bottom", list(self.prior_bottom.parameters()), lr=self.config.prior_lr)]

    # -- pieces -----------------------------------------------------------------------------------
    def _as_grid(self, flat: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """MLP output (B, h·w·D) -> (B, D, h, w)."""
        h, w = grid
        return flat.view(flat.shape[0], h, w, -1).permute(0, 3, 1, 2)

    def encode(self, x: torch.Tensor, straight: bool = False, init: bool = False) -> Encoding:
        """Alg. 1's encoder: x -> h_b -> z_e^top -> e_top; [h_b, dec_t(e_top)] -> z_e^bottom -> e_bottom.
        `straight`: the code vectors carry straight-through gradients (training); `init`: codebooks
        not yet set from data are set from this batch's encodings, the top one first."""
        if self.arch == "conv":
            h_b = self.encoder_bottom(x)  # (B, hidden, h_b, w_b)
            z_top = self.encoder_top(h_b)  # (B, D, h_t, w_t)
        else:
            h_b = self.encoder_bottom(x.flatten(1))  # (B, hidden)
            z_top = self._as_grid(self.encoder_top(h_b), self.grid_top)
        if init and not bool(self.top.ready):
            self.top.init_from(z_top.detach())
        codes_top, q_top = self.top.quantize(z_top)
        e_top = straight_through(z_top, q_top) if straight else q_top
        if self.arch == "conv":
            z_bottom = self.mix_bottom(torch.cat([h_b, self.decoder_top(e_top)], 1))  # (B, D, h_b, w_b)
        else:
            top_features = self.decoder_top(e_top.permute(0, 2, 3, 1).flatten(1))  # (B, hidden)
            z_bottom = self._as_grid(self.mix_bottom(torch.cat([h_b, top_features], 1)), self.grid_bottom)
        if init and not bool(self.bottom.ready):
            self.bottom.init_from(z_bottom.detach())
        codes_bottom, q_bottom = self.bottom.quantize(z_bottom)
        e_bottom = straight_through(z_bottom, q_bottom) if straight else q_bottom
        return Encoding(z_top, codes_top, e_top, z_bottom, codes_bottom, e_bottom)

    def decode(self, e_bottom: torch.Tensor, e_top: torch.Tensor) -> torch.Tensor:
        """Both levels' code vectors (B, D, h_b, w_b), (B, D, h_t, w_t) -> the observation's params
        (B, dim·P), laid out as (C, H, W, P)."""
        if self.arch == "mlp":
            return self.decoder(torch.cat([e_bottom.permute(0, 2, 3, 1).flatten(1),
                                           e_top.permute(0, 2, 3, 1).flatten(1)], 1))
        out = self.decoder(torch.cat([e_bottom, self.upsample_top(e_top)], 1))  # (B, C·P, H, W)
        b, _, height, width = out.shape
        out = out.view(b, self.data.shape[0], self.obs.params_per_dim, height, width)
        return out.permute(0, 1, 3, 4, 2).flatten(1)  # (B, C·H·W·P)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The top (B, h_t, w_t) and bottom (B, h_b, w_b) codes of x under the current encoder."""
        enc = self.encode(x)
        return enc.codes_top, enc.codes_bottom

    @torch.no_grad()
    def level_perplexities(self, x: torch.Tensor) -> dict[str, float]:
        """Each level's codebook perplexity over the codes of the batch x: {"top": 1..K_top, "bottom": 1..K_bottom}."""
        top, bottom = self.codes(x)
        return {"top": perplexity(top, self.config.codebook_size_top).item(),
                "bottom": perplexity(bottom, self.config.codebook_size_bottom).item()}

    @torch.no_grad()
    def codebook_perplexity(self, x: torch.Tensor) -> float:
        """exp(entropy of the average code usage) over all codes of the batch x, both levels pooled as
        draws from one codebook of K_top + K_bottom entries; from 1 to K_top + K_bottom. Per level:
        `level_perplexities`."""
        top, bottom = self.codes(x)
        pooled = torch.cat([top.flatten(), bottom.flatten() + self.config.codebook_size_top])
        return perplexity(pooled, self.config.codebook_size).item()

    # -- losses -------------------------------------------------------------------------------------
    def loss(self, batch: Batch, group: str) -> ModelOutput:
        if group == "vqvae2":
            return self._autoencoder_loss(batch.x)
        if group == "prior_top":
            return self._prior_loss(batch.x, "top")
        if group == "prior_bottom":
            return self._prior_loss(batch.x, "bottom")
        raise KeyError(f"VQVAE2 has the step groups 'vqvae2', 'prior_top' and 'prior_bottom', got {group!r}")

    def _autoencoder_loss(self, x: torch.Tensor) -> ModelOutput:
        c = self.config
        enc = self.encode(x, straight=True, init=self.training)
        recon = -self.obs.log_prob(self.decode(enc.e_bottom, enc.e_top), x.flatten(1)).mean()
        commit_top = commitment_loss(enc.z_top, enc.e_top, c.beta)
        commit_bottom = commitment_loss(enc.z_bottom, enc.e_bottom, c.beta)
        loss = recon + commit_top + commit_bottom
        # Tensors, not floats: the step never waits for the device (ModelOutput).
        logs: dict[str, torch.Tensor] = {"recon": recon, "commitment_top": commit_top,
                                         "commitment_bottom": commit_bottom}
        for level, z, codes in (("top", enc.z_top, enc.codes_top), ("bottom", enc.z_bottom, enc.codes_bottom)):
            book: Codebook = getattr(self, level)
            if c.codebook == "loss":
                cb = codebook_loss(z, book.lookup(codes))
                loss = loss + cb
                logs[f"codebook_loss_{level}"] = cb
            elif self.training:
                book.stash(codes, z)  # applied in after_step, with the optimizer step
            logs[f"perplexity_{level}"] = perplexity(codes, book.k).float()
            logs[f"codes_used_{level}"] = (torch.bincount(codes.flatten(), minlength=book.k) > 0).sum().float()
        logs["loss"] = loss
        if hasattr(self.obs, "log_std"):
            logs["decoder_log_std"] = self.obs.floored_log_std().mean()
        return ModelOutput(loss, logs)

    def _prior_loss(self, x: torch.Tensor, level: str) -> ModelOutput:
        prior = self.prior_top if level == "top" else self.prior_bottom
        if int(self.steps) < self.config.prior_start:
            zero = sum(q.sum() for q in prior.parameters()) * 0.0  # backward works; gradients exactly 0
            return ModelOutput(zero, {"prior_active": 0.0})
        top, bottom = self.codes(x)  # detached
        if level == "top":
            nll = -prior.log_prob(top).mean()
            n_codes = top[0].numel()
        else:
            nll = -prior.log_prob(bottom, top).mean()
            n_codes = bottom[0].numel()
        return ModelOutput(nll, {"prior_active": 1.0, f"prior_nll_{level}": nll,
                                 f"prior_bits_per_code_{level}": bits_per_dim(nll, n_codes)})

    def after_step(self, group: str) -> None:
        if group != "vqvae2":
            return
        self.obs.after_step()
        if self.config.codebook == "ema":
            self.top.apply_ema()
            self.bottom.apply_ema()
        self.steps.add_(1)

    # -- the contract ---------------------------------------------------------------------------------
    def prior_log_prob(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """log p(e_top) + log p(e_bottom | e_top) under the two PixelCNNs: (B, h_t, w_t), (B, h_b, w_b) -> (B,)."""
        return self.prior_top.log_prob(top) + self.prior_bottom.log_prob(bottom, top)

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | e_bottom, e_top) + log p(e_top) + log p(e_bottom | e_top) per row, in nats (model
        space): the ELBO of the one-point posterior at the encoder's codes, a loose lower bound on log p(x)."""
        check_unconditional(self, condition)
        enc = self.encode(x)
        return (self.obs.log_prob(self.decode(enc.e_bottom, enc.e_top), x.flatten(1))
                + self.prior_log_prob(enc.codes_top, enc.codes_bottom))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """Alg. 2: top codes from the top prior, bottom codes from the bottom prior given them, both
        looked up and decoded, then x ~ p(x | codes) (or its mean without `sample_noise`), clamped to
        model space: (n, *shape)."""
        check_unconditional(self, condition)
        top = self.prior_top.sample(n, *self.grid_top, generator=generator)  # (n, h_t, w_t)
        bottom = self.prior_bottom.sample(n, *self.grid_bottom, generator=generator, labels=top)  # (n, h_b, w_b)
        params = self.decode(self.bottom.lookup(bottom), self.top.lookup(top))
        x = self.obs.sample(params, generator) if self.config.sample_noise else self.obs.mean(params)
        return clamp_to_model_space(x, self.data).view(n, *self.data.shape)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at the codes of x: (B, *shape)."""
        enc = self.encode(x)
        return clamp_to_model_space(self.obs.mean(self.decode(enc.e_bottom, enc.e_top)), self.data).view(x.shape)


class _ToGrid(nn.Module):
    """(B, n, C) -> (B, C, 1, n): an MLP conditioning stack's output as a 1 × n feature map."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.permute(0, 2, 1).unsqueeze(2)
