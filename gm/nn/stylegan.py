"""StyleGAN's networks (Karras et al. 2019, "A Style-Based Generator Architecture for GANs").

- `MappingNetwork`: z -> w, PixelNorm(z) then `layers` EqualLinear + LeakyReLU(0.2) layers with the learning
  rate multiplier 0.01 (§2, Appendix C). Labels (a conditional model) enter as in the paper's code: an
  embedding of the one-hot label concatenated to z before the PixelNorm.
- `StyleSynthesis` (images 4·2^k pixels wide): a learned constant 4×4 input, then two style layers per
  resolution, as in the paper (Fig. 1b): at 4×4 the constant itself and one 3×3 conv, above it
  nearest-neighbour ×2 upsampling + 3×3 conv, then a 3×3 conv. Every style layer is conv -> NoiseInjection
  (per-pixel noise drawn from an explicit `torch.Generator`) -> LeakyReLU(0.2) -> AdaIN from its own w
  (each layer its own style affine A); a 1×1 toRGB at the top. The paper's blur after upsampling (a
  binomial filter) is left out: at 8×8 it would smear the digits' strokes, and no result here rests on it.
- `StyleMLP` (vectors, toy data): no pixels to normalise over, so no AdaIN and no noise: a learned constant
  vector, `depth` EqualLinear + LeakyReLU layers each modulated by its own w (FiLM-style scale and shift,
  h·(1 + A_s(w)) + A_b(w), the same affine form as AdaIN's style), then a linear output.
- `StyleGANCritic`: ProGAN's critic (EqualConv2d, LeakyReLU(0.2), average-pool downsampling, minibatch
  standard deviation before the last 4×4 block), as StyleGAN uses it.

Every synthesis network takes ws of shape (B, num_ws, w_dim), one w per style layer, so style mixing and
truncation act on the same tensor for images and for vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gm.data.dataspec import DataSpec
from gm.nn.mlp import Activation, make_activation
from gm.nn.scaled import AdaIN, EqualConv2d, EqualLinear, MinibatchStdDev, NoiseInjection, PixelNorm

LRELU_SLOPE = 0.2  # every StyleGAN/ProGAN layer
MAPPING_LR_MUL = 0.01  # §2 / Appendix C: the mapping network learns 100× slower


def stylegan_resolutions(data: DataSpec) -> list[int]:
    """The synthesis network's resolutions, 4, 8, ..., width, for square images 4·2^k pixels wide."""
    shape = tuple(data.shape)
    if data.kind != "image" or len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"arch: 'stylegan' needs square image data (C, S, S), got {data.kind} of shape {shape}")
    size = shape[1]
    res = [4]
    while res[-1] < size:
        res.append(res[-1] * 2)
    if res[-1] != size:
        raise ValueError(f"arch: 'stylegan' needs images 4·2^k pixels wide (4, 8, 16, ...), got {size}")
    return res


class MappingNetwork(nn.Module):
    """z (B, z_dim) [+ one-hot labels (B, K)] -> w (B, w_dim)."""

    def __init__(self, z_dim: int, w_dim: int, layers: int, num_labels: int = 0, lr_mul: float = MAPPING_LR_MUL):
        super().__init__()
        # The paper's code (G_mapping): labels embedded to z's width by a plain matrix, concatenated to z.
        self.embed = nn.Linear(num_labels, z_dim, bias=False) if num_labels else None
        self.norm = PixelNorm()
        blocks: list[nn.Module] = []
        width = z_dim * (2 if num_labels else 1)
        for _ in range(layers):
            blocks += [EqualLinear(width, w_dim, lr_mul=lr_mul), nn.LeakyReLU(LRELU_SLOPE)]
            width = w_dim
        self.net = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if onehot is None:
                raise ValueError("the mapping network is conditional: pass one-hot labels")
            z = torch.cat([z, self.embed(onehot)], dim=1)  # (B, 2·Z)
        return self.net(self.norm(z))


class StyleLayer(nn.Module):
    """One style layer: [×2 nearest upsample] [3×3 EqualConv2d] -> noise -> LeakyReLU -> AdaIN(w).

    Without a conv (the 4×4 constant's own layer) a learned per-channel bias stands where the conv's is."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv: bool = True, upsample: bool = False):
        super().__init__()
        self.upsample = upsample
        self.conv = EqualConv2d(in_channels, out_channels, 3, padding=1) if conv else None
        self.bias = None if conv else nn.Parameter(torch.zeros(out_channels))
        self.noise = NoiseInjection(out_channels)
        self.act = nn.LeakyReLU(LRELU_SLOPE)
        self.adain = AdaIN(out_channels, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv(x) if self.conv is not None else x + self.bias.view(1, -1, 1, 1)
        x = self.noise(x, noise=noise, generator=generator)
        return self.adain(self.act(x), w)


class StyleSynthesis(nn.Module):
    """ws (B, num_ws, w_dim) -> images (B, C, S, S); noise from `generator` (the global stream when None),
    drawn layer by layer in order."""

    def __init__(self, data: DataSpec, channels: int, w_dim: int, out_activation: Activation | None = None):
        super().__init__()
        resolutions = stylegan_resolutions(data)
        self.const = nn.Parameter(torch.ones(1, channels, 4, 4))  # the paper's code initialises it to 1
        layers = [StyleLayer(channels, channels, w_dim, conv=False), StyleLayer(channels, channels, w_dim)]
        for _ in resolutions[1:]:
            layers += [StyleLayer(channels, channels, w_dim, upsample=True), StyleLayer(channels, channels, w_dim)]
        self.layers = nn.ModuleList(layers)
        self.to_rgb = EqualConv2d(channels, data.shape[0], 1, gain=1.0)
        self.out = make_activation(out_activation) if out_activation else nn.Identity()

    @property
    def num_ws(self) -> int:
        return len(self.layers)

    def style_affines(self) -> list[nn.Module]:
        """Each style layer's affine A (w -> (y_s, y_b)), in layer order."""
        return [layer.adain.style for layer in self.layers]

    def forward(self, ws: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i], generator)
        return self.out(self.to_rgb(x))


