"""Flow layers for images (B, C, H, W): Glow's step (Kingma & Dhariwal 2018) — ActNorm, an
invertible 1×1 convolution with the LU parameterisation, affine coupling — NICE's additive
coupling (Dinh et al. 2015), RealNVP's squeeze and masks (Dinh et al. 2017), and the
multi-scale factor-out of both.

Convention (as `gm.flows.layers.Flow`): `forward` maps in the *sampling* direction z -> x and
returns log|det ∂x/∂z| (B,); `inverse` maps in the *density* direction x -> z and returns
log|det ∂z/∂x| (B,). The papers write these layers in the density direction, so a paper's
equation is our `inverse` and its "reverse" our `forward`. Every layer is a bijection of a
tensor onto one of the same size; only `Squeeze` changes the shape (C, H, W) <-> (4C, H/2, W/2).

ActNorm, the 1×1 convolution and the couplings act along dim 1 and broadcast over whatever
follows it, so they work on vectors (B, D) as well (ActNorm1d, an LU-parameterised D×D linear
map, an MLP coupling): NICE and Glow's vector fallback use them that way.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gm.flows.layers import Flow
from gm.core.dist import world_size
from gm.nn.precision import fp32, full_precision

__all__ = [
    "ActNorm", "InvConv1x1", "AffineCoupling", "AdditiveCoupling", "Squeeze", "FactorOut", "FlowStack",
    "MultiScaleFlow", "checkerboard_mask", "channel_mask", "coupling_conv_net",
]

ScaleKind = Literal["sigmoid", "tanh"]


def _refuse(layer: Flow, context: torch.Tensor | None, params: torch.Tensor | None) -> None:
    if context is not None or params is not None:
        raise ValueError(f"{type(layer).__name__} takes neither a context nor params")


def _per_row(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A scalar log-det broadcast to one per row: (B,)."""
    return value.expand(x.shape[0])


