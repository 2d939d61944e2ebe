"""PixelCNN++ (Salimans, Karpathy, Chen & Kingma 2017, "PixelCNN++: Improving the PixelCNN with
Discretized Logistic Mixture Likelihood and Other Modifications").

The five modifications, §2.1-2.5:
1. A discretized mixture of K logistics per pixel instead of a softmax (§2.1, Eq. 2):
   `gm.nn.observation.discretized_logistic_mixture_log_prob`, with the edge levels taking the tails.
2. Conditioning on whole pixels (§2.2, Eq. 3): the net's outputs at (r, c) depend on the whole
   pixels before (r, c) and on no channel of (r, c). One mixture indicator is shared by the C
   channels of a pixel, and the mean of channel c moves linearly with the earlier channels of
   the same pixel, μ_c + Σ_{c'<c} tanh(α_cc') x_c' (for RGB: μ_g + α r, μ_b + β r + γ g):
       p(x_ij) = Σ_k π_k Π_c Logistic_disc(x_c | μ_ck + Σ_{c'<c} α_cc'k x_c', s_ck).
   With one channel (our digits) this is the plain mixture of Eq. 2.
3. Downsampling (stride-2 shifted convs) instead of dilation (§2.3): `resolutions` levels,
   8×8 -> 4×4 -> 8×8 for digits with the default 2.
4. Short-cut connections from each down-pass block to its mirror in the up pass (§2.4).
5. Dropout on the residual path of every gated resnet block (§2.5).
The backbone is `gm.nn.gated_pixelcnn.PixelCNNPP` (shifted convolutions, so no blind spot).
Not reproduced: weight normalisation and its data-dependent initialisation, Polyak averaging.

Likelihood convention and the vector fallback (a MADE with Gaussian mixtures; `components` is
then its Gaussians per coordinate) are those of `gm.models.pixelcnn`: log p(x) = log P(v) +
D·log(scale) in model space. The net reads only the bin centres of x's levels.

Sampling costs H·W forward passes: one per pixel, all of its channels drawn from that pass
(the component, then the channels in turn, each mean shifted by the channels already drawn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gm.core.config import bounded
from gm.data.dataspec import DataSpec
from gm.models.pixelcnn import AutoregressiveModel
from gm.nn.gated_pixelcnn import PixelCNNPP
from gm.core.numerics import categorical
from gm.nn.precision import fp32
from gm.nn.observation import (bin_centres, discretized_logistic_mixture_log_prob, levels_of,
                               sample_discretized_logistic_mixture)
from gm.core.registry import register_family

__all__ = ["PixelCNNPPConfig", "PixelCNNPPModel", "LogisticMixturePixels"]


@dataclass(frozen=True)
class PixelCNNPPConfig:
    hidden: int = bounded(32, gt=0)  # filters per stream (the paper's code: 160 on CIFAR-10); 18 blocks at the defaults
    depth: int = bounded(2, gt=0)  # gated resnet blocks per resolution (paper: 5); vectors: MADE hidden layers
    resolutions: int = bounded(2, gt=0)  # §2.3: 8×8 -> 4×4 -> 8×8 (paper: 3, 32 -> 16 -> 8)
    components: int = bounded(5, gt=0)  # K logistics per pixel (paper: 10; 17 levels need fewer)
    dropout: float = bounded(0.5, ge=0, lt=1)  # §2.5, on each block's residual path (paper's code: 0.5)
    conditional: bool = False  # p(x | y): a label bias in every block (2016b, Eq. 4)
    lr: float = bounded(1e-3, gt=0)  # Adam (the paper's code: 1e-3, decayed)
    weight_decay: float = bounded(0.0, ge=0)
    ema: float = bounded(0.0, ge=0, lt=1)  # Polyak averaging of the weights for evaluation (PixelCNN++ §3; 0: off)


def params_per_pixel(channels: int, components: int) -> int:
    """K mixture logits, C·K means, C·K log-scales and C(C-1)/2·K coefficients (§2.2)."""
    return components * (1 + 2 * channels + channels * (channels - 1) // 2)


class LogisticMixturePixels(nn.Module):
    """The PixelCNN++ likelihood on images (C, H, W): a backbone's per-pixel parameters, split
    into a discretized logistic mixture whose channel means depend linearly on earlier channels."""

    def __init__(self, net: nn.Module, data: DataSpec, components: int, min_log_scale: float = -7.0):
        super().__init__()
        self.net, self.data, self.components, self.min_log_scale = net, data, components, min_log_scale
        self.channels = data.shape[0]

    def mixture(self, xc: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Bin centres xc (B, C, H, W) -> logit π (B, H, W, K), μ and log s (B, C, H, W, K) before the
        channel coupling, tanh(α) (B, C(C-1)/2, H, W, K); those at (r, c) depend on pixels before it."""
        c, k = self.channels, self.components
        p = self.net(xc, labels).permute(0, 2, 3, 1)  # (B, H, W, P)
        logit_pi, mean, log_scale, coeff = p.split([k, c * k, c * k, c * (c - 1) // 2 * k], dim=-1)

        def per_channel(t: torch.Tensor) -> torch.Tensor:  # (B, H, W, n·K) -> (B, n, H, W, K)
            return t.unflatten(-1, (-1, k)).permute(0, 3, 1, 2, 4)

        return (logit_pi, per_channel(mean), per_channel(log_scale).clamp(min=self.min_log_scale),
                torch.tanh(per_channel(coeff)))

    @staticmethod
    def channel_mean(mean: torch.Tensor, coeff: torch.Tensor, xc: torch.Tensor, ch: int) -> torch.Tensor:
        """μ_ch + Σ_{c'<ch} α_{ch,c'} x_c' (§2.2, Eq. 3). mean (B, C, *S, K), coeff (B, C(C-1)/2, *S, K),
        xc (B, C, *S) -> (B, *S, K); α_{ch,c'} is coefficient ch(ch-1)/2 + c'."""
        m = mean[:, ch]
        for prev in range(ch):
            m = m + coeff[:, ch * (ch - 1) // 2 + prev] * xc[:, prev].unsqueeze(-1)
        return m

    def pixel_log_mass(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log P(v_ij | v_<ij) of every pixel, x (B, C, H, W) model space -> (B, H, W)."""
        v = levels_of(x, self.data)  # (B, C, H, W)
        xc = bin_centres(v, self.data)
        logit_pi, mean, log_scale, coeff = self.mixture(xc, labels)
        per_component = []
        for ch in range(self.channels):
            m = self.channel_mean(mean, coeff, xc, ch)  # (B, H, W, K)
            # One logistic per call (a 1-component "mixture"), so the components stay apart: (B, H, W, K).
            vk = v[:, ch].unsqueeze(-1).expand_as(m)
            per_component.append(discretized_logistic_mixture_log_prob(
                vk, torch.zeros_like(m).unsqueeze(-1), m.unsqueeze(-1), log_scale[:, ch].unsqueeze(-1), self.data))
        joint = torch.stack(per_component).sum(0)  # (B, H, W, K): Σ_c log p(x_c | k, x_<c)
        return torch.logsumexp(F.log_softmax(fp32(logit_pi), -1) + joint, dim=-1)  # fp32 under autocast

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Model-space density log P(v) + D·log(scale): (B, C, H, W) -> (B,)."""
        return self.pixel_log_mass(x, labels).sum((1, 2)) + self.data.dim * math.log(self.data.scale)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel by pixel in raster order, H·W forward passes: bin centres (n, C, H, W).

        A pass for row r reads only rows 0..r of the canvas (the parameters of row r do not
        depend on the rows below, so cropping them is exact and roughly halves the cost).
        """
        _, height, width = shape
        xc = torch.zeros(n, *shape, device=self.net.out.weight.device)  # (n, C, H, W)
        for r in range(height):
            for c in range(width):
                logit_pi, mean, log_scale, coeff = (t[:, ..., r, c, :] for t in self.mixture(xc[:, :, :r + 1], labels))
                k = categorical(F.softmax(logit_pi, -1), generator).unsqueeze(-1)  # (n, 1) shared by the channels
                pixel = xc[:, :, r, c]  # (n, C), filled channel by channel
                for ch in range(self.channels):
                    m = self.channel_mean(mean, coeff, pixel, ch).gather(-1, k)  # (n, 1)
                    s = log_scale[:, ch].gather(-1, k)
                    v = sample_discretized_logistic_mixture(torch.zeros_like(m), m, s, self.data, generator)  # (n,)
                    pixel[:, ch] = bin_centres(v, self.data)
                xc[:, :, r, c] = pixel
        return xc


@register_family("pixelcnnpp")
class PixelCNNPPModel(AutoregressiveModel):
    """PixelCNN++: discretized logistic mixtures, whole-pixel conditioning, down/up-sampling with
    short-cuts, gated resnet blocks with dropout; optional class labels."""

    config_cls = PixelCNNPPConfig

    def image_body(self) -> nn.Module:
        c, channels = self.config, self.data.shape[0]
        net = PixelCNNPP(channels, params_per_pixel(channels, c.components), c.hidden, c.depth, c.resolutions,
                         c.dropout, n_classes=self.n_classes)
        return LogisticMixturePixels(net, self.data, c.components)
