"""WaveNet (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio", §2), with fast
generation by queues (Paine et al. 2016, "Fast Wavenet Generation Algorithm").

Exact likelihood by the chain rule over one sequence, p(x) = Π_t p(x_t | x_<t) (Eq. 1), each factor
a softmax over the data's levels (§2.2: 256 μ-law levels for audio, `gm.data.audio`); with
`conditional: true`, p(x | y) = Π_t p(x_t | x_<t, y), the class label entering every gate (global
conditioning, §2.5, Eq. 3). The net is `gm.nn.wavenet.WaveNet`: a causal input conv, stacks of
dilated causal convs with dilations 1, 2, .., 2^(n-1) (§2.1), gated units (§2.3), residual and skip
connections into a ReLU-1×1-ReLU-1×1 head (§2.4). Each logit sees the last

    receptive_field = kernel + (kernel - 1) · stacks · (2^layers_per_stack - 1)

samples (512 at the defaults; 3071 with the paper's 1..512 ×3).

Data. Any discrete data with levels is read as one sequence: audio (1, T) is its T samples (bits/dim
are then bits per sample); an image (C, H, W) is read in raster order with a pixel's C channels
consecutive (PixelRNN's order, 2016a Eq. 2), the channel of a position carried by its symbol
(channel·levels + level, as `gm.models.pixelcnn.ChannelGrid`), so WaveNet over the 64 pixels of the
8×8 digits is a valid autoregressive image model. Continuous vectors get the MADE mixture fallback
of the autoregressive families (`hidden`, `depth` and `components` only matter there).

Likelihood convention as `gm.models.pixelcnn`: log p(x) = log P(v) + D·log(scale) in model space, v
the levels of x; the evaluation adds `DataSpec.log_det_to_model` and gets log P(v).

Sampling costs T steps. With `fast_generation` (default) a step is one column per layer through
the queues (`gm.nn.wavenet.FastGenerator`); without, a step is a forward pass over the last
receptive_field samples (the naive algorithm Paine et al. compare against). Both give the same
logits, so with one seeded generator they draw the same sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gm.core.config import bounded
from gm.core.numerics import categorical
from gm.core.registry import register_family
from gm.data.dataspec import DataSpec
from gm.models.pixelcnn import DiscreteAutoregressiveModel
from gm.nn.observation import bin_centres, levels_of
from gm.nn.precision import fp32
from gm.nn.wavenet import WaveNet, receptive_field

__all__ = ["WaveNetConfig", "WaveNetModel", "LevelSequence"]


@dataclass(frozen=True)
class WaveNetConfig:
    residual_channels: int = bounded(32, gt=0)  # the residual stream (the paper gives no sizes; 32 as common ports)
    dilation_channels: int = bounded(32, gt=0)  # the gate's width, tanh and σ halves each (§2.3)
    skip_channels: int = bounded(64, gt=0)  # the parameterised skips and the head (§2.4, Fig. 4)
    layers_per_stack: int = bounded(8, gt=0)  # dilations 1, 2, .., 2^(n-1) (§2.1; the paper: 10, up to 512)
    stacks: int = bounded(2, gt=0)  # the dilation pattern repeated (§2.1: "1, 2, .., 512, 1, 2, .., 512, ..")
    kernel: int = bounded(2, ge=2)  # filter length of every causal conv (§2.1, Fig. 3: 2)
    conditional: bool = False  # global conditioning on the class label, p(x | y) (§2.5, Eq. 3)
    fast_generation: bool = True  # sample through the queues of Paine et al. 2016 (False: naive passes)
    lr: float = bounded(1e-3, gt=0)  # Adam (the paper gives no optimiser settings)
    weight_decay: float = bounded(0.0, ge=0)
    ema: float = bounded(0.0, ge=0, lt=1)  # Polyak averaging of the weights for evaluation (PixelCNN++ §3; 0: off)
    hidden: int = bounded(64, gt=0)  # vectors only: the MADE fallback's width
    depth: int = bounded(2, gt=0)  # vectors only: the MADE fallback's hidden layers
    components: int = bounded(5, gt=0)  # vectors only: Gaussians per coordinate of the MADE fallback

    @property
    def receptive_field(self) -> int:
        """Past samples each prediction sees: kernel + (kernel-1)·stacks·(2^layers_per_stack - 1)."""
        return receptive_field(self.kernel, self.layers_per_stack, self.stacks)


class LevelSequence(nn.Module):
    """Discrete data (C, *rest) as one sequence of T = dim symbols for a `WaveNet`: position order is
    `rest` in raster order with the C channels of each point consecutive; the symbol at a position of
    channel c with level v is c·levels + v. Audio (1, T) is its own sequence."""

    def __init__(self, net: WaveNet, data: DataSpec):
        super().__init__()
        self.net, self.data = net, data
        self.channels = data.shape[0] if len(data.shape) > 1 else 1
        offsets = (torch.arange(data.dim) % self.channels) * data.levels  # (T,) channel·levels per position
        self.register_buffer("offsets", offsets, persistent=False)

    def sequence(self, v: torch.Tensor) -> torch.Tensor:
        """Levels (B, C, *rest) -> symbols (B, T)."""
        if len(self.data.shape) > 1:
            v = v.movedim(1, -1)  # (B, *rest, C): a point's channels side by side
        return v.flatten(1) + self.offsets

    def unsequence(self, levels: torch.Tensor) -> torch.Tensor:
        """Levels in sequence order (B, T) -> (B, C, *rest)."""
        shape = self.data.shape
        if len(shape) == 1:
            return levels.view(-1, *shape)
        return levels.view(-1, *shape[1:], shape[0]).movedim(-1, 1)

    def step_log_mass(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log P(v_t | v_<t) of every position, x (B, *shape) model space -> (B, T) in sequence order."""
        s = self.sequence(levels_of(x, self.data))  # (B, T)
        logp = F.log_softmax(fp32(self.net(s, labels)), dim=1)  # (B, L, T), fp32 under autocast
        v = s - self.offsets
        return logp.gather(1, v.unsqueeze(1)).squeeze(1)

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Model-space density log P(v) + D·log(scale): (B, *shape) -> (B,)."""
        return self.step_log_mass(x, labels).sum(1) + self.data.dim * math.log(self.data.scale)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None, cached: bool = True) -> torch.Tensor:
        """T steps, one draw per step: bin centres (n, *shape). Cached: one column per layer per
        step (Paine et al.); uncached: a pass over the last receptive_field symbols per step."""
        net, length = self.net, self.data.dim
        s = torch.zeros(n, length, dtype=torch.long, device=self.offsets.device)  # symbols so far
        fast = net.fast_generator(n, labels) if cached else None
        for t in range(length):
            if fast is not None:
                logits = fast.step(s[:, t - 1] if t else None)  # (n, L)
            else:
                window = s[:, max(0, t - net.receptive_field):t + 1]  # s_t itself is not read
                logits = net(window, labels)[:, :, -1]
            s[:, t] = categorical(F.softmax(fp32(logits), -1), generator) + self.offsets[t]
        return bin_centres(self.unsequence(s - self.offsets), self.data)


@register_family("wavenet")
class WaveNetModel(DiscreteAutoregressiveModel):
    """WaveNet (2016): dilated causal gated residual stacks, a softmax per sample, fast cached sampling."""

    config_cls = WaveNetConfig

    def image_body(self) -> nn.Module:
        c, data = self.config, self.data
        channels = data.shape[0] if len(data.shape) > 1 else 1
        net = WaveNet(channels * data.levels, data.levels, c.residual_channels, c.dilation_channels,
                      c.skip_channels, c.layers_per_stack, c.stacks, c.kernel, n_classes=self.n_classes)
        return LevelSequence(net, data)

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None, cached: bool | None = None) -> torch.Tensor:
        """n draws (n, *shape), one step per position; `cached` (default: `fast_generation`) picks the
        queue generator or the naive passes over the receptive field."""
        labels = self._check_condition(condition, n)
        with self._eval_mode():
            if not isinstance(self.body, LevelSequence):
                return self.body.sample(n, self.data.shape, generator, labels)
            cached = self.config.fast_generation if cached is None else cached
            return self.body.sample(n, self.data.shape, generator, labels, cached=cached)
