"""The two PixelCNN priors of VQ-VAE-2 (Razavi, van den Oord & Vinyals 2019, "Generating Diverse
High-Fidelity Images with VQ-VAE-2", §3.2, Fig. 2b, Alg. 2).

- `AttentionPixelCNN`, the top prior p(e_top): a PixelCNN over the top code grid whose masked
  residual blocks are interleaved with multi-head causal self-attention over the flattened grid in
  raster order. §3.2 gives the top prior multi-headed self-attention layers (the PixelSNAIL recipe,
  Chen et al. 2018) to capture long-range correlations: every code sees all earlier codes at once,
  not only those inside the convolutions' receptive field. Keys and values read the codes before
  each position, as PixelSNAIL's.
- `ConditionedPixelCNN`, the bottom prior p(e_bottom | e_top): a PixelCNN over the bottom code grid
  conditioned on the top codes through a residual conditioning stack (§3.2, Fig. 2b; App. A lists
  the conditioning stack's residual blocks and no attention for the bottom prior). The top code map
  is embedded, run through a conditioning net that brings it to the bottom grid, and added to every
  layer through its own 1×1 convolution (conditional PixelCNN, van den Oord et al. 2016b, Eq. 4,
  with a spatial h: V ∗ s). The top codes are fully visible; only the bottom codes are masked.

Both are `gm.nn.pixelcnn.PixelCNN`s (embedding, mask-A first layer, mask-B residual blocks, the
1×1 head) with a different forward, so they inherit its `log_prob` (chain rule over raster order)
and its seeded position-by-position `sample`. Shapes: codes (B, H, W) int64 or one-hot/soft
(B, K, H, W) float; logits (B, K, H, W).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gm.nn.pixelcnn import PixelCNN, embed_symbols

__all__ = ["CausalSelfAttention", "AttentionPixelCNN", "ConditionedPixelCNN", "attention_slots"]


def coordinates(height: int, width: int, device: torch.device) -> torch.Tensor:
    """The row and column of every position of an H×W grid, scaled to [-1, 1]: (H·W, 2) in raster order.
    PixelSNAIL's "background" channels: attention alone is blind to position."""
    rows = torch.linspace(-1, 1, height, device=device) if height > 1 else torch.zeros(1, device=device)
    cols = torch.linspace(-1, 1, width, device=device) if width > 1 else torch.zeros(1, device=device)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).view(height * width, 2)