def _features_view(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-feature vector (C,) shaped to broadcast against x (B, C, *rest)."""
    return p.view(1, -1, *([1] * (x.dim() - 2)))


# --------------------------------------------------------------------------- ActNorm


class ActNorm(Flow):
    """Per-channel affine with data-dependent initialisation (Kingma & Dhariwal 2018, §3.1 and
    Table 1): density direction z = s ⊙ x + b, log|det ∂z/∂x| = h·w·Σ log|s|, s = exp(log_scale).

    On its first density pass in training mode (or through `initialize`), s and b are set so that
    the batch's post-actnorm activations have zero mean and unit variance per channel; the
    `initialized` buffer is saved with the weights, so a loaded checkpoint is not re-initialised.
    Under torch.distributed the batch statistics are averaged over the workers, so every rank
    starts from the same weights. Works on (B, C, H, W) and on vectors (B, D) (ActNorm1d).
    """

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.log_scale = nn.Parameter(torch.zeros(num_features))  # (C,)
        self.bias = nn.Parameter(torch.zeros(num_features))  # (C,)
        self.register_buffer("initialized", torch.tensor(False))  # persistent: checkpoints keep the init
        self._known_initialized = False  # the buffer read once True: no device read per training step

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # read the loaded buffer again

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set s = 1/(std + eps), b = -mean/(std + eps) per channel from x (B, C, ...)."""
        dims = [0, *range(2, x.dim())]
        stats = torch.stack([x.mean(dims), x.pow(2).mean(dims)])  # (2, C): E[x], E[x²]
        if world_size() > 1:
            dist.all_reduce(stats)
            stats /= world_size()
        mean, sq = stats
        std = (sq - mean.pow(2)).clamp_min(0).sqrt()
        log_scale = -torch.log(std + self.eps)
        self.log_scale.copy_(log_scale)
        self.bias.copy_(-mean * torch.exp(log_scale))
        self.initialized.fill_(True)
        self._known_initialized = True

    def _log_det(self, x: torch.Tensor) -> torch.Tensor:
        spatial = math.prod(x.shape[2:])  # h·w for images, 1 for vectors
        return _per_row(x, spatial * self.log_scale.sum())

    def forward(self, z, context=None, params=None):
        """Sampling: x = (z - b)/s."""
        _refuse(self, context, params)
        x = (z - _features_view(self.bias, z)) * torch.exp(-_features_view(self.log_scale, z))
        return x, -self._log_det(z)

    def inverse(self, x, context=None, params=None):
        """Density: z = s·x + b (Table 1); initialises on the first training batch."""
        _refuse(self, context, params)
        if self.training and not self._known_initialized:
            if bool(self.initialized):
                self._known_initialized = True
            else:
                self.initialize(x)
        z = x * torch.exp(_features_view(self.log_scale, x)) + _features_view(self.bias, x)
        return z, self._log_det(x)


# --------------------------------------------------------------------------- 1×1 convolution


class InvConv1x1(Flow):
    """Invertible 1×1 convolution with the LU parameterisation (Kingma & Dhariwal 2018, §3.2,
    Eq. 10): W = P·L·(U + diag(sign(s)·exp(log|s|))), P a fixed permutation, L unit lower
    triangular, U strictly upper triangular. Density direction z_ij = W x_ij for every pixel,
    log|det ∂z/∂x| = h·w·Σ log|s|, O(C) instead of O(C³).

    Initialised from a random rotation (the paper's init). P and sign(s) are buffers saved with
    the weights: they come from the random init, not from the config. On vectors (B, D) it is an
    invertible D×D linear map.
    """

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]  # (C, C) random rotation
        perm, lower, upper = torch.linalg.lu(w)  # w = P·L·U
        s = upper.diagonal()
        self.register_buffer("perm", perm)  # (C, C)
        self.register_buffer("sign_s", torch.sign(s))  # (C,)
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1), persistent=False)
        self.register_buffer("eye", torch.eye(channels), persistent=False)
        self.lower = nn.Parameter(lower)  # (C, C); only the strict lower part is used
        self.upper = nn.Parameter(torch.triu(upper, 1))  # (C, C); only the strict upper part is used
        self.log_s = nn.Parameter(s.abs().log())  # (C,)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P, L, U): (C, C) each, with W = P·L·U."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm, lower, upper

    def weight(self) -> torch.Tensor:
        perm, lower, upper = self.factors()
        return perm @ lower @ upper  # (C, C)

    def inverse_weight(self) -> torch.Tensor:
        """W⁻¹ = U⁻¹·L⁻¹·Pᵀ by triangular solves (exact, no general inverse)."""
        perm, lower, upper = self.factors()
        eye = self.eye.to(lower.dtype)
        lower_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        upper_inv = torch.linalg.solve_triangular(upper, eye, upper=True)
        return upper_inv @ lower_inv @ perm.T

    def _log_det(self, x: torch.Tensor) -> torch.Tensor:
        return _per_row(x, math.prod(x.shape[2:]) * self.log_s.sum())

    def forward(self, z, context=None, params=None):
        """Sampling: x_ij = W⁻¹ z_ij (fp32, autocast off: a bijection whose log-det is exact)."""
        _refuse(self, context, params)
        with full_precision(z.device):
            return torch.einsum("ij,bj...->bi...", self.inverse_weight(), fp32(z)), -self._log_det(z)

    def inverse(self, x, context=None, params=None):
        """Density: z_ij = W x_ij (fp32, autocast off)."""
        _refuse(self, context, params)
        with full_precision(x.device):
            return torch.einsum("ij,bj...->bi...", self.weight(), fp32(x)), self._log_det(x)


# --------------------------------------------------------------------------- couplings


def checkerboard_mask(channels: int, height: int, width: int, parity: int = 0) -> torch.Tensor:
    """RealNVP's spatial checkerboard (Dinh et al. 2017, §3.4, Fig. 3 left): (C, H, W), 1 where
    (i + j) % 2 == parity, the same for every channel."""
    grid = (torch.arange(height)[:, None] + torch.arange(width)[None, :]) % 2 == parity  # (H, W)
    return grid.expand(channels, height, width).float()


