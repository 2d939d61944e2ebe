"""Gated PixelCNN, optionally class-conditional (van den Oord et al. 2016b, "Conditional Image
Generation with PixelCNN Decoders", §2).

The net is `gm.nn.gated_pixelcnn.GatedPixelCNN`: a vertical stack (rows above, any column within
its width) and a horizontal stack (the current row, to the left), the vertical one shifted down a
row before it feeds the horizontal one, which removes the blind spot of the masked PixelCNN
(§2.2, Fig. 1-2); gated activations y = tanh(W_f * x) ⊙ σ(W_g * x) (Eq. 2); residual connections
in the horizontal stack; with `conditional: true`, a learned label embedding added inside every
gate, y = tanh(W_f * x + V_f h) ⊙ σ(W_g * x + V_g h) (Eq. 4, h a one-hot class).

Output, likelihood convention, channels (sub-pixels side by side on a symbol grid) and the
vector fallback are those of `gm.models.pixelcnn`: a softmax over the data's levels per
sub-pixel, log p(x) = log P(v) + D·log(scale) in model space. Sampling costs H·W·C forward
passes (H·W on single-channel digits); `sample(n, generator, condition=labels)` draws class y.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from gm.core.config import ConfigError, bounded
from gm.models.pixelcnn import AutoregressiveModel, ChannelGrid
from gm.nn.gated_pixelcnn import GatedPixelCNN
from gm.core.registry import register_family


@dataclass(frozen=True)
class GatedPixelCNNConfig:
    hidden: int = bounded(64, gt=0)  # p, feature maps per stack (the gates see 2p)
    depth: int = bounded(4, gt=0)  # gated layers, the first included (vectors: MADE hidden layers)
    kernel: int = bounded(7, gt=0)  # odd >= 3; the first layer's n×n (vertical (n//2+1)×n, horizontal 1×n//2)
    block_kernel: int = bounded(3, gt=0)  # odd; later layers (2016b, Fig. 2 draws n×n; 3 as in 2016a's blocks)
    conditional: bool = False  # p(x | y): needs labelled data (data.num_classes)
    components: int = bounded(5, gt=0)  # vectors only: Gaussians per coordinate of the MADE fallback
    lr: float = bounded(1e-3, gt=0)  # Adam
    weight_decay: float = bounded(0.0, ge=0)
    ema: float = bounded(0.0, ge=0, lt=1)  # Polyak averaging of the weights for evaluation (PixelCNN++ §3; 0: off)

    def validate(self):
        if self.kernel % 2 != 1 or self.kernel < 3:
            raise ConfigError(f"kernel: expected an odd kernel size >= 3, got {self.kernel}")
        if self.block_kernel % 2 != 1:
            raise ConfigError(f"block_kernel: expected an odd kernel size, got {self.block_kernel}")


@register_family("gated_pixelcnn")
class GatedPixelCNNModel(AutoregressiveModel):
    """Gated PixelCNN (2016b): vertical + horizontal stacks, no blind spot, optional class labels."""

    config_cls = GatedPixelCNNConfig

    def image_body(self) -> nn.Module:
        c, levels = self.config, self.data.levels
        net = GatedPixelCNN(self.data.shape[0] * levels, c.hidden, c.depth, c.kernel, n_classes=self.n_classes,
                            block_kernel_size=c.block_kernel)
        return ChannelGrid(net, self.data)
