"""Shift-based causal convolutions, and the two autoregressive backbones built from them:
the gated PixelCNN (van den Oord et al. 2016b, "Conditional Image Generation with PixelCNN
Decoders", §2.1-2.3, Fig. 2) and PixelCNN++ (Salimans et al. 2017, "PixelCNN++", §2.3-2.5, Fig. 2).

Order: raster order, p(x) = Π_i p(x_i | x_<i) (PixelRNN, van den Oord et al. 2016a, Eq. 1).

Instead of masking a square kernel (`gm.nn.pixelcnn.MaskedConv2d`), these nets pad and crop so
that every output sees a rectangle that ends at its own row (and, for the horizontal stack, at
its own column):

- `DownShiftedConv2d`, kernel kh×kw, padded kh-1 rows above and (kw-1)/2 columns each side:
  output (r, c) sees rows r-kh+1..r, columns c-(kw-1)/2..c+(kw-1)/2 (the "vertical stack").
- `DownRightShiftedConv2d`, padded kh-1 rows above and kw-1 columns left: output (r, c) sees
  rows r-kh+1..r, columns c-kw+1..c (the "horizontal stack").
- `down_shift` / `right_shift` move a map one row down / one column right, so that a feature
  built from rows <= r (columns <= c) then depends on rows < r (columns < c) only.

A vertical feature shifted down one row depends only on the rows above, every column of them
within its width; the horizontal stack adds the current row to the left. Stacking the two
covers the whole rectangle above plus the row to the left: no blind spot (2016b, §2.2), unlike
the masked PixelCNN whose upper-right triangle never enters the receptive field.

Shapes: images / features (B, C, H, W); symbol grids (B, H, W) int64 or one-hot (B, K, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gm.nn.pixelcnn import embed_symbols


# --------------------------------------------------------------------------- shifts and shifted convs


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the same shape, moved one row down with a zero row on top."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the same shape, moved one column right with a zero column on the left."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class DownShiftedConv2d(nn.Conv2d):
    """kh×kw conv whose output (r, c) sees rows r-kh+1..r and columns c±(kw-1)/2 (kw odd).

    With stride 2 the output (i, j) sees rows 2i-1..2i: it depends on nothing below row 2i,
    the property PixelCNN++'s downsampling relies on (Salimans et al. 2017, §2.3).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int] = (2, 3),
                 stride: int = 1):
        kh, kw = kernel_size
        if kw % 2 != 1:
            raise ValueError(f"DownShiftedConv2d needs an odd kernel width, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        self.pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)  # left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))  # (B, C_out, ⌈H/s⌉, ⌈W/s⌉)


class DownRightShiftedConv2d(nn.Conv2d):
    """kh×kw conv whose output (r, c) sees rows r-kh+1..r and columns c-kw+1..c."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int] = (2, 2),
                 stride: int = 1):
        kh, kw = kernel_size
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        self.pad = (kw - 1, 0, kh - 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))  # (B, C_out, ⌈H/s⌉, ⌈W/s⌉)


class DownShiftedConvTranspose2d(nn.ConvTranspose2d):
    """Stride-2 upsampling, kernel 2×kw: output row r reads input row r // 2 only (so no row
    below), columns around c / 2; cropped to the target size (H, W) of the shortcut it meets."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int] = (2, 3)):
        if kernel_size[0] != 2 or kernel_size[1] % 2 != 1:
            raise ValueError(f"DownShiftedConvTranspose2d needs a 2×(odd) kernel, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, stride=2)
        self.col_offset = (kernel_size[1] - 1) // 2

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = super().forward(x)  # (B, C_out, 2h, 2w + kw - 2)
        return y[:, :, :size[0], self.col_offset:self.col_offset + size[1]]  # (B, C_out, H, W)


class DownRightShiftedConvTranspose2d(nn.ConvTranspose2d):
    """Stride-2 upsampling, kernel 2×2: output (r, c) reads input (r // 2, c // 2) only."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, (2, 2), stride=2)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return super().forward(x)[:, :, :size[0], :size[1]]  # (B, C_out, H, W)


def gated_activation(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) ⊙ σ(b) for x = [a, b] split along channels (2016b, Eq. 2): (B, 2C, ...) -> (B, C, ...)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def check_net_labels(labels: torch.Tensor | None, n_classes: int, batch: int, who: str) -> None:
    """Labels are required by a class-conditional net (int64 (B,)) and refused by an unconditional one."""
    if not n_classes:
        if labels is not None:
            raise ValueError(f"{who} is unconditional (n_classes = 0); got labels")
        return
    if labels is None or labels.shape != (batch,):
        raise ValueError(f"{who} is class-conditional: labels must be int64 of shape ({batch},), "
                         f"got {None if labels is None else tuple(labels.shape)}")


# --------------------------------------------------------------------------- gated PixelCNN (2016b)


class GatedLayer(nn.Module):
    """One layer of the gated PixelCNN (2016b, Fig. 2), p feature maps per stack:

        v_pre = V_conv(v)                                          (B, 2p): rows <= r, columns c ± n
        h_pre = H_conv(h) + link(down_shift(v_pre))                (B, 2p)
        v'    = gate(v_pre + V_v h_y),  h' = h + out(gate(h_pre + V_h h_y))

    with gate = tanh ⊙ σ (Eq. 2) and the label embedding V h_y added inside both gates (Eq. 4).
    The vertical kernel is (n+1)×(2n+1), n = kernel_size // 2; the horizontal one 1×(n+1). The
    first layer plays the role of mask A: its horizontal kernel is 1×n, shifted right, so the
    current position is excluded, and it has no residual (the input at the current position
    holds the symbol being predicted).
    """

    def __init__(self, channels: int, kernel_size: int, first: bool, n_classes: int = 0):
        super().__init__()
        n = kernel_size // 2
        if kernel_size % 2 != 1 or (first and n < 1):
            raise ValueError(f"GatedLayer: kernel_size must be odd (and >= 3 for the first layer), got {kernel_size}")
        p = channels
        self.first, self.n_classes = first, n_classes
        self.v_conv = DownShiftedConv2d(p, 2 * p, (n + 1, 2 * n + 1))
        self.h_conv = DownRightShiftedConv2d(p, 2 * p, (1, n if first else n + 1))
        self.link = nn.Conv2d(2 * p, 2 * p, 1)  # vertical -> horizontal, after the one-row shift
        self.h_out = nn.Conv2d(p, p, 1)
        self.label = nn.Embedding(n_classes, 4 * p) if n_classes else None  # V_v and V_h of Eq. 4

    def forward(self, v: torch.Tensor, h: torch.Tensor,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        v_pre = self.v_conv(v)  # (B, 2p, H, W), depends on rows <= r
        h_pre = self.h_conv(h)  # (B, 2p, H, W), columns <= c of row r
        if self.first:
            h_pre = right_shift(h_pre)  # columns < c: the current symbol is hidden
        h_pre = h_pre + self.link(down_shift(v_pre))  # rows < r only: no leak from the vertical stack
        if self.label is not None:
            bias_v, bias_h = self.label(labels.long())[:, :, None, None].chunk(2, dim=1)  # (B, 2p, 1, 1) each
            v_pre, h_pre = v_pre + bias_v, h_pre + bias_h
        out = self.h_out(gated_activation(h_pre))  # (B, p, H, W)
        return gated_activation(v_pre), (out if self.first else h + out)


class GatedPixelCNN(nn.Module):
    """A gated PixelCNN over an H×W grid of symbols in {0..K-1}: p(s) = Π_i p(s_i | s_<i, y).

    Same interface as `gm.nn.pixelcnn.PixelCNN` (and the same symbol embedding and output head:
    ReLU, 1×1, ReLU, 1×1 to K logits), so either serves as the symbol net of a model. Layers:
    one first layer with a `kernel_size` kernel, then `n_layers - 1` layers with
    `block_kernel_size`. After L layers of n = k // 2 the logits at (r, c) see the full
    rectangle of rows r - (L·n + 1)..r - 1 and columns c ± L·n, plus row r from column c - L·n
    to c - 1 (for equal kernels): no blind spot.
    """

    def __init__(self, n_symbols: int, channels: int = 64, n_layers: int = 4, kernel_size: int = 7,
                 n_classes: int = 0, block_kernel_size: int = 3):
        super().__init__()
        if n_symbols < 1 or channels < 1 or n_layers < 1 or n_classes < 0:
            raise ValueError(f"GatedPixelCNN: bad sizes n_symbols={n_symbols}, channels={channels}, "
                             f"n_layers={n_layers}, n_classes={n_classes}")
        self.n_symbols, self.channels, self.n_classes = n_symbols, channels, n_classes
        self.embed = nn.Embedding(n_symbols, channels)
        self.layers = nn.ModuleList(
            [GatedLayer(channels, kernel_size, True, n_classes)]
            + [GatedLayer(channels, block_kernel_size, False, n_classes) for _ in range(n_layers - 1)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1),
                                  nn.ReLU(), nn.Conv2d(channels, n_symbols, 1))

    def embed_input(self, s: torch.Tensor) -> torch.Tensor:
        return embed_symbols(s, self.embed)

    def forward(self, s: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of p(s_i | s_<i, y) at every position: (B, K, H, W)."""
        x = self.embed_input(s)  # (B, C, H, W)
        check_net_labels(labels, self.n_classes, x.shape[0], "GatedPixelCNN")
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return self.head(h)  # (B, K, H, W)


# --------------------------------------------------------------------------- PixelCNN++ (2017)


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """ELU of [x, -x]: PixelCNN++'s nonlinearity (Salimans et al. 2017, code); (B, C, ...) -> (B, 2C, ...)."""
    return F.elu(torch.cat([x, -x], dim=1))


class GatedResnet(nn.Module):
    """PixelCNN++'s gated residual block (Salimans et al. 2017, Fig. 2 and §2.5), with a shifted conv:

        c1 = conv(concat_elu(x)) + nin(concat_elu(a))      (a: the other stream / the shortcut)
        c2 = conv(dropout(concat_elu(c1))) + V h_y          (2C channels; label bias as in 2016b Eq. 4)
        out = x + c2_a ⊙ σ(c2_b)

    Both convs are of `conv_cls`, so the block keeps its stream's causality; a 1×1 `nin` of
    an auxiliary input reads only the same position.
    """

    def __init__(self, channels: int, conv_cls: type, kernel_size: tuple[int, int], aux_channels: int = 0,
                 dropout: float = 0.0, n_classes: int = 0):
        super().__init__()
        c = channels
        self.conv1 = conv_cls(2 * c, c, kernel_size)
        self.nin = nn.Conv2d(2 * aux_channels, c, 1) if aux_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv_cls(2 * c, 2 * c, kernel_size)
        with torch.no_grad():  # a small residual branch at the start (the paper's code: init_scale 0.1)
            self.conv2.weight.mul_(0.1)
        self.label = nn.Embedding(n_classes, 2 * c) if n_classes else None

    def forward(self, x: torch.Tensor, aux: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        c1 = self.conv1(concat_elu(x))  # (B, C, H, W)
        if self.nin is not None:
            c1 = c1 + self.nin(concat_elu(aux))
        c2 = self.conv2(self.dropout(concat_elu(c1)))  # (B, 2C, H, W)
        if self.label is not None:
            c2 = c2 + self.label(labels.long())[:, :, None, None]
        a, b = c2.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)  # (B, C, H, W)


class PixelCNNPP(nn.Module):
    """The PixelCNN++ backbone (Salimans et al. 2017, Fig. 2): two streams, u (rows above, via
    down-shifted convs) and ul (rows above and the current row to the left, via
    down-right-shifted convs), through `n_resolutions` resolutions down and back up.

    Down pass (resolution decreasing, the paper code's "up pass"): at each resolution
    `n_blocks` gated resnet blocks per stream (ul reads u as auxiliary input), then a stride-2
    shifted conv (§2.3: downsampling instead of dilation). Every intermediate output is kept.
    Up pass: stride-2 shifted transposed convs back up, and gated resnet blocks that take the
    kept output of the same resolution as a shortcut (§2.4; n_blocks at the lowest resolution,
    n_blocks + 1 at the others, so every kept output is consumed once). Output: 1×1 conv of
    ELU(ul) to `out_channels` per position.

    The input x (B, C_in, H, W) gets a channel of ones, so the net can tell zero padding from
    zero-valued pixels (as in the paper's code). The outputs at (r, c) depend on the whole
    pixels strictly before (r, c) in raster order, never on any channel of (r, c) itself.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 64, n_blocks: int = 2,
                 n_resolutions: int = 2, dropout: float = 0.0, n_classes: int = 0):
        super().__init__()
        if min(in_channels, out_channels, channels, n_blocks, n_resolutions) < 1 or n_classes < 0:
            raise ValueError(f"PixelCNNPP: bad sizes in={in_channels}, out={out_channels}, channels={channels}, "
                             f"n_blocks={n_blocks}, n_resolutions={n_resolutions}, n_classes={n_classes}")
        c, cin = channels, in_channels + 1
        self.n_classes = n_classes
        self.u_init = DownShiftedConv2d(cin, c, (2, 3))  # then down_shift: rows < r
        self.ul_init_above = DownShiftedConv2d(cin, c, (1, 3))  # then down_shift: row r - 1
        self.ul_init_left = DownRightShiftedConv2d(cin, c, (2, 1))  # then right_shift: column c - 1

        def u_block(aux: int) -> GatedResnet:
            return GatedResnet(c, DownShiftedConv2d, (2, 3), aux, dropout, n_classes)

        def ul_block(aux: int) -> GatedResnet:
            return GatedResnet(c, DownRightShiftedConv2d, (2, 2), aux, dropout, n_classes)

        r = n_resolutions
        self.down_u = nn.ModuleList(nn.ModuleList(u_block(0) for _ in range(n_blocks)) for _ in range(r))
        self.down_ul = nn.ModuleList(nn.ModuleList(ul_block(c) for _ in range(n_blocks)) for _ in range(r))
        self.downsample_u = nn.ModuleList(DownShiftedConv2d(c, c, (2, 3), stride=2) for _ in range(r - 1))
        self.downsample_ul = nn.ModuleList(DownRightShiftedConv2d(c, c, (2, 2), stride=2) for _ in range(r - 1))
        blocks_up = [n_blocks + 1] * (r - 1) + [n_blocks]  # per resolution, highest first
        self.up_u = nn.ModuleList(nn.ModuleList(u_block(c) for _ in range(k)) for k in blocks_up)
        self.up_ul = nn.ModuleList(nn.ModuleList(ul_block(2 * c) for _ in range(k)) for k in blocks_up)
        self.upsample_u = nn.ModuleList(DownShiftedConvTranspose2d(c, c, (2, 3)) for _ in range(r - 1))
        self.upsample_ul = nn.ModuleList(DownRightShiftedConvTranspose2d(c, c) for _ in range(r - 1))
        self.out = nn.Conv2d(c, out_channels, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C_in, H, W) model-space values -> parameters (B, out_channels, H, W)."""
        check_net_labels(labels, self.n_classes, x.shape[0], "PixelCNNPP")
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (B, C_in + 1, H, W)
        us = [down_shift(self.u_init(x))]
        uls = [down_shift(self.ul_init_above(x)) + right_shift(self.ul_init_left(x))]
        n_res = len(self.down_u)
        for r in range(n_res):
            for block_u, block_ul in zip(self.down_u[r], self.down_ul[r]):
                us.append(block_u(us[-1], labels=labels))
                uls.append(block_ul(uls[-1], us[-1], labels))
            if r < n_res - 1:
                us.append(self.downsample_u[r](us[-1]))  # (B, C, ⌈H/2⌉, ⌈W/2⌉)
                uls.append(self.downsample_ul[r](uls[-1]))
        u, ul = us.pop(), uls.pop()
        for r in reversed(range(n_res)):
            if r < n_res - 1:
                size = tuple(us[-1].shape[-2:])  # the shortcut's resolution
                u, ul = self.upsample_u[r](u, size), self.upsample_ul[r](ul, size)
            for block_u, block_ul in zip(self.up_u[r], self.up_ul[r]):
                u = block_u(u, us.pop(), labels)
                ul = block_ul(ul, torch.cat([u, uls.pop()], dim=1), labels)
        return self.out(F.elu(ul))  # (B, out_channels, H, W)