def channel_mask(channels: int, *spatial: int, parity: int = 0) -> torch.Tensor:
    """RealNVP's channel-wise mask (Dinh et al. 2017, §3.4, Fig. 3 right), also Glow's split:
    (C, *spatial), 1 on the first C//2 channels (parity 0) or on the others (parity 1)."""
    first = (torch.arange(channels) < channels // 2).float()  # (C,)
    mask = first if parity == 0 else 1 - first
    return mask.view(channels, *([1] * len(spatial))).expand(channels, *spatial).clone()


def coupling_conv_net(in_channels: int, out_channels: int, hidden: int, depth: int) -> nn.Sequential:
    """Glow's coupling network NN() (Kingma & Dhariwal 2018, §3.3): a 3×3 conv, depth - 1 1×1
    convs, ReLUs, and a zero-initialised 3×3 output conv, so every coupling starts at a fixed
    map. (B, C_in, H, W) -> (B, C_out, H, W)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(hidden, hidden, 1), nn.ReLU()]
    out = nn.Conv2d(hidden, out_channels, 3, padding=1)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(*layers, out)


class _MaskedCoupling(Flow):
    """A coupling with a binary `mask` (C, H, W) or (D,): 1 marks the part passed through and
    read by `net`, 0 the part transformed. `net` maps x·mask (B, C, ...) to (B, k·C, ...)."""

    def __init__(self, mask: torch.Tensor, net: nn.Module):
        super().__init__()
        if mask.min() == mask.max():
            raise ValueError("a coupling mask must pass some dimensions and transform others")
        self.register_buffer("mask", mask.float(), persistent=False)  # rebuilt from the architecture
        self.net = net


class AffineCoupling(_MaskedCoupling):
    """Affine coupling (Dinh et al. 2017, Eqs. 7-9; Kingma & Dhariwal 2018, Table 1): with
    (raw, t) = NN(m⊙x), density direction z = m⊙x + (1 - m)⊙(x⊙s + t),
    log|det ∂z/∂x| = Σ (1 - m)⊙log s.

    `scale` "sigmoid": s = sigmoid(raw + 2), Glow's choice (its code's `sigmoid(h + 2.)`); "tanh":
    log s = bound·tanh(raw), RealNVP's bounded scale. `net` outputs 2C channels (2D features).
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module, scale: ScaleKind = "sigmoid", bound: float = 2.0):
        super().__init__(mask, net)
        if scale not in ("sigmoid", "tanh"):
            raise ValueError(f"scale must be 'sigmoid' or 'tanh', got {scale!r}")
        self.scale, self.bound = scale, bound

    def _log_scale_shift(self, x_pass: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw, t = fp32(self.net(x_pass)).chunk(2, dim=1)  # (B, C, ...) each; fp32 under autocast
        log_s = F.logsigmoid(raw + 2.0) if self.scale == "sigmoid" else self.bound * torch.tanh(raw)
        free = 1 - self.mask
        return free * log_s, free * t

    def forward(self, z, context=None, params=None):
        """Sampling: x = m⊙z + (1 - m)⊙(z - t)/s; t, s read from m⊙z = m⊙x."""
        _refuse(self, context, params)
        log_s, t = self._log_scale_shift(z * self.mask)
        return (z - t) * torch.exp(-log_s), -log_s.flatten(1).sum(-1)

    def inverse(self, x, context=None, params=None):
        _refuse(self, context, params)
        log_s, t = self._log_scale_shift(x * self.mask)
        return x * torch.exp(log_s) + t, log_s.flatten(1).sum(-1)


class AdditiveCoupling(_MaskedCoupling):
    """Additive coupling (Dinh et al. 2015, §3.2): density direction
    z = m⊙x + (1 - m)⊙(x + t(m⊙x)); volume preserving, log|det| = 0. `net` outputs C channels
    (D features)."""

    def forward(self, z, context=None, params=None):
        _refuse(self, context, params)
        return z - (1 - self.mask) * fp32(self.net(z * self.mask)), z.new_zeros(z.shape[0])

    def inverse(self, x, context=None, params=None):
        _refuse(self, context, params)
        return x + (1 - self.mask) * fp32(self.net(x * self.mask)), x.new_zeros(x.shape[0])


# --------------------------------------------------------------------------- squeeze, factor-out


class Squeeze(Flow):
    """Space-to-depth 2×2 (Dinh et al. 2017, §3.6, Fig. 3): density direction
    (B, C, H, W) -> (B, 4C, H/2, W/2), each 2×2 block becoming 4 channels; the sampling
    direction is depth-to-space. A permutation: log|det| = 0."""

    def forward(self, z, context=None, params=None):
        _refuse(self, context, params)
        b, c4, h, w = z.shape
        x = z.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)  # (B, C, H/2, 2, W/2, 2)
        return x.reshape(b, c4 // 4, 2 * h, 2 * w), z.new_zeros(b)

    def inverse(self, x, context=None, params=None):
        _refuse(self, context, params)
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even H and W, got {h}×{w}")
        z = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)  # (B, C, 2, 2, H/2, W/2)
        return z.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)


