"""PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016a, "Pixel Recurrent Neural Networks",
§3.1-3.3, §4): the Row LSTM and the Diagonal BiLSTM, optionally class-conditional.

Exact likelihood by the chain rule in raster order (Eq. 1). The net is `gm.nn.pixelrnn.PixelRNN`
(Table 1): a 7×7 mask-A convolution of the image (each sub-pixel's intensity, `input: intensity`;
or a learned embedding per level, `input: symbols`, the PixelCNN families' input), `depth`
residual LSTM layers of h = `hidden` units on a 2h-feature stream (§3.3), two ReLU + 1×1
convolutions and a softmax over the data's levels at every position (§2.2, §5.3: pixels as
discrete variables). `arch: row_lstm` processes rows top to bottom with 1×k convolutions (§3.1: a
triangular context); `arch: diagonal_bilstm` scans the skewed map's diagonals in both directions
(§3.2: the full context but for one position, see `gm.nn.pixelrnn`; the paper's best model, Table 4).

Output, likelihood convention, channels (sub-pixels side by side on a symbol grid, Eq. 2's order)
and the vector fallback (a MADE mixture) are those of `gm.models.pixelcnn`: log p(x) =
log P(v) + D·log(scale) in model space. Sampling draws the H·W·C sub-pixels in the same order with
the same noise as `ChannelGrid.sample` (one forward pass per sub-pixel, over the rows drawn so
far), but carries every LSTM layer's states along the rows (`PixelRNN.sample_grid`), so a sub-pixel
costs one step per layer; `sample(n, generator, condition=labels)` draws class y.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gm.core.config import ConfigError, bounded
from gm.core.numerics import categorical
from gm.core.registry import register_family
from gm.models.base import StepGroup
from gm.models.pixelcnn import AutoregressiveModel, ChannelGrid
from gm.nn.observation import bin_centres
from gm.nn.pixelrnn import PixelRNN


@dataclass(frozen=True)
class PixelRNNConfig:
    arch: Literal["row_lstm", "diagonal_bilstm"] = "diagonal_bilstm"  # §3.1 / §3.2; the BiLSTM sees the full context
    hidden: int = bounded(32, gt=0)  # h, LSTM units per direction; the residual stream has 2h (§3.3)
    depth: int = bounded(2, gt=0)  # LSTM layers (§4: MNIST 7 of h = 16, Table 4; CIFAR-10 12 of h = 128)
    kernel: int = bounded(3, gt=0)  # odd >= 3; Row LSTM's 1×k input-to-state (mask B) and state-to-state (§3.1, Table 1: 3)
    first_kernel: int = bounded(7, gt=0)  # odd; the mask-A first layer, both archs (Table 1: 7×7)
    # What the first layer reads: "intensity", each sub-pixel's value (the paper's input, the image);
    # "symbols", a learned embedding per level (the PixelCNN families' input, no order between levels).
    input: Literal["intensity", "symbols"] = "intensity"
    dropout: float = bounded(0.0, ge=0, lt=1)  # on each LSTM layer's output; not in the paper (a small-data regulariser)
    conditional: bool = False  # p(x | y): a label bias after every layer (2016b, Eq. 4); needs data.num_classes
    components: int = bounded(5, gt=0)  # vectors only: Gaussians per coordinate of the MADE fallback
    optimizer: Literal["adam", "rmsprop"] = "adam"  # §5.2 found RMSProp best; Adam as the sibling families
    lr: float = bounded(1e-3, gt=0)
    weight_decay: float = bounded(0.0, ge=0)
    ema: float = bounded(0.0, ge=0, lt=1)  # Polyak averaging of the weights for evaluation (PixelCNN++ §3; 0: off)

    def validate(self):
        if self.kernel % 2 != 1 or self.kernel < 3:
            raise ConfigError(f"kernel: expected an odd kernel size >= 3 (§3.1: k >= 3), got {self.kernel}")
        if self.first_kernel % 2 != 1:
            raise ConfigError(f"first_kernel: expected an odd kernel size, got {self.first_kernel}")


class PixelRNNGrid(ChannelGrid):
    """`ChannelGrid` over a `PixelRNN`, sampled with the LSTM states carried along (`sample_grid`)."""

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """Sub-pixel by sub-pixel in raster order (Eq. 2's order): bin centres (n, C, H, W)."""
        c, levels = self.channels, self.data.levels

        def choose(logits: torch.Tensor, r: int, col: int) -> torch.Tensor:
            ch = col % c  # grid column w·C + ch holds channel ch of pixel w
            v = categorical(F.softmax(logits[:, ch * levels:(ch + 1) * levels], -1), generator)  # (n,)
            return v + ch * levels  # its symbol

        s = self.net.sample_grid(n, self.height, self.width * c, choose, labels)  # (n, H, W·C)
        v = (s - self.offsets.repeat(self.width)).view(n, self.height, self.width, c).permute(0, 3, 1, 2)
        return bin_centres(v, self.data)  # (n, C, H, W)


@register_family("pixelrnn")
class PixelRNNModel(AutoregressiveModel):
    """PixelRNN (2016a): a mask-A conv, residual Row LSTM or Diagonal BiLSTM layers, a softmax over the levels."""

    config_cls = PixelRNNConfig

    def image_body(self) -> nn.Module:
        c, levels = self.config, self.data.levels
        net = PixelRNN(self.data.shape[0] * levels, c.hidden, c.depth, c.arch, kernel_size=c.kernel,
                       first_kernel_size=c.first_kernel, n_classes=self.n_classes, dropout=c.dropout,
                       levels=levels if c.input == "intensity" else None)
        return PixelRNNGrid(net, self.data)

    def step_groups(self) -> list[StepGroup]:
        c = self.config
        return [StepGroup(self.group, list(self.parameters()), lr=c.lr, optimizer=c.optimizer,
                          weight_decay=c.weight_decay)]