class CausalSelfAttention(nn.Module):
    """h + W_o · MultiHead(softmax(q kᵀ / √d + causal mask) v) over the H·W positions in raster order.

    As PixelSNAIL's attention block (Chen et al. 2018, §3, Fig. 3): the queries read the residual
    stream h, the keys and values read h and the embedded codes themselves, and position i attends
    only to the positions j < i. The codes of every j < i are thus in direct view of i (no blind
    spot, not even the code just before i), and nothing at or after i is. Queries and keys also read
    the positions' coordinates. Position 0 has nothing to attend to and adds nothing.
    `causal = False` drops the mask (only the tests do, to show that the causality probe catches it).
    """

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: {channels} channels do not split into {heads} heads")
        self.heads = heads
        self.causal = True
        self.norm = nn.LayerNorm(channels)  # over each position's channels alone: a norm over positions would leak
        self.query = nn.Linear(channels + 2, channels)
        self.key_value = nn.Linear(2 * channels + 2, 2 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """h, the residual stream (B, C, H, W); codes, the embedded input codes (B, C, H, W)."""
        b, c, height, width = h.shape
        n, d = height * width, c // self.heads
        x = self.norm(h.flatten(2).transpose(1, 2))  # (B, N, C), raster order
        pos = coordinates(height, width, h.device).to(x.dtype).expand(b, n, 2)
        q = self.query(torch.cat([x, pos], -1))  # (B, N, C)
        k, v = self.key_value(torch.cat([x, codes.flatten(2).transpose(1, 2), pos], -1)).chunk(2, -1)
        q, k, v = (t.view(b, n, self.heads, d).transpose(1, 2) for t in (q, k, v))  # (B, heads, N, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, heads, N, N)
        if self.causal:
            past = torch.ones(n, n, dtype=torch.bool, device=h.device).tril(-1)  # j < i
            has_past = past.any(1, keepdim=True)  # (N, 1): False at position 0 only
            # Position 0 gets a dummy key (itself) so that its softmax is finite, then weight 0.
            weights = scores.masked_fill(~(past | ~has_past), float("-inf")).softmax(-1) * has_past
        else:
            weights = scores.softmax(-1)
        y = (weights @ v).transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        return h + self.out(y).transpose(1, 2).view(b, c, height, width)


def attention_slots(n_blocks: int, n_attention: int) -> list[int]:
    """The residual blocks (indices) after which the attention layers go, spread evenly and the last
    after the last block: 4 blocks, 2 layers -> [1, 3]. Needs n_attention <= n_blocks."""
    if not 0 <= n_attention <= n_blocks:
        raise ValueError(f"{n_attention} attention layers need at least as many residual blocks, got {n_blocks}")
    return [round((j + 1) * n_blocks / n_attention) - 1 for j in range(n_attention)]


class AttentionPixelCNN(PixelCNN):
    """The top prior: PixelCNN(n_symbols, channels, n_blocks, kernel_size) with `n_attention`
    causal self-attention layers of `heads` heads, each after one of the residual blocks
    (`attention_slots`), the last after the last block."""

    def __init__(self, n_symbols: int, channels: int = 64, n_blocks: int = 4, kernel_size: int = 7,
                 n_attention: int = 1, heads: int = 4):
        super().__init__(n_symbols, channels, n_blocks, kernel_size)
        self.slots = attention_slots(n_blocks, n_attention)
        self.attention = nn.ModuleList(CausalSelfAttention(channels, heads) for _ in self.slots)

    def forward(self, s: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of p(s_i | s_<i) at every position: (B, K, H, W)."""
        if labels is not None:
            raise ValueError("AttentionPixelCNN is unconditional; got labels")
        codes = self.embed_input(s)  # (B, C, H, W)
        h = self.first(codes)
        layers = iter(self.attention)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.slots:
                h = next(layers)(h, codes)
        return self.head(h)  # (B, K, H, W)


class ConditionedPixelCNN(PixelCNN):
    """The bottom prior p(s | t): PixelCNN(n_symbols, channels, n_blocks, kernel_size) over the
    bottom grid s, conditioned on a map t of `cond_symbols` codes (the top codes).

    t is embedded (a one-hot times a learned (K_t, C) matrix), then `cond_net` maps the
    (B, C, h_t, w_t) features to (B, C, H, W) on s's grid (the conditioning stack: residual blocks
    and the upsampling). Each conditioned layer (the first layer and every block) adds its own
    1×1 convolution of that map. Nothing of t is masked: t is given, not generated here.
    """

    def __init__(self, n_symbols: int, cond_symbols: int, cond_net: nn.Module, channels: int = 64,
                 n_blocks: int = 4, kernel_size: int = 7):
        super().__init__(n_symbols, channels, n_blocks, kernel_size)
        self.cond_embed = nn.Embedding(cond_symbols, channels)
        self.cond_net = cond_net
        self.cond_proj = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(n_blocks + 1))

    def condition(self, t: torch.Tensor) -> torch.Tensor:
        """The conditioning stack: top codes (B, h_t, w_t) int64 or one-hot (B, K_t, h_t, w_t) -> (B, C, H, W)."""
        return self.cond_net(embed_symbols(t, self.cond_embed))

    def forward(self, s: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of p(s_i | s_<i, t) at every position, t = `labels` the top codes: (B, K, H, W)."""
        if labels is None:
            raise ValueError("ConditionedPixelCNN needs the top codes it is conditioned on")
        h = self.embed_input(s)  # (B, C, H, W)
        cond = self.condition(labels)  # (B, C, H, W), fully visible
        if cond.shape[-2:] != h.shape[-2:]:
            raise ValueError(f"the conditioning stack gives a {tuple(cond.shape[-2:])} map for a "
                             f"{tuple(h.shape[-2:])} grid")
        h = self.first(h) + self.cond_proj[0](cond)
        for block, proj in zip(self.blocks, self.cond_proj[1:]):
            h = block(h) + proj(cond)
        return self.head(h)  # (B, K, H, W)