class FactorOut(Flow):
    """Multi-scale factor-out (Dinh et al. 2017, §3.6, Eq. 13; Glow's split): of x = [h, x₂]
    (B, C, H, W) the first `keep` = C - C//2 channels h go on through the flow and x₂ is
    factored out to a Gaussian prior. With `learned_prior` (Glow's code: split2d's prior) that
    prior is N(μ(h), σ(h)²) from a zero-initialised 3×3 conv of h; as a bijection on the whole
    tensor, the density direction is [h, x₂] -> [h, (x₂ - μ(h))/σ(h)], log|det| = -Σ log σ(h),
    and the factored channels are then scored under N(0, I). Without it μ = 0, σ = 1.
    """

    def __init__(self, channels: int, learned_prior: bool = True):
        super().__init__()
        if channels < 2:
            raise ValueError(f"FactorOut needs at least 2 channels, got {channels}")
        self.keep, self.out = channels - channels // 2, channels // 2
        self.prior: nn.Conv2d | None = None
        if learned_prior:
            self.prior = nn.Conv2d(self.keep, 2 * self.out, 3, padding=1)
            nn.init.zeros_(self.prior.weight)
            nn.init.zeros_(self.prior.bias)

    def _mean_log_std(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prior is None:
            zero = h.new_zeros(h.shape[0], self.out, *h.shape[2:])
            return zero, zero
        mean, log_std = fp32(self.prior(h)).chunk(2, dim=1)  # (B, C//2, H, W) each; fp32 under autocast
        return mean, log_std

    def forward(self, z, context=None, params=None):
        """Sampling: [h, ε] -> [h, μ(h) + σ(h)·ε]."""
        _refuse(self, context, params)
        h, eps = z.split([self.keep, self.out], dim=1)
        mean, log_std = self._mean_log_std(h)
        return torch.cat([h, mean + torch.exp(log_std) * eps], 1), log_std.flatten(1).sum(-1)

    def inverse(self, x, context=None, params=None):
        _refuse(self, context, params)
        h, x2 = x.split([self.keep, self.out], dim=1)
        mean, log_std = self._mean_log_std(h)
        return torch.cat([h, (x2 - mean) * torch.exp(-log_std)], 1), -log_std.flatten(1).sum(-1)


# --------------------------------------------------------------------------- stacks


class FlowStack(Flow):
    """f_K ∘ ... ∘ f_1 over tensors of any shape (B, ...), log-dets summed per row; unlike
    `gm.flows.layers.FlowSequence`, which sums over the last dim of vectors, it keeps (B,)
    for images. `layers` are listed in the sampling direction (the first acts on the latent)."""

    def __init__(self, layers: Sequence[Flow] = ()):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, z, context=None, params=None):
        _refuse(self, context, params)
        log_det = z.new_zeros(z.shape[0])
        for layer in self.layers:
            z, ld = layer(z)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, x, context=None, params=None):
        _refuse(self, context, params)
        log_det = x.new_zeros(x.shape[0])
        for layer in reversed(self.layers):
            x, ld = layer.inverse(x)
            log_det = log_det + ld
        return x, log_det


