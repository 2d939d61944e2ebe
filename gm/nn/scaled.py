"""The building blocks of the scaled GANs: ProGAN (Karras et al. 2018), StyleGAN (Karras et al. 2019),
SNGAN and the projection discriminator (Miyato et al. 2018; Miyato & Koyama 2018), SAGAN (Zhang et al.
2019) and BigGAN (Brock et al. 2019).

Each block is the paper's definition and nothing more; a model file assembles them. Blocks that draw
noise take an explicit `torch.Generator`, so a seeded run gives the same numbers on every device.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from gm.core.numerics import randn

PIXEL_NORM_EPS = 1e-8  # ProGAN §4.2
MBSTD_GROUP = 4  # ProGAN's code (networks.py, minibatch_stddev_layer)
MBSTD_EPS = 1e-8
HE_GAIN = math.sqrt(2.0)  # He et al. 2015, for ReLU/LeakyReLU layers
ORTHO_BETA = 1e-4  # BigGAN §3.1
TRUNCATION_ROUNDS = 1000  # at threshold 0.04 (BigGAN's smallest) 0.968^1000 ≈ 1e-14 of entries still outside


class PixelNorm(nn.Module):
    """ProGAN's pixelwise feature normalisation: x / sqrt(mean over channels of x² + ε), per pixel.

    Dim 1 is the channel (feature) axis, so it also normalises latent vectors (B, Z), as StyleGAN's
    mapping network does with z."""

    def __init__(self, eps: float = PIXEL_NORM_EPS):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


class EqualLinear(nn.Module):
    """A linear layer with ProGAN's equalised learning rate.

    The weight is stored N(0, 1/lr_mul²) and scaled at run time by lr_mul · gain / sqrt(fan_in), so
    every layer's parameters sit on the same scale and Adam's per-parameter step is the same relative
    change everywhere. `lr_mul` < 1 slows a layer down by that factor (StyleGAN's mapping network: 0.01); the bias is
    likewise stored divided by lr_mul, and starts at `bias_init` in effective units."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gain: float = HE_GAIN,
                 lr_mul: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_mul)) if bias else None
        self.scale = gain / math.sqrt(in_features) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mul
        return F.linear(x, self.weight * self.scale, bias)


class EqualConv2d(nn.Module):
    """A 2-D convolution with the equalised learning rate of `EqualLinear` (fan_in = C_in · k²)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, gain: float = HE_GAIN, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = gain / math.sqrt(in_channels * kernel_size ** 2) * lr_mul
        self.lr_mul = lr_mul
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mul
        return F.conv2d(x, self.weight * self.scale, bias, stride=self.stride, padding=self.padding)


class MinibatchStdDev(nn.Module):
    """ProGAN's minibatch standard deviation (§3): one more feature map, the mean over channels and
    pixels of each feature's std over a group of samples, so the critic can see a lack of variety.

    As in ProGAN's code, the group is min(group_size, B) samples taken with stride B / group (sample n
    is in group n mod B/group) and the std is the population one, sqrt(mean of squares + ε)."""

    def __init__(self, group_size: int = MBSTD_GROUP, eps: float = MBSTD_EPS):
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size, self.eps = group_size, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = min(self.group_size, b)
        if b % g:
            raise ValueError(f"minibatch stddev: batch size {b} is not divisible by the group size {g}")
        y = x.view(g, b // g, c, h, w)  # (G, M, C, H, W): sample n = i·M + m is in group m
        std = (y.var(dim=0, unbiased=False) + self.eps).sqrt()  # (M, C, H, W)
        stat = std.mean(dim=(1, 2, 3)).view(1, b // g, 1, 1, 1)  # (1, M, 1, 1, 1)
        return torch.cat([x, stat.expand(g, -1, 1, h, w).reshape(b, 1, h, w)], dim=1)  # (B, C + 1, H, W)


def fade_in(low_rgb: torch.Tensor, high_rgb: torch.Tensor, alpha: float) -> torch.Tensor:
    """ProGAN's smooth fade-in of a new resolution (§3, Fig. 2): (1 - α) · nearest-upsampled RGB of
    the previous resolution + α · RGB of the new block, α going 0 -> 1 while the block is grown."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"fade-in alpha must lie in [0, 1], got {alpha}")
    up = F.interpolate(low_rgb, size=high_rgb.shape[-2:], mode="nearest")  # (B, C, H, W)
    return (1.0 - alpha) * up + alpha * high_rgb


