"""PixelRNN's two-dimensional LSTM layers (van den Oord, Kalchbrenner & Kavukcuoglu 2016a, "Pixel
Recurrent Neural Networks", §3.1-3.3, §4 and Table 1), over a grid of discrete symbols.

The order is raster order, p(s) = Π_i p(s_i | s_<i) (Eq. 1). The net is PixelCNN's stack
(`gm.nn.pixelcnn.PixelCNN`: embedding, 7×7 mask-A convolution, ReLU + 1×1 convolutions to a
softmax) with its residual blocks replaced by residual LSTM layers, as Table 1 lays the three
single-scale nets side by side: the same first layer, the same output layers, and between them

- Row LSTM (§3.1): rows top to bottom, a whole row per step. Input-to-state: a 1×k convolution
  along the row, mask B (it sees columns c-k//2..c of row r); state-to-state: an unmasked 1×k
  convolution over the previous row's hidden state (Table 1: k = 3 for both). The gates
  [o, f, i, g] = σ(K^ss ⊛ h_{r-1} + K^is ⊛ x_r) and c_r = f ⊙ c_{r-1} + i ⊙ g, h_r = o ⊙ tanh(c_r)
  (Eq. 3; σ is tanh for g). The receptive field is the triangle above (Fig. 4).
- Diagonal BiLSTM (§3.2, Fig. 3): the input map is skewed (row r moved r columns right, H × (W+H-1))
  so that each anti-diagonal becomes a column; input-to-state a 1×1 convolution (mask B), state-to-
  state a 2×1 convolution down the previous column: the state at (r, c) reads the states at (r-1, c)
  above and (r, c-1) on the left, so its receptive field is the whole quadrant above-left. The
  right-to-left direction is the same scan on the mirrored map. Its output at (r, c) has seen
  (r, c+1..): "to prevent the layer from seeing future pixels, the right output map is then shifted
  down by one row and added to the left output map" (§3.2); with it every position sees everything
  above and everything to its left, the full context (Fig. 4), but for one position: the last one
  of the row above, (r-1, W-1), reaches (r, c) only through the mask-A layer's window (c + k//2 >=
  W-1), because the right-to-left scan reads mask-A features, and the feature at (r-1, W-1) leaves
  out its own pixel (tests/test_pixelrnn.py pins the exact field).
- Residual connections (§3.3, Fig. 5 right): the input map has 2h features, the input-to-state
  convolution gives h per gate (4h), the layer's h-feature output goes through a 1×1 convolution
  back to 2h and the input map is added.

Masks on a symbol grid: one symbol per position, so mask B is "this position and before" for every
channel pair (see `gm.nn.pixelcnn`); colour images are laid out as a grid with the channels of a
pixel side by side (`gm.models.pixelcnn.ChannelGrid`), not split with the channel masks of §3.4.

Shapes: symbol grids (B, H, W) int64 or one-hot (B, K, H, W); feature maps (B, C, H, W).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gm.nn.gated_pixelcnn import DownRightShiftedConv2d, down_shift
from gm.nn.pixelcnn import PixelCNN

Arch = Literal["row_lstm", "diagonal_bilstm"]


def skew(x: torch.Tensor) -> torch.Tensor:
    """Row r moved r positions right (2016a, Fig. 3): (B, C, H, W) -> (B, C, H, W+H-1), zeros around.

    Flattened, row r of the skewed map starts at r·(W+H-1) + r = r·(W+H): the flat image padded to
    rows of W+H, cut to H·(W+H-1) values, is the skewed map."""
    b, c, h, w = x.shape
    flat = F.pad(x, (0, h)).flatten(2)  # (B, C, H·(W+H))
    return flat[:, :, :h * (w + h - 1)].view(b, c, h, w + h - 1)


def unskew(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `skew`: (B, C, H, W+H-1) -> (B, C, H, W), entry (r, c) read at (r, r + c)."""
    b, c, h, skewed = x.shape
    w = skewed - h + 1
    flat = F.pad(x.flatten(2), (0, h))  # (B, C, H·(W+H)): row r's pixels start at r·(W+H)
    return flat.view(b, c, h, w + h)[..., :w]


