"""BigGAN backbones (Brock et al. 2019): residual generator and critic for square images of 4·2^k pixels.

Generator (the paper's Fig. 15 a-b, BigGAN-PyTorch's `G`): z is split into k + 1 chunks (the hierarchical
latent, §4 / App. B): the first goes through a linear layer to a 4×4 map of `channels · 2^k`, each of the
k residual up blocks reads one more. An up block is

    h = conv3×3(ReLU(CBN₂(conv3×3(up×2(ReLU(CBN₁(x, c)))), c))),    out = h + conv1×1(up×2(x)),

with CBN the class-conditional batch norm (gm/nn/scaled.py) of the block's conditioning vector c: the
shared class embedding beside the block's z chunk, [embed(y), z_i], when the generator is class-conditional,
the z chunk alone when it is not. The self-attention block follows the up block whose output is `attention`
pixels wide; then BN, ReLU, conv3×3 to the image's channels and the caller's output activation (bounding
to model space). Every Linear and conv is spectrally normalised; the shared embedding is not (as in
BigGAN's code, where G.shared is a plain embedding).

Critic (Fig. 15 c): an input 3×3 conv to `channels` (BigGAN-deep's input conv: it lets the attention sit at the
image's own width, which 8×8 digits need), then k residual down blocks

    h = avgpool(conv3×3(ReLU(conv3×3(ReLU(x))))),    out = h + avgpool(conv1×1(x)),

doubling the channels down to 4×4, the self-attention block before the down block whose input is
`attention` pixels wide, then ReLU and a sum over positions (global sum pooling) into φ(x). The head is the
projection discriminator's ψ(φ) + ⟨embed(y), φ⟩ (Miyato & Koyama 2018) when the critic is class-conditional,
a plain linear ψ(φ) otherwise. Every weight is spectrally normalised, the projection's embedding included
(BigGAN's code: SNEmbedding).

The paper's blocks at small widths (`channels`; the paper's ch = 96 at 128×128): residual as in the paper,
one block per resolution (no BigGAN-deep bottlenecks), enough for 8-32 pixel images on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gm.data.dataspec import DataSpec
from gm.nn.mlp import Activation, make_activation
from gm.nn.sagan import sagan_blocks
from gm.nn.scaled import ConditionalBatchNorm2d, ProjectionHead, SelfAttention, apply_spectral_norm


def biggan_blocks(data: DataSpec, attention: int) -> int:
    """The number of ×2 blocks between 4×4 and the image (square, 4·2^k wide, k ≥ 1), after checking that
    `attention` is one of the resolutions in between (the same rule as SAGAN's nets)."""
    try:
        return sagan_blocks(data, attention)
    except ValueError as e:
        raise ValueError(str(e).replace("arch: 'sagan'", "arch: 'biggan'")) from None


def z_chunks(z_dim: int, blocks: int) -> list[int]:
    """The hierarchical latent's chunk sizes: blocks + 1 near-equal chunks of z_dim (the first for the input
    linear layer, one per up block); the remainder goes to the first chunks."""
    n = blocks + 1
    if z_dim < n:
        raise ValueError(f"z_dim: expected at least {n} (one chunk for the input layer and one per up block), "
                         f"got {z_dim}")
    size, extra = divmod(z_dim, n)
    return [size + (1 if i < extra else 0) for i in range(n)]


class GBlock(nn.Module):
    """BigGAN's residual up block; both batch norms are conditioned on the same vector c."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int):
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_channels, cond_dim)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn2 = ConditionalBatchNorm2d(out_channels, cond_dim)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)  # BigGAN: a learnable shortcut in every up block

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, H, W), c: (B, cond_dim) -> (B, C_out, 2H, 2W)
        h = F.interpolate(F.relu(self.bn1(x, c)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), c)))
        return h + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))


class BigGANGenerator(nn.Module):
    """G(z, y): z (B, z_dim), y integer labels (B,) when `num_classes` > 0 (None otherwise) -> (B, C, H, W)."""

    def __init__(self, z_dim: int, shape: tuple[int, int, int], channels: int, attention: int,
                 num_classes: int = 0, shared_dim: int = 32, out_activation: Activation | None = None):
        super().__init__()
        c_img, size, _ = shape
        k = biggan_blocks(DataSpec(shape=tuple(shape), kind="image"), attention)
        self.chunks = z_chunks(z_dim, k)
        width = [channels * 2 ** (k - i) for i in range(k + 1)]  # 4×4 map's channels down to `channels`
        self.width0 = width[0]
        self.num_classes = num_classes
        # One class embedding shared by every block's batch norms (§3: "shared embedding").
        self.shared = nn.Embedding(num_classes, shared_dim) if num_classes else None
        embed_dim = shared_dim if num_classes else 0
        self.linear = nn.Linear(self.chunks[0], width[0] * 16)
        self.blocks = nn.ModuleList(
            GBlock(width[i], width[i + 1], embed_dim + self.chunks[i + 1]) for i in range(k))
        self.attention_after = [4 * 2 ** (i + 1) for i in range(k)].index(attention)  # the block it follows
        self.attention = SelfAttention(width[self.attention_after + 1])
        out = [nn.BatchNorm2d(width[-1]), nn.ReLU(), nn.Conv2d(width[-1], c_img, 3, padding=1)]
        if out_activation is not None:
            out.append(make_activation(out_activation))
        self.out = nn.Sequential(*out)
        apply_spectral_norm(self)  # Linear and conv weights (CBN's gains and biases too); not the shared embedding

    def conditions(self, z: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the input layer's z chunk (B, z_0), each up block's conditioning vector [embed(y), z_i] or z_i)."""
        if self.num_classes and y is None:
            raise ValueError("the generator is class-conditional: labels are required")
        if not self.num_classes and y is not None:
            raise ValueError("the generator is unconditional; got labels")
        zs = torch.split(z, self.chunks, dim=1)
        if self.shared is None:
            return zs[0], list(zs[1:])
        e = self.shared(y)  # (B, shared_dim)
        return zs[0], [torch.cat([e, zi], dim=1) for zi in zs[1:]]

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        z0, conds = self.conditions(z, y)
        h = self.linear(z0).view(len(z), self.width0, 4, 4)
        for i, (block, c) in enumerate(zip(self.blocks, conds)):
            h = block(h, c)
            if i == self.attention_after:
                h = self.attention(h)
        return self.out(h)


class DBlock(nn.Module):
    """BigGAN's residual down block (pre-activation, average-pool downsampling, learnable shortcut)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        return F.avg_pool2d(h, 2) + F.avg_pool2d(self.skip(x), 2)


class BigGANCriticBody(nn.Module):
    """Image (B, C, H, W) -> φ(x), (B, feature_dim), by global sum pooling."""

    def __init__(self, in_channels: int, size: int, channels: int, attention: int):
        super().__init__()
        k = biggan_blocks(DataSpec(shape=(in_channels, size, size), kind="image"), attention)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        c, res = channels, size
        for _ in range(k):
            if res == attention:
                layers.append(SelfAttention(c))
            layers.append(DBlock(c, 2 * c))
            c, res = 2 * c, res // 2
        layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.feature_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).sum(dim=(2, 3))


class BigGANCritic(nn.Module):
    """D(x, y) -> (logits (B, 1), features φ(x) (B, F)): the projection head when `num_classes` > 0."""

    def __init__(self, in_channels: int, size: int, channels: int, attention: int, num_classes: int = 0):
        super().__init__()
        self.body = BigGANCriticBody(in_channels, size, channels, attention)
        self.feature_dim = self.body.feature_dim
        self.num_classes = num_classes
        self.head = ProjectionHead(self.feature_dim, num_classes) if num_classes else nn.Linear(self.feature_dim, 1)
        apply_spectral_norm(self)
        if num_classes:
            spectral_norm(self.head.embed)  # BigGAN's SNEmbedding

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (B, F)
        if self.num_classes:
            if y is None:
                raise ValueError("the critic is class-conditional (projection head): labels are required")
            return self.head(h, y)[:, None], h
        if y is not None:
            raise ValueError("the critic is unconditional; got labels")
        return self.head(h), h