@contextlib.contextmanager
def power_iterations_paused(module: nn.Module):
    """Within the block, spectrally normalised layers use their current estimate of σ without a power
    iteration: in training mode every forward would otherwise update it, so drawing samples (or reading the
    critic twice) would change the network it reads."""
    norms = [m for m in module.modules() if type(m).__name__ == "_SpectralNorm"]
    modes = [m.training for m in norms]
    for m in norms:
        m.train(False)
    try:
        yield module
    finally:
        for m, mode in zip(norms, modes):
            m.train(mode)


@contextlib.contextmanager
def running_stats_paused(module: nn.Module):
    """Within the block, batch norms in training mode still normalise by the batch's statistics but leave
    their running statistics (and counts) as they are: drawing samples must not change the model."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield module
    finally:
        for m in norms:
            m.track_running_stats = True


def apply_spectral_norm(module: nn.Module, n_power_iterations: int = 1, eps: float = 1e-12) -> nn.Module:
    """Spectrally normalise (Miyato et al. 2018) the weight of every Linear and convolution in `module`,
    in place; returns `module`. One power iteration per training forward is the paper's choice: the
    estimate of σ(W) improves across steps as W moves slowly."""
    targets = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    for m in targets:
        if not parametrize.is_parametrized(m, "weight"):
            spectral_norm(m, n_power_iterations=n_power_iterations, eps=eps)
    return module


class SelfAttention(nn.Module):
    """SAGAN's self-attention block (Zhang et al. 2019, §3).

    f, g, h are 1×1 convs to C/8 channels, s_ij = f(x_i)ᵀ g(x_j), β_{j,i} = softmax over positions i,
    o_j = v(Σ_i β_{j,i} h(x_i)) with v a 1×1 conv back to C channels, and y = γ·o + x. γ starts at 0,
    so the block begins as the identity and learns to lean on non-local evidence."""

    def __init__(self, channels: int):
        super().__init__()
        if channels < 8:
            raise ValueError(f"self-attention needs at least 8 channels (C/8 of them attend), got {channels}")
        inner = channels // 8
        self.f = nn.Conv2d(channels, inner, 1, bias=False)
        self.g = nn.Conv2d(channels, inner, 1, bias=False)
        self.h = nn.Conv2d(channels, inner, 1, bias=False)
        self.v = nn.Conv2d(inner, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        f, g, h = (conv(x).flatten(2) for conv in (self.f, self.g, self.h))  # (B, C/8, N) each
        beta = torch.softmax(f.transpose(1, 2) @ g, dim=1)  # (B, N_i, N_j), normalised over i
        o = self.v((h @ beta).view(b, -1, height, width))  # (B, C, H, W)
        return self.gamma * o + x


class AdaIN(nn.Module):
    """StyleGAN's adaptive instance normalisation (§2): each channel of x is normalised over its pixels,
    then scaled and shifted by a style y = (y_s, y_b) = A(w), A an `EqualLinear` (gain 1, as StyleGAN).

    As in StyleGAN's code, y_s = 1 + A(w)_s, so a zero style leaves the normalised features as they are."""

    def __init__(self, channels: int, style_dim: int, eps: float = 1e-8):
        super().__init__()
        self.style = EqualLinear(style_dim, 2 * channels, gain=1.0)
        self.eps = eps

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y_s, y_b = self.style(w)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
        return (1.0 + y_s) * (x - mean) * torch.rsqrt(var + self.eps) + y_b