def _shape_after(steps: Sequence[Flow], shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, H, W) after `steps` in the density order: each `Squeeze`, the only layer that changes
    the shape, maps it to (4C, H/2, W/2)."""
    c, h, w = shape
    for layer in steps:
        if isinstance(layer, Squeeze):
            if h % 2 or w % 2:
                raise ValueError(f"Squeeze needs even H and W, got {h}×{w}")
            c, h, w = 4 * c, h // 2, w // 2
    return c, h, w


class MultiScaleFlow(nn.Module):
    """The multi-scale architecture (Dinh et al. 2017, §3.6; Kingma & Dhariwal 2018, Fig. 2b):
    `levels` levels, each — density direction — a stack of steps and, except after the last
    level, a factor-out of half the channels. The latent is every factored-out piece and the
    last level's output, flattened and concatenated: (B, C·H·W).

    Two layouts of a level:
    - `squeeze_first` (Glow, the default): the level squeezes, then runs
      `make_steps(4C, H/2, W/2)`; H and W must be divisible by 2^levels.
    - not `squeeze_first` (RealNVP): `make_steps(C, H, W)` gets the level's input shape and
      places its own `Squeeze` layers among its steps (RealNVP: checkerboard couplings, squeeze,
      channel-wise couplings); the level's output shape follows those squeezes.
    `make_steps` returns the steps in the density order; `make_last`, when given, builds the last
    level instead (RealNVP's final scale: checkerboard couplings only, no squeeze).
    """

    def __init__(self, shape: Sequence[int], levels: int,
                 make_steps: Callable[[int, int, int], Sequence[Flow]], learned_prior: bool = True, *,
                 squeeze_first: bool = True,
                 make_last: Callable[[int, int, int], Sequence[Flow]] | None = None):
        super().__init__()
        c, h, w = shape
        if squeeze_first and (h % 2 ** levels or w % 2 ** levels):
            raise ValueError(f"{levels} levels need H and W divisible by {2 ** levels}, got {h}×{w}")
        self.squeeze_first = squeeze_first
        self.squeeze = Squeeze()
        steps, factors = [], []
        self.latent_shapes: list[tuple[int, int, int]] = []  # per level, what it hands to the prior
        for level in range(levels):
            if squeeze_first:
                c, h, w = 4 * c, h // 2, w // 2
            make = make_last if make_last is not None and level == levels - 1 else make_steps
            level_steps = list(make(c, h, w))
            c, h, w = _shape_after(level_steps, (c, h, w))
            steps.append(FlowStack(level_steps[::-1]))  # FlowStack lists sampling order
            if level < levels - 1:
                factor = FactorOut(c, learned_prior)
                factors.append(factor)
                self.latent_shapes.append((factor.out, h, w))
                c = factor.keep
        self.latent_shapes.append((c, h, w))
        self.steps = nn.ModuleList(steps)
        self.factors = nn.ModuleList(factors)

    @property
    def latent_dim(self) -> int:
        return sum(math.prod(s) for s in self.latent_shapes)

    def to_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction: x (B, C, H, W) -> z (B, D), log|det ∂z/∂x| (B,)."""
        log_det = x.new_zeros(x.shape[0])
        pieces = []
        h = x
        for level, steps in enumerate(self.steps):
            if self.squeeze_first:
                h, _ = self.squeeze.inverse(h)  # (B, 4C, H/2, W/2)
            h, ld = steps.inverse(h)
            log_det = log_det + ld
            if level < len(self.factors):
                factor = self.factors[level]
                h, ld = factor.inverse(h)
                log_det = log_det + ld
                h, eps = h.split([factor.keep, factor.out], dim=1)
                pieces.append(eps.flatten(1))
        pieces.append(h.flatten(1))
        return torch.cat(pieces, 1), log_det

    def from_latent(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction: z (B, D) -> x (B, C, H, W), log|det ∂x/∂z| (B,)."""
        b = z.shape[0]
        pieces = z.split([math.prod(s) for s in self.latent_shapes], dim=1)
        log_det = z.new_zeros(b)
        h = pieces[-1].reshape(b, *self.latent_shapes[-1])
        for level in reversed(range(len(self.steps))):
            if level < len(self.factors):
                h = torch.cat([h, pieces[level].reshape(b, *self.latent_shapes[level])], 1)
                h, ld = self.factors[level](h)
                log_det = log_det + ld
            h, ld = self.steps[level](h)
            log_det = log_det + ld
            if self.squeeze_first:
                h, _ = self.squeeze(h)
        return h, log_det