class StyleMLP(nn.Module):
    """The synthesis network for vectors: ws (B, depth, w_dim) -> (B, out_dim). A learned constant, then
    `depth` layers h <- LeakyReLU(EqualLinear(h)) · (1 + A_s(w_i)) + A_b(w_i); no noise inputs."""

    def __init__(self, out_dim: int, hidden: int, depth: int, w_dim: int, out_activation: Activation | None = None):
        super().__init__()
        self.const = nn.Parameter(torch.ones(hidden))
        self.linears = nn.ModuleList(EqualLinear(hidden, hidden) for _ in range(depth))
        self.styles = nn.ModuleList(EqualLinear(w_dim, 2 * hidden, gain=1.0) for _ in range(depth))
        self.act = nn.LeakyReLU(LRELU_SLOPE)
        self.head = EqualLinear(hidden, out_dim, gain=1.0)
        self.out = make_activation(out_activation) if out_activation else nn.Identity()

    @property
    def num_ws(self) -> int:
        return len(self.linears)

    def style_affines(self) -> list[nn.Module]:
        return list(self.styles)

    def forward(self, ws: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h = self.const.expand(ws.shape[0], -1)
        for i, (linear, style) in enumerate(zip(self.linears, self.styles)):
            y_s, y_b = style(ws[:, i]).chunk(2, dim=1)
            h = self.act(linear(h)) * (1.0 + y_s) + y_b
        return self.out(self.head(h))


class StyleGenerator(nn.Module):
    """The mapping network and a synthesis network (`StyleSynthesis` or `StyleMLP`); the model drives them
    (style mixing and truncation sit between the two), so there is no forward of its own."""

    def __init__(self, mapping: MappingNetwork, synthesis: nn.Module):
        super().__init__()
        self.mapping = mapping
        self.synthesis = synthesis

    @property
    def num_ws(self) -> int:
        return self.synthesis.num_ws


def mix_styles(w1: torch.Tensor, w2: torch.Tensor, crossover: torch.Tensor | int, num_ws: int) -> torch.Tensor:
    """Style mixing (§3.1): ws (B, num_ws, w_dim) with w1 at layers i < crossover and w2 at i ≥ crossover
    (the paper's code: tf.where(layer_idx < mixing_cutoff, dlatents, dlatents2)). crossover = num_ws keeps
    w1 everywhere; it may be a 0-d tensor, so no host read is needed."""
    idx = torch.arange(num_ws, device=w1.device).view(1, num_ws, 1)
    return torch.where(idx < crossover, w1[:, None], w2[:, None])


class GroupStdDev(MinibatchStdDev):
    """`MinibatchStdDev` whose group is the largest divisor of the batch not above `group_size` (ProGAN's
    code asserts divisibility instead; here a batch of 6 with group 4 uses groups of 3). Same statistic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = max(d for d in range(1, min(self.group_size, b) + 1) if b % d == 0)
        y = x.reshape(g, b // g, c, h, w)  # sample n = i·M + m is in group m
        std = (y.var(dim=0, unbiased=False) + self.eps).sqrt()  # (M, C, H, W)
        stat = std.mean(dim=(1, 2, 3)).view(1, b // g, 1, 1, 1)
        return torch.cat([x, stat.expand(g, -1, 1, h, w).reshape(b, 1, h, w)], dim=1)  # (B, C + 1, H, W)


class StyleGANCritic(nn.Module):
    """ProGAN's critic body: fromRGB (1×1) -> per resolution above 4: two 3×3 convs and a 2×2 average pool
    -> at 4×4: minibatch stddev (group `mbstd_group`; 0 = off), a 3×3 conv, a dense layer -> features
    (B, channels). The output head is added by the adversarial base's `Critic`."""

    def __init__(self, in_channels: int, size: int, channels: int, mbstd_group: int = 4):
        super().__init__()
        act = (lambda: nn.LeakyReLU(LRELU_SLOPE))
        layers: list[nn.Module] = [EqualConv2d(in_channels, channels, 1), act()]
        s = size
        while s > 4:
            layers += [EqualConv2d(channels, channels, 3, padding=1), act(),
                       EqualConv2d(channels, channels, 3, padding=1), act(), nn.AvgPool2d(2)]
            s //= 2
        if mbstd_group:
            layers.append(GroupStdDev(mbstd_group))
        layers += [EqualConv2d(channels + (1 if mbstd_group else 0), channels, 3, padding=1), act(), nn.Flatten(),
                   EqualLinear(channels * 16, channels), act()]
        self.net = nn.Sequential(*layers)
        self.feature_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
