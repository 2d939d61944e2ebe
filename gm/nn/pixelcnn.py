"""PixelCNN building blocks over a grid of discrete symbols (van den Oord et al. 2016a,
"Pixel Recurrent Neural Networks", §3.5 and Fig. 2; conditioning as in 2016b, "Conditional
Image Generation with PixelCNN Decoders", Eq. 4).

The order is raster order, row by row and left to right: p(s) = Π_i p(s_i | s_<i)
(PixelRNN, Eq. 1). Masked convolutions make every output causal. The first layer (mask "A")
sees only the positions strictly before the centre. Later layers (mask "B") also see the
centre, whose features by then depend only on earlier positions.

One symbol per position. Each position holds a single categorical variable (a VQ code, or a
grey level), so the masks do not split channels into the R/G/B groups that PixelRNN's Fig. 4
uses for colour images: every feature channel at a position describes the same symbol, and
a mask is the same for every (input, output) channel pair. Colour images would need the
channel-group masks as well.

The plain stack keeps the original PixelCNN's blind spot: some positions above and to the
right fall outside the receptive field. The gated PixelCNN (2016b) removes it with vertical
and horizontal stacks. A blind spot loses context but never breaks causality, and with a 7×7
first kernel a code grid up to 4 wide has no blind spot at all.

Shapes: symbols (B, H, W) int64, or float one-hot / soft inputs (B, K, H, W); logits (B, K, H, W).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gm.core.numerics import categorical
from gm.nn.precision import fp32

MaskType = Literal["A", "B"]


def causal_mask(kernel_size: int, mask_type: MaskType) -> torch.Tensor:
    """(k, k) mask of the kernel taps that precede the centre in raster order (PixelRNN, Fig. 2).

    All rows above the centre and the taps left of it in its row are 1. Mask "B" also
    keeps the centre tap and mask "A" drops it.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"masked convolutions need an odd kernel size, got {kernel_size}")
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type: expected 'A' or 'B', got {mask_type!r}")
    c = kernel_size // 2
    mask = torch.zeros(kernel_size, kernel_size)
    mask[:c, :] = 1.0  # rows above
    mask[c, :c] = 1.0  # left of the centre
    if mask_type == "B":
        mask[c, c] = 1.0
    return mask


class MaskedConv2d(nn.Conv2d):
    """A same-size k×k convolution whose taps at and after the centre (A) or after it (B) are zero.

    The mask is multiplied into the weight at every call. The masked taps therefore get zero
    gradient and stay irrelevant whatever the optimizer does. One mask serves all channel
    pairs, because every channel at a position describes the same symbol (see the module doc).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: MaskType,
                 bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.mask_type = mask_type
        # Not persistent: it is a function of the config, so checkpoints do not need it.
        self.register_buffer("mask", causal_mask(kernel_size, mask_type)[None, None], persistent=False)  # (1, 1, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)  # (B, C_out, H, W)


class MaskedResidualBlock(nn.Module):
    """PixelCNN's residual block (2016a, Fig. 5), with h -> h/2 -> h/2 -> h channels:
    ReLU, 1×1 conv, ReLU, masked k×k conv (mask B), ReLU, 1×1 conv, plus the skip connection.

    1×1 convolutions read only the centre, which is causal after the first mask-A layer.
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        mid = max(1, channels // 2)
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, mid, 1),
            nn.ReLU(), MaskedConv2d(mid, mid, kernel_size, "B"),
            nn.ReLU(), nn.Conv2d(mid, channels, 1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)  # (B, C, H, W)


def embed_symbols(s: torch.Tensor, embed: nn.Embedding) -> torch.Tensor:
    """Symbols (B, H, W) int64, or a one-hot/soft (B, K, H, W) float input -> features (B, C, H, W)."""
    if s.dtype in (torch.int64, torch.int32):
        return embed(s.long()).permute(0, 3, 1, 2)  # (B, C, H, W)
    k = embed.num_embeddings
    if s.dim() != 4 or s.shape[1] != k:
        raise ValueError(f"a float input must be one-hot/soft symbols (B, {k}, H, W), got {tuple(s.shape)}")
    return torch.einsum("bkhw,kc->bchw", s, embed.weight)  # one-hot × embedding matrix


