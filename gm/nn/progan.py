"""ProGAN's growing networks (Karras et al. 2018, "Progressive Growing of GANs", Table 2) and its schedule.

- `ProGANGenerator`: a latent -> 4×4 block (a dense layer to 4×4 maps, then a 3×3 conv) -> up blocks
  (nearest ×2, two 3×3 convs) doubling the resolution up to the image's, a toRGB 1×1 conv at every
  resolution; LeakyReLU(0.2) and pixel norm after every conv; the output is linear (or tanh-bounded).
- `ProGANCritic`: its mirror: a fromRGB 1×1 conv at every resolution, down blocks (two 3×3 convs, avg-pool
  ×2), and at 4×4 the minibatch stddev, a 3×3 conv and a 4×4 conv to features (the head is the model's).
- Every weight has the equalised learning rate (`EqualConv2d`, `EqualLinear`); every block keeps `hidden`
  channels (the paper halves them above 32×32 from 512; the images here are small).
- `growth_stage`: the schedule (level, α) as a function of a step counter; `Growth` holds that counter
  as a buffer (saved with the model) and both nets read their stage from it unless given one.

Levels: level k is the resolution 4·2^k; an image 4·2^(L-1) wide has L levels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gm.data.dataspec import DataSpec
from gm.nn.scaled import HE_GAIN, EqualConv2d, EqualLinear, MinibatchStdDev, PixelNorm, fade_in

LRELU_SLOPE = 0.2  # Table 2: leaky ReLU, leakiness 0.2, in every layer of both nets but the last


def progan_levels(data: DataSpec) -> int:
    """L for square images 4·2^(L-1) pixels wide (the resolutions 4, 8, ..., width); ValueError otherwise."""
    if data.kind != "image" or len(data.shape) != 3 or data.shape[1] != data.shape[2]:
        raise ValueError(f"arch: 'progan' needs square image data (C, S, S), got {data.kind} data of shape "
                         f"{tuple(data.shape)}")
    size = data.shape[1]
    k = round(math.log2(size / 4)) if size >= 4 else -1
    if k < 0 or 4 * 2 ** k != size:
        raise ValueError(f"arch: 'progan' needs images 4·2^k pixels wide (4, 8, 16, 32, ...), got {size}")
    return k + 1


def growth_stage(step: int, phase_steps: int, levels: int) -> tuple[int, float]:
    """(level, α) after `step` steps: level 0 (4×4) for `phase_steps`, then for each next level a fade-in of
    `phase_steps` (α = (step - start) / phase_steps, rising linearly from 0) and a stabilisation of
    `phase_steps` (α = 1); after the last level's stabilisation the full resolution for good (α = 1).
    phase_steps = 0: no growing, the full resolution from step 0."""
    if phase_steps <= 0 or levels <= 1:
        return levels - 1, 1.0
    if step < phase_steps:
        return 0, 1.0
    level, into = divmod(step - phase_steps, 2 * phase_steps)
    level += 1
    if level >= levels:
        return levels - 1, 1.0
    return level, (into / phase_steps if into < phase_steps else 1.0)


class Growth(nn.Module):
    """The growing schedule's step counter (a buffer: saved with checkpoints, so a resumed run goes on
    where it stopped) and `stage()`, the (level, α) it gives.

    The counter is read on the host once after each change (load_state_dict, fill_, a move to another
    device) and mirrored there, with `advance` keeping the mirror in step, so a training step waits on no
    device read of the counter."""

    def __init__(self, phase_steps: int, levels: int):
        super().__init__()
        self.phase_steps, self.levels = phase_steps, levels
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._seen: tuple[torch.Tensor, int] | None = None  # (the buffer read, its version) of the mirror
        self._value = 0

    def count(self) -> int:
        seen = self._seen
        if seen is None or seen[0] is not self.step or seen[1] != self.step._version:
            self._value = int(self.step)
            self._seen = (self.step, self.step._version)
        return self._value

    def stage(self) -> tuple[int, float]:
        return growth_stage(self.count(), self.phase_steps, self.levels)

    @torch.no_grad()
    def advance(self) -> None:
        value = self.count() + 1
        self.step.add_(1)
        self._value, self._seen = value, (self.step, self.step._version)


def _stage(growth: Growth | None, levels: int, level: int | None, alpha: float | None) -> tuple[int, float]:
    if level is None:
        level, alpha_now = growth.stage() if growth is not None else (levels - 1, 1.0)
        alpha = alpha_now if alpha is None else alpha
    alpha = 1.0 if alpha is None else float(alpha)
    if not 0 <= level < levels:
        raise ValueError(f"level must lie in [0, {levels}), got {level}")
    if level == 0 and alpha != 1.0:
        raise ValueError(f"level 0 has nothing to fade in from: alpha must be 1, got {alpha}")
    return level, alpha


def _conv(cin: int, cout: int, k: int = 3) -> list[nn.Module]:
    return [EqualConv2d(cin, cout, k, padding=k // 2), nn.LeakyReLU(LRELU_SLOPE)]


class ProGANGenerator(nn.Module):
    """(B, in_dim) latents -> (B, channels, r, r) at the current resolution r = 4·2^level.

    forward(z, level, alpha): level None reads the stage from `growth` (the full resolution without one).
    In a fade-in (level k, α < 1) the output is (1 - α)·up(toRGB_{k-1}(h_{k-1})) + α·toRGB_k(block_k(h_{k-1})):
    α = 0 is exactly level k-1's image upsampled (nearest), α = 1 level k's.
    The latent is taken as given (the model pixel-normalises z before it)."""

    def __init__(self, in_dim: int, channels: int, levels: int, hidden: int, out_activation: str | None = None,
                 growth: Growth | None = None):
        super().__init__()
        self.levels, self.hidden = levels, hidden
        # ProGAN's code: the 4×4 dense layer's gain is sqrt(2)/4 (the 4×4 conv-transpose of a 1×1 input)
        self.dense = EqualLinear(in_dim, hidden * 16, gain=HE_GAIN / 4)
        self.first = nn.Sequential(nn.LeakyReLU(LRELU_SLOPE), PixelNorm(), *_conv(hidden, hidden), PixelNorm())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *_conv(hidden, hidden), PixelNorm(),
                          *_conv(hidden, hidden), PixelNorm())
            for _ in range(levels - 1))
        self.to_rgb = nn.ModuleList(EqualConv2d(hidden, channels, 1, gain=1.0) for _ in range(levels))
        self.out_activation = out_activation
        object.__setattr__(self, "growth", growth)  # shared with the model and the critic, not a submodule

    def forward(self, z: torch.Tensor, level: int | None = None, alpha: float | None = None) -> torch.Tensor:
        level, alpha = _stage(self.growth, self.levels, level, alpha)
        h = self.first(self.dense(z).view(-1, self.hidden, 4, 4))  # (B, C, 4, 4)
        for block in self.blocks[:max(level - 1, 0)]:
            h = block(h)
        if level == 0:
            rgb = self.to_rgb[0](h)
        elif alpha < 1.0:
            low = self.to_rgb[level - 1](h)  # (B, ch, r/2, r/2)
            rgb = fade_in(low, self.to_rgb[level](self.blocks[level - 1](h)), alpha)
        else:
            rgb = self.to_rgb[level](self.blocks[level - 1](h))  # (B, ch, r, r)
        return torch.tanh(rgb) if self.out_activation == "tanh" else rgb


class ProGANCritic(nn.Module):
    """(B, channels, S, S) images -> (B, hidden) features, read at the current resolution r = 4·2^level.

    The input is avg-pooled to r first (exact for the generator's images, nearest-upsampled from r).
    In a fade-in (level k, α < 1) the features entering level k-1's blocks are
    (1 - α)·fromRGB_{k-1}(avgpool(x)) + α·down_k(fromRGB_k(x)). At 4×4: minibatch stddev, a 3×3 conv and a
    4×4 conv (valid) to `hidden` features; `feature_dim` = hidden."""

    def __init__(self, channels: int, levels: int, hidden: int, growth: Growth | None = None):
        super().__init__()
        self.levels, self.feature_dim = levels, hidden
        self.from_rgb = nn.ModuleList(nn.Sequential(*_conv(channels, hidden, 1)) for _ in range(levels))
        self.blocks = nn.ModuleList(  # blocks[k-1]: level k -> level k-1
            nn.Sequential(*_conv(hidden, hidden), *_conv(hidden, hidden), nn.AvgPool2d(2))
            for _ in range(levels - 1))
        self.mbstd = MinibatchStdDev()
        self.last = nn.Sequential(*_conv(hidden + 1, hidden),
                                  EqualConv2d(hidden, hidden, 4), nn.LeakyReLU(LRELU_SLOPE), nn.Flatten())
        object.__setattr__(self, "growth", growth)

    def minibatch_stddev(self, h: torch.Tensor) -> torch.Tensor:
        b = h.shape[0]
        if b % min(self.mbstd.group_size, b) == 0:
            return self.mbstd(h)
        # a batch the paper's group of 4 does not divide: the largest group below it that does
        group = max(g for g in range(1, self.mbstd.group_size + 1) if b % g == 0)
        return MinibatchStdDev(group, self.mbstd.eps)(h)

    def forward(self, x: torch.Tensor, level: int | None = None, alpha: float | None = None) -> torch.Tensor:
        level, alpha = _stage(self.growth, self.levels, level, alpha)
        r = 4 * 2 ** level
        if x.shape[-1] != r:
            x = F.avg_pool2d(x, x.shape[-1] // r)  # (B, C, r, r)
        h = self.from_rgb[level](x)
        if level > 0:
            h = self.blocks[level - 1](h)  # (B, hidden, r/2, r/2)
            if alpha < 1.0:
                low = self.from_rgb[level - 1](F.avg_pool2d(x, 2))
                h = (1.0 - alpha) * low + alpha * h
            for k in range(level - 1, 0, -1):
                h = self.blocks[k - 1](h)
        return self.last(self.minibatch_stddev(h))  # (B, hidden)


def real_at_stage(x: torch.Tensor, level: int, alpha: float) -> torch.Tensor:
    """Real images (B, C, S, S) as the critic sees them at (level, α), back at size S (ProGAN's code,
    process_reals): avg-pooled to r = 4·2^level, in a fade-in blended with their r/2 version upsampled,
    (1 - α)·up(pool(x_r)) + α·x_r, then nearest-upsampled to S: images of the form the generator's are."""
    size = x.shape[-1]
    r = 4 * 2 ** level
    if r == size and alpha >= 1.0:
        return x
    x_r = F.avg_pool2d(x, size // r) if size != r else x
    if alpha < 1.0:
        x_r = fade_in(F.avg_pool2d(x_r, 2), x_r, alpha)
    return F.interpolate(x_r, size=(size, size), mode="nearest") if r != size else x_r


def equalised_mlp_generator(in_dim: int, out_dim: int, hidden: int, depth: int,
                            out_activation: str | None = None) -> nn.Sequential:
    """ProGAN's layers on vectors: `depth` × (EqualLinear, LeakyReLU(0.2), PixelNorm), a linear EqualLinear."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [EqualLinear(in_dim if i == 0 else hidden, hidden), nn.LeakyReLU(LRELU_SLOPE), PixelNorm()]
    layers.append(EqualLinear(hidden if depth else in_dim, out_dim, gain=1.0))
    if out_activation == "tanh":
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def equalised_mlp_critic_body(in_dim: int, hidden: int, depth: int) -> nn.Sequential:
    """`depth` × (EqualLinear, LeakyReLU(0.2)) to `hidden` features (the critic has no pixel norm)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [EqualLinear(in_dim if i == 0 else hidden, hidden), nn.LeakyReLU(LRELU_SLOPE)]
    return nn.Sequential(*layers)