class NoiseInjection(nn.Module):
    """StyleGAN's noise inputs (§3.2): one N(0, 1) image per sample, the same for every channel, scaled
    by a learned per-channel weight that starts at 0 (the generator starts noise-free)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        if noise is None:
            noise = randn((b, 1, h, w), generator, device=x.device).to(x.dtype)
        return x + self.weight.view(1, -1, 1, 1) * noise


def hinge_critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The hinge critic loss (Lim & Ye 2017; SAGAN, BigGAN): E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's side of the hinge loss: -E[D(G(z))]."""
    return -fake_logits.mean()


class ProjectionHead(nn.Module):
    """The projection discriminator's output (Miyato & Koyama 2018, eq. 3): ψ(φ(x)) + ⟨embed(y), φ(x)⟩,
    the class entering as an inner product with the features rather than concatenated to them."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.psi = nn.Linear(feature_dim, 1)
        self.embed = nn.Embedding(num_classes, feature_dim)

    def forward(self, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # features: φ(x) (B, F); y: integer labels (B,) -> logits (B,)
        return self.psi(features).squeeze(1) + (self.embed(y) * features).sum(dim=1)


def _raw_weight(m: nn.Module) -> torch.Tensor:
    # The trainable tensor: under spectral norm that is the un-normalised original, as in BigGAN's code.
    return m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight


def orthogonal_regularization(module: nn.Module, beta: float = ORTHO_BETA) -> torch.Tensor:
    """BigGAN's orthogonal regularisation (§3.1, eq. 3), summed over the Linear and conv weights of `module`.

    R(W) = β ‖W Wᵀ ⊙ (1 - I)‖²_F with W of shape (out, rest): the Gram matrix of the output filters,
    as BigGAN's code (utils.ortho) computes it; the paper writes WᵀW with the filters as columns. Only
    the filters' mutual cosines are pushed to 0, not their norms. Its gradient is 4β (W Wᵀ ⊙ (1 - I)) W
    (BigGAN's code applies 2·(…)W, i.e. β there is twice this one)."""
    terms = []
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            w = _raw_weight(m)
            w = (w.transpose(0, 1) if getattr(m, "transposed", False) else w).flatten(1)  # (out, rest)
            gram = w @ w.t()  # (out, out)
            terms.append((gram * (1.0 - torch.eye(len(gram), device=w.device, dtype=w.dtype))).pow(2).sum())
    return beta * torch.stack(terms).sum() if terms else torch.zeros(())


class ConditionalBatchNorm2d(nn.Module):
    """BigGAN's class-conditional batch norm: BatchNorm2d without its own affine, then a gain
    1 + gain(c) and a bias bias(c), both linear (no bias) in a conditioning vector c.

    In BigGAN c is [z chunk, shared class embedding]: one embedding for all layers, projected per
    layer here, instead of a table of gains and biases per layer and class."""

    def __init__(self, num_features: int, cond_dim: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.gain = nn.Linear(cond_dim, num_features, bias=False)
        self.bias = nn.Linear(cond_dim, num_features, bias=False)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gain = 1.0 + self.gain(c)[:, :, None, None]  # (B, C, 1, 1)
        return self.bn(x) * gain + self.bias(c)[:, :, None, None]


def truncated_noise(shape: tuple[int, ...], threshold: float, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None, max_rounds: int = TRUNCATION_ROUNDS) -> torch.Tensor:
    """BigGAN's truncation trick (§3.1): N(0, 1) draws, every entry with |z_i| > threshold drawn again
    until none is left, i.e. N(0, 1) truncated to [-threshold, threshold]."""
    if threshold <= 0:
        raise ValueError(f"truncation threshold must be > 0, got {threshold}")
    z = randn(shape, generator, device=device)
    for _ in range(max_rounds):
        outside = z.abs() > threshold
        if not outside.any():
            return z
        z = torch.where(outside, randn(shape, generator, device=device), z)
    raise RuntimeError(f"truncated_noise: entries still beyond {threshold} after {max_rounds} rounds")


def truncate_w(w: torch.Tensor, w_avg: torch.Tensor, psi: float) -> torch.Tensor:
    """StyleGAN's truncation in W (§2, Appendix B): w' = w̄ + ψ (w - w̄); ψ = 0 gives the average w."""
    return w_avg + psi * (w - w_avg)