class PixelCNN(nn.Module):
    """An autoregressive model p(s) = Π_i p(s_i | s_<i, y) over an H×W grid of symbols in {0..K-1}.

    The layers are: embedding (a one-hot input times a learned (K, C) matrix), then a mask-A
    k×k convolution, then `n_blocks` mask-B residual blocks, then ReLU, 1×1 conv, ReLU, and a
    1×1 conv to K logits per position. With `n_classes` > 0 the model is class-conditional:
    a learned label embedding is added as a per-channel bias after the first layer and after
    every block (2016b, Eq. 4, with a one-hot h). The bias is the same at every position, so it
    leaves causality intact.
    """

    def __init__(self, n_symbols: int, channels: int = 64, n_blocks: int = 4, kernel_size: int = 7,
                 n_classes: int = 0, block_kernel_size: int = 3):
        super().__init__()
        if n_symbols < 1 or channels < 1 or n_blocks < 0 or n_classes < 0:
            raise ValueError(f"PixelCNN: bad sizes n_symbols={n_symbols}, channels={channels}, "
                             f"n_blocks={n_blocks}, n_classes={n_classes}")
        self.n_symbols, self.channels, self.n_classes = n_symbols, channels, n_classes
        self.embed = nn.Embedding(n_symbols, channels)
        self.first = MaskedConv2d(channels, channels, kernel_size, "A")
        self.blocks = nn.ModuleList(MaskedResidualBlock(channels, block_kernel_size) for _ in range(n_blocks))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1),
                                  nn.ReLU(), nn.Conv2d(channels, n_symbols, 1))
        # One bias vector per conditioned layer (the first layer plus every block), per class.
        self.label_bias = nn.Embedding(n_classes, channels * (n_blocks + 1)) if n_classes else None

    def embed_input(self, s: torch.Tensor) -> torch.Tensor:
        return embed_symbols(s, self.embed)

    def _biases(self, labels: torch.Tensor | None, batch: int) -> list[torch.Tensor | None]:
        if self.label_bias is None:
            if labels is not None:
                raise ValueError("PixelCNN is unconditional (n_classes = 0); got labels")
            return [None] * (len(self.blocks) + 1)
        if labels is None or labels.shape != (batch,):
            raise ValueError(f"PixelCNN is class-conditional: labels must be int64 of shape ({batch},), "
                             f"got {None if labels is None else tuple(labels.shape)}")
        b = self.label_bias(labels.long()).view(batch, len(self.blocks) + 1, self.channels, 1, 1)
        return list(b.unbind(1))  # each (B, C, 1, 1)

    def forward(self, s: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of p(s_i | s_<i, y) at every position: (B, K, H, W)."""
        h = self.embed_input(s)  # (B, C, H, W)
        biases = self._biases(labels, h.shape[0])
        h = self.first(h)
        if biases[0] is not None:
            h = h + biases[0]
        for block, bias in zip(self.blocks, biases[1:]):
            h = block(h)
            if bias is not None:
                h = h + bias
        return self.head(h)  # (B, K, H, W)

    def log_prob(self, s: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p(s | y) = Σ_i log p(s_i | s_<i, y) in nats; (B, H, W) int64 -> (B,)."""
        logp = F.log_softmax(fp32(self(s, labels)), dim=1)  # (B, K, H, W); fp32 under autocast
        return logp.gather(1, s.long().unsqueeze(1)).squeeze(1).sum((1, 2))

    @torch.no_grad()
    def sample(self, n: int, height: int, width: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """n grids s ~ p(s | y), drawn position by position in raster order: (n, H, W) int64.

        Every position takes one full forward pass (H·W passes in all), which is cheap on
        code grids. Draws use the inverse CDF of U[0, 1) noise from `generator` (drawn on the
        generator's device), so a seed gives the same codes wherever the model runs.
        """
        device = self.embed.weight.device
        s = torch.zeros(n, height, width, dtype=torch.long, device=device)
        for r in range(height):
            for c in range(width):
                s[:, r, c] = categorical(F.softmax(self(s, labels)[:, :, r, c], dim=1), generator)  # (n,)
        return s