def lstm_cell(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 given the summed pre-activations: gates (B, 4, h, ...) as [o, f, i, g], cell (B, h, ...)
    -> (hidden, cell), each (B, h, ...)."""
    o, f, i, g = gates.unbind(1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


class RowLSTM(nn.Module):
    """The Row LSTM layer (§3.1): (B, C, H, W) -> (B, h, H, W), one step per row."""

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1 or kernel_size < 3:
            raise ValueError(f"RowLSTM: kernel_size must be odd and >= 3 (§3.1: k >= 3), got {kernel_size}")
        self.hidden = hidden
        # A 1×k mask-B kernel keeps its k//2 + 1 taps up to the centre: exactly a 1×(k//2+1) conv
        # padded on the left (the horizontal stack's shifted conv), with no masked weights to carry.
        self.input_to_state = DownRightShiftedConv2d(in_channels, 4 * hidden, (1, kernel_size // 2 + 1))
        # The previous row is all past: an unmasked 1×k conv (one bias for the gates: the one above).
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        gates_in = self.input_to_state(x).permute(2, 0, 1, 3).contiguous()  # every row at once: (H, B, 4h, W)
        h = x.new_zeros(b, self.hidden, width)
        c = torch.zeros_like(h)
        rows = []
        for r in range(height):
            gates = gates_in[r] + self.state_to_state(h)  # (B, 4h, W)
            h, c = lstm_cell(gates.view(b, 4, self.hidden, width), c)
            rows.append(h)
        return torch.stack(rows, dim=2)  # (B, h, H, W)

    def begin(self, n: int, width: int) -> "RowLSTMSteps":
        return RowLSTMSteps(self, n, width)


class RowLSTMSteps:
    """A Row LSTM run one position at a time, in raster order, for sampling: the previous row's
    states are kept, so position (r, c) costs one LSTM step (forward() would redo rows 0..r)."""

    def __init__(self, layer: RowLSTM, n: int, width: int):
        w = layer.state_to_state.weight
        self.layer, self.taps = layer, layer.input_to_state.kernel_size[1]
        self.w_in = layer.input_to_state.weight.flatten(1)  # (4h, C·taps), the 1×taps kernel as a matrix
        self.inputs = w.new_zeros(n, layer.input_to_state.in_channels, width + self.taps - 1)  # row r, left-padded
        self.h, self.c = w.new_zeros(n, layer.hidden, width), w.new_zeros(n, layer.hidden, width)  # row r
        self.c_above = torch.zeros_like(self.c)
        self.from_above = layer.state_to_state(self.h)  # (n, 4h, W): K^ss ⊛ h_{r-1}, zero above row 0

    def step(self, x: torch.Tensor, col: int) -> torch.Tensor:
        """The layer's input at (r, col), (n, C) -> its output there, (n, h)."""
        layer, n = self.layer, x.shape[0]
        self.inputs[:, :, col + self.taps - 1] = x
        window = self.inputs[:, :, col:col + self.taps].flatten(1)  # (n, C·taps): columns col-taps+1..col
        gates = F.linear(window, self.w_in, layer.input_to_state.bias) + self.from_above[:, :, col]  # (n, 4h)
        h, c = lstm_cell(gates.view(n, 4, layer.hidden), self.c_above[:, :, col])
        self.h[:, :, col], self.c[:, :, col] = h, c
        return h

    def end_row(self) -> None:
        self.c_above = self.c.clone()
        self.from_above = self.layer.state_to_state(self.h)


class DiagonalBiLSTM(nn.Module):
    """The Diagonal BiLSTM layer (§3.2): (B, C, H, W) -> (B, h, H, W), one step per skewed column
    (W+H-1 of them), both directions in the same steps (grouped convolutions, one group each)."""

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.input_to_state = nn.Conv2d(2 * in_channels, 8 * hidden, 1, groups=2)  # 1×1 (mask B), per direction
        self.state_to_state = nn.Conv1d(2 * hidden, 8 * hidden, 2, groups=2, bias=False)  # 2×1 down a column

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        hid = self.hidden
        both = torch.cat([x, x.flip(-1)], dim=1)  # right-to-left = left-to-right on the mirror image
        gates_in = skew(self.input_to_state(both)).permute(3, 0, 1, 2).contiguous()  # (W+H-1, B, 8h, H)
        h = x.new_zeros(b, 2 * hid, height)  # column j-1's states, both directions
        c = x.new_zeros(b, 2, hid, height)
        columns = []
        for j in range(gates_in.shape[0]):
            # Row r of column j reads rows r-1 (the pixel above) and r (the pixel to the left) of column j-1.
            gates = gates_in[j] + self.state_to_state(F.pad(h, (1, 0)))  # (B, 8h, H)
            hj, c = lstm_cell(gates.view(b * 2, 4, hid, height), c.view(b * 2, hid, height))
            h, c = hj.view(b, 2 * hid, height), c.view(b, 2, hid, height)
            columns.append(h)
        out = unskew(torch.stack(columns, dim=-1))  # (B, 2h, H, W)
        left, right = out[:, :hid], out[:, hid:].flip(-1)
        return left + down_shift(right)  # the right map one row down: no future pixel (§3.2)

    def begin(self, n: int, width: int) -> "DiagonalBiLSTMSteps":
        return DiagonalBiLSTMSteps(self, n, width)


class DiagonalBiLSTMSteps:
    """A Diagonal BiLSTM run one position at a time, in raster order, for sampling. Unskewed, the
    left-to-right state at (r, c) reads the states at (r-1, c) (the 2×1 kernel's upper tap) and
    (r, c-1) (its lower tap, whose cell state it carries on); the right-to-left one (r-1, c) and
    (r, c+1). So position (r, c) costs one left-to-right step, and each finished row one
    right-to-left scan of it, whose states the next row adds (the one-row shift of §3.2)."""

    def __init__(self, layer: DiagonalBiLSTM, n: int, width: int):
        hid, w_is, w_ss = layer.hidden, layer.input_to_state.weight[:, :, 0, 0], layer.state_to_state.weight
        self.hid, self.width = hid, width
        self.w_is, self.b_is = w_is.view(2, 4 * hid, -1), layer.input_to_state.bias.view(2, 4 * hid)  # (2, 4h, C)
        self.w_above, self.w_beside = w_ss[:, :, 0].view(2, 4 * hid, hid), w_ss[:, :, 1].view(2, 4 * hid, hid)
        self.inputs = w_is.new_zeros(n, w_is.shape[1], width)  # row r
        self.left = [w_is.new_zeros(n, hid, width) for _ in range(2)]  # h, c of row r, left-to-right
        self.left_above = w_is.new_zeros(n, hid, width)  # h of row r-1, left-to-right
        self.right_above = w_is.new_zeros(n, hid, width)  # h of row r-1, right-to-left

    def _cell(self, d: int, x: torch.Tensor, above: torch.Tensor, beside: torch.Tensor | None,
              c_beside: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        gates = F.linear(x, self.w_is[d], self.b_is[d]) + F.linear(above, self.w_above[d])  # (n, 4h)
        if beside is not None:
            gates = gates + F.linear(beside, self.w_beside[d])
        c = torch.zeros_like(above) if c_beside is None else c_beside
        return lstm_cell(gates.view(-1, 4, self.hid), c)

    def step(self, x: torch.Tensor, col: int) -> torch.Tensor:
        """The layer's input at (r, col), (n, C) -> its output there, (n, h)."""
        self.inputs[:, :, col] = x
        h, c = self.left
        prev = (h[:, :, col - 1], c[:, :, col - 1]) if col else (None, None)
        h[:, :, col], c[:, :, col] = self._cell(0, x, self.left_above[:, :, col], *prev)
        return h[:, :, col] + self.right_above[:, :, col]

    def end_row(self) -> None:
        h, c = torch.zeros_like(self.right_above), torch.zeros_like(self.right_above)
        for col in range(self.width - 1, -1, -1):
            prev = (h[:, :, col + 1], c[:, :, col + 1]) if col + 1 < self.width else (None, None)
            h[:, :, col], c[:, :, col] = self._cell(1, self.inputs[:, :, col], self.right_above[:, :, col], *prev)
        self.right_above, self.left_above = h, self.left[0].clone()


class ResidualLSTM(nn.Module):
    """x + 1×1 conv(LSTM(x)): 2h -> h -> 2h features (§3.3, Fig. 5 right); dropout on the LSTM's output."""

    def __init__(self, channels: int, hidden: int, arch: Arch, kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        if arch == "row_lstm":
            self.lstm: nn.Module = RowLSTM(channels, hidden, kernel_size)
        elif arch == "diagonal_bilstm":
            self.lstm = DiagonalBiLSTM(channels, hidden)
        else:
            raise ValueError(f"arch: expected 'row_lstm' or 'diagonal_bilstm', got {arch!r}")
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.dropout(self.lstm(x)))  # (B, 2h, H, W)


class IntensityEmbedding(nn.Module):
    """The image itself as the input (2016a, Table 1: the first layer convolves the pixels' values),
    on a channel grid: symbol ch·L + l -> value(l)·a_ch + b_ch, value(l) = (2l + 1)/L - 1 the level's
    bin centre in model space. An `nn.Embedding` whose table is affine in the level for each channel,
    so symbols and one-hot inputs go through `embed_symbols` alike."""

    def __init__(self, levels: int, channels: int, features: int):
        super().__init__()
        value = (2 * torch.arange(levels) + 1) / levels - 1
        self.register_buffer("value", value.repeat(channels), persistent=False)  # (C·L,)
        self.register_buffer("channel", torch.arange(channels).repeat_interleave(levels), persistent=False)
        self.scale = nn.Parameter(torch.randn(channels, features))  # a_ch; N(0, 1) as nn.Embedding
        self.shift = nn.Parameter(torch.zeros(channels, features))  # b_ch

    @property
    def num_embeddings(self) -> int:
        return self.value.numel()

    @property
    def weight(self) -> torch.Tensor:
        return self.value[:, None] * self.scale[self.channel] + self.shift[self.channel]  # (C·L, F)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return F.embedding(s, self.weight)  # (..., F)


class PixelRNN(PixelCNN):
    """p(s) = Π_i p(s_i | s_<i, y) over an H×W grid of symbols in {0..K-1} (2016a, Table 1):
    embedding, k×k mask-A convolution to 2h features, `n_layers` residual LSTM layers of h units,
    ReLU, 1×1 conv, ReLU, 1×1 conv to K logits per position. With `levels`, the symbols (ch·L + l of
    a channel grid) enter as their intensities (`IntensityEmbedding`), as the paper's image; without,
    as a free embedding per symbol (the PixelCNN families' input).

    PixelCNN's forward pass, log_prob and label biases (2016b, Eq. 4: a learned per-class bias after
    the first layer and after every layer, the same at every position, so causal) with its blocks
    replaced by the LSTM layers.
    """

    def __init__(self, n_symbols: int, hidden: int = 16, n_layers: int = 2, arch: Arch = "diagonal_bilstm",
                 kernel_size: int = 3, first_kernel_size: int = 7, n_classes: int = 0, dropout: float = 0.0,
                 levels: int | None = None):
        if hidden < 1 or n_layers < 1 or n_classes < 0:
            raise ValueError(f"PixelRNN: bad sizes hidden={hidden}, n_layers={n_layers}, n_classes={n_classes}")
        channels = 2 * hidden  # the residual stream (§3.3)
        if levels is not None and (levels < 1 or n_symbols % levels):
            raise ValueError(f"PixelRNN: {n_symbols} symbols are not channels × {levels} levels")
        super().__init__(n_symbols, channels, n_blocks=0, kernel_size=first_kernel_size)
        if levels is not None:
            self.embed = IntensityEmbedding(levels, n_symbols // levels, channels)
        self.arch, self.n_classes = arch, n_classes
        self.blocks = nn.ModuleList(ResidualLSTM(channels, hidden, arch, kernel_size, dropout)
                                    for _ in range(n_layers))
        self.label_bias = nn.Embedding(n_classes, channels * (n_layers + 1)) if n_classes else None

    @torch.no_grad()
    def sample_grid(self, n: int, height: int, width: int, choose: Callable[[torch.Tensor, int, int], torch.Tensor],
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """n grids (n, H, W) int64 drawn position by position in raster order, `choose(logits (n, K),
        r, c) -> symbols (n,)` drawing each; every LSTM layer carries its states along the rows
        (`begin`), so a position costs one step per layer instead of a forward pass over rows 0..r.
        The logits are the forward pass's at that position on the finished grid (causality), which
        tests/test_pixelrnn.py checks."""
        s = torch.zeros(n, height, width, dtype=torch.long, device=self.embed.weight.device)
        biases = [None if b is None else b[:, :, 0, 0] for b in self._biases(labels, n)]  # each (n, 2h)
        reach = self.first.kernel_size[0] // 2  # the mask-A layer reads rows r - reach .. r
        steps = [block.lstm.begin(n, width) for block in self.blocks]
        for r in range(height):
            for col in range(width):
                x = self.first(self.embed_input(s[:, max(0, r - reach):r + 1]))[:, :, -1, col]  # (n, 2h)
                if biases[0] is not None:
                    x = x + biases[0]
                for block, layer_steps, bias in zip(self.blocks, steps, biases[1:]):
                    h = block.dropout(layer_steps.step(x, col))  # (n, h)
                    x = x + block.out(h[:, :, None, None])[:, :, 0, 0]
                    if bias is not None:
                        x = x + bias
                s[:, r, col] = choose(self.head(x[:, :, None, None])[:, :, 0, 0], r, col)
            for layer_steps in steps:
                layer_steps.end_row()
        return s
