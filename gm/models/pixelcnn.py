"""PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016a, "Pixel Recurrent Neural Networks",
§3.5), and the machinery the autoregressive families share (gated PixelCNN, PixelCNN++).

Exact likelihood by the chain rule in raster order, p(x) = Π_i p(x_i | x_<i) (2016a, Eq. 1).
The network is `gm.nn.pixelcnn.PixelCNN`: a 7×7 mask-A convolution, mask-B residual blocks
(Fig. 5), and two 1×1 ReLU layers to a softmax over the data's levels at every pixel (§2.2,
pixels as discrete variables).

Likelihood convention (as `gm.nn.observation`): every family returns the model-space density
of "P(v) spread uniformly over each level's bin", log p(x) = log P(v) + D·log(scale), v the
levels of x; the evaluation adds `DataSpec.log_det_to_model` and gets exactly log P(v). The
networks read only the levels (their bin centres, or their symbols), never the dequantization
noise, so log_prob is the same for every x in one bin.

Colour. PixelRNN orders the channels of one pixel R -> G -> B (Eq. 2), using channel-group
masks (Fig. 4). Here the symbol nets instead see an image (C, H, W) as an H × (W·C) grid of
symbols in which the C channels of a pixel sit side by side (`ChannelGrid`): raster order on
that grid is exactly Eq. 2's order, so the same masked (or shifted) convolutions give the
same factorisation without channel masks. A channel's symbol is offset by channel·levels, so
the net can tell the channels apart, and its softmax is taken over its own channel's `levels`
logits. For C = 1 the grid is the image and the model is the plain PixelCNN. The price: a
kernel k wide spans only k/C pixels across, where channel masks would span k.

Sampling costs one forward pass per sub-pixel: H·W·C passes (H·W for our single-channel
digits), each on the rows drawn so far. PixelCNN++ (`gm.models.pixelcnnpp`) needs H·W passes: it
samples all channels of a pixel from one pass.

Vectors. Autoregressive image nets need (C, H, W) discrete data. On continuous vectors (the 2-D
toys) every family instead models p(x) = Π_d p(x_d | x_<d) with a MADE (Germain et al. 2015,
§4) whose outputs are a mixture of `components` Gaussians per coordinate (the RNADE density of
Uria et al. 2013, here with a MADE; "MADE MoG" in Papamakarios et al. 2017, §4): a true
autoregressive density with the same contract, sampled in D passes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from gm.core.config import ConfigError, bounded
from gm.data.dataspec import DataSpec
from gm.flows import MADE
from gm.models.base import Batch, Capabilities, GenerativeModel, ModelOutput, StepGroup
from gm.nn.ema import averaged_pairs, register_average, swapped_in, update_average
from gm.nn.mlp import check_unconditional, label_count
from gm.core.numerics import categorical, normal_log_prob, randn
from gm.nn.precision import fp32
from gm.nn.observation import bin_centres, levels_of
from gm.nn.pixelcnn import PixelCNN
from gm.core.registry import register_family
from gm.core.numerics import bits_per_dim

__all__ = ["PixelCNNConfig", "PixelCNNModel", "AutoregressiveModel", "DiscreteAutoregressiveModel", "ChannelGrid",
           "MADEMixture", "is_discrete_image"]


@dataclass(frozen=True)
class PixelCNNConfig:
    hidden: int = bounded(64, gt=0)  # feature channels, the 2h of 2016a's Fig. 5 (blocks narrow to h inside)
    depth: int = bounded(4, ge=0)  # mask-B residual blocks (vectors: MADE hidden layers, at least 1)
    kernel: int = bounded(7, gt=0)  # odd; the mask-A first layer (2016a, §3.5: 7×7)
    block_kernel: int = bounded(3, gt=0)  # odd; the mask-B conv of each block (2016a, Fig. 5: 3×3)
    conditional: bool = False  # class-conditional p(x | y): a label bias in every layer (2016b, Eq. 4)
    components: int = bounded(5, gt=0)  # vectors only: Gaussians per coordinate of the MADE fallback
    lr: float = bounded(1e-3, gt=0)  # Adam
    weight_decay: float = bounded(0.0, ge=0)
    ema: float = bounded(0.0, ge=0, lt=1)  # Polyak averaging of the weights for evaluation (0: off)

    def validate(self):
        for name in ("kernel", "block_kernel"):
            if getattr(self, name) % 2 != 1:
                raise ConfigError(f"{name}: expected an odd kernel size, got {getattr(self, name)}")


def is_discrete_image(data: DataSpec) -> bool:
    """Data the image nets model: discrete levels on a (C, H, W) grid."""
    return bool(data.levels) and data.kind == "image" and len(data.shape) == 3


# --------------------------------------------------------------------------- vectors: MADE + Gaussian mixtures


class MADEMixture(nn.Module):
    """p(x) = Π_d Σ_k π_dk(x_<d) N(x_d; μ_dk(x_<d), σ_dk(x_<d)²) on vectors x (B, D), by a MADE
    (Germain et al. 2015, §4) with 3K outputs per coordinate. Labels enter as a one-hot context,
    which reaches every coordinate (including the first) without breaking the ordering."""

    def __init__(self, dim: int, hidden: int, depth: int, components: int, n_classes: int = 0,
                 min_log_std: float = -7.0):
        super().__init__()
        self.dim, self.components, self.n_classes, self.min_log_std = dim, components, n_classes, min_log_std
        self.made = MADE(dim, [hidden] * max(1, depth), 3 * components, context_dim=n_classes)

    def params(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """x (B, D) -> logit π, μ, log σ, each (B, D, K); coordinate d's depend on x_<d only."""
        context = F.one_hot(labels.long(), self.n_classes).to(x.dtype) if self.n_classes else None
        out = torch.stack(self.made(x, context), dim=-1)  # (B, D, 3K)
        logit_pi, mean, log_std = out.chunk(3, dim=-1)
        return logit_pi, mean, log_std.clamp(min=self.min_log_std)

    def coordinate_log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x_d | x_<d) for every coordinate: (B, D) -> (B, D)."""
        logit_pi, mean, log_std = (fp32(t) for t in self.params(x, labels))  # fp32 under autocast
        log_n = normal_log_prob(fp32(x).unsqueeze(-1), mean, log_std)  # (B, D, K)
        return torch.logsumexp(F.log_softmax(logit_pi, -1) + log_n, dim=-1)

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, *shape) -> (B,), a density in model space."""
        return self.coordinate_log_prob(x.flatten(1), labels).sum(-1)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """Coordinate by coordinate, D MADE passes: (n, *shape)."""
        device = self.made.output.weight.device
        x = torch.zeros(n, self.dim, device=device)
        for d in range(self.dim):
            logit_pi, mean, log_std = (p[:, d] for p in self.params(x, labels))  # (n, K) each
            k = categorical(F.softmax(logit_pi, -1), generator).unsqueeze(-1)  # (n, 1)
            m, s = mean.gather(-1, k).squeeze(-1), log_std.gather(-1, k).squeeze(-1).exp()
            x[:, d] = m + s * randn((n,), generator, device)
        return x.view(n, *shape)


# --------------------------------------------------------------------------- images: a grid of symbols


class ChannelGrid(nn.Module):
    """An image of levels (C, H, W) as an H × (W·C) grid of symbols for a symbol net
    (`gm.nn.pixelcnn.PixelCNN` or `gm.nn.gated_pixelcnn.GatedPixelCNN`, both with C·L symbols).

    Grid column w·C + ch holds channel ch of pixel (·, w) as symbol ch·L + v, so raster order on
    the grid is PixelRNN's order (2016a, Eq. 2): pixel by pixel, channels in turn within a pixel.
    """

    def __init__(self, net: nn.Module, data: DataSpec):
        super().__init__()
        self.net, self.data = net, data
        self.channels, self.height, self.width = data.shape
        self.register_buffer("offsets", torch.arange(self.channels) * data.levels, persistent=False)  # (C,)

    def symbols(self, v: torch.Tensor) -> torch.Tensor:
        """Levels (B, C, H, W) -> symbols (B, H, W·C)."""
        s = v + self.offsets[None, :, None, None]  # (B, C, H, W)
        return s.permute(0, 2, 3, 1).flatten(2)  # (B, H, W·C), channels of a pixel side by side

    def level_logits(self, s: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Symbols (B, H, W·C) (or their one-hot (B, C·L, H, W·C)) -> logits of each sub-pixel's
        level given everything before it, (B, C, H, W, L)."""
        b, c, l = s.shape[0], self.channels, self.data.levels
        h, w = s.shape[-2], s.shape[-1] // c  # the full image, or its top rows while sampling
        logits = self.net(s, labels).view(b, c, l, h, w, c)  # symbol group × grid channel
        # Channel ch's own L logits at channel ch's grid columns: the diagonal of the two channel axes.
        return torch.diagonal(logits, dim1=1, dim2=5).permute(0, 4, 2, 3, 1)  # (B, C, H, W, L)

    def pixel_log_mass(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log P(v_i | v_<i) of every pixel (all its channels), x (B, C, H, W) model space -> (B, H, W)."""
        v = levels_of(x, self.data)  # (B, C, H, W)
        logp = F.log_softmax(fp32(self.level_logits(self.symbols(v), labels)), dim=-1)  # (B, C, H, W, L); fp32
        return logp.gather(-1, v.unsqueeze(-1)).squeeze(-1).sum(1)

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Model-space density log P(v) + D·log(scale): (B, C, H, W) -> (B,)."""
        return self.pixel_log_mass(x, labels).sum((1, 2)) + self.data.dim * math.log(self.data.scale)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """Sub-pixel by sub-pixel in raster order, H·W·C forward passes: bin centres (n, C, H, W).

        A pass for row r reads only rows 0..r of the canvas: the logits of row r do not depend on
        the rows below (causality), so cropping them changes nothing and roughly halves the cost.
        """
        v = torch.zeros(n, *shape, dtype=torch.long, device=self.offsets.device)
        for r in range(self.height):
            for c in range(self.width):
                for ch in range(self.channels):
                    logits = self.level_logits(self.symbols(v[:, :, :r + 1]), labels)[:, ch, r, c]  # (n, L)
                    v[:, ch, r, c] = categorical(F.softmax(logits, -1), generator)
        return bin_centres(v, self.data)


# --------------------------------------------------------------------------- the shared model


class AutoregressiveModel(GenerativeModel):
    """The contract of the autoregressive families. A subclass builds its image body in
    `image_body()`; vectors get the `MADEMixture` fallback. A body has
    `log_prob(x, labels) -> (B,)` (model-space density) and `sample(n, shape, generator, labels)`.

    Class-conditional models (`conditional: true`) train on p(x | y). Given no condition,
    `log_prob` marginalises the label under a uniform prior, log (1/C) Σ_y p(x | y).
    `log_prob` and `sample` run with dropout off (the eval-mode net), so both are deterministic.
    """

    capabilities = Capabilities(likelihood="exact")
    group = "ar"

    @staticmethod
    def models_discrete(data: DataSpec) -> bool:
        """Discrete data this family's own body (`image_body`) models: (C, H, W) images for the image
        nets; a sequence model (WaveNet, NADE) takes any data with levels, audio (1, T) included."""
        return is_discrete_image(data)

    def __init__(self, config, data: DataSpec):
        super().__init__(config, data)
        self.n_classes = label_count(config.conditional, data)
        if self.models_discrete(data):
            self.body = self.image_body()
        elif not data.levels:
            self.body = MADEMixture(data.dim, config.hidden, config.depth, config.components, self.n_classes)
        else:
            raise ConfigError(f"{type(self).__name__} needs discrete images (C, H, W) or continuous vectors, "
                              f"got {data.kind} data of shape {tuple(data.shape)} with {data.levels} levels")
        # Polyak averaging (PixelCNN++ §3: "we use Polyak averaging ... for evaluation"): with `ema` > 0
        # the body's weights are averaged over training steps and log_prob and sample use the average.
        self._ema_names: list[str] = []
        if config.ema > 0:
            self._ema_names = register_average(self, "ema", dict(self.body.named_parameters()))

    @classmethod
    def capabilities_for(cls, config) -> Capabilities:
        return replace(cls.capabilities, conditional=config.conditional)

    def image_body(self) -> nn.Module:
        raise NotImplementedError

    def step_groups(self) -> list[StepGroup]:
        c = self.config
        return [StepGroup(self.group, list(self.parameters()), lr=c.lr, weight_decay=c.weight_decay)]

    def _check_condition(self, condition: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.n_classes:
            check_unconditional(self, condition)
            return None
        if condition is None or condition.shape != (n,):
            raise ValueError(f"{type(self).__name__} is conditional: pass condition= int64 labels of shape ({n},), "
                             f"got {None if condition is None else tuple(condition.shape)}")
        return condition.long().to(self.device)

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        if group != self.group:
            raise KeyError(f"{type(self).__name__} has the single step group {self.group!r}, got {group!r}")
        if self.n_classes and batch.y is None:
            raise ValueError(f"{type(self).__name__} is conditional: the batch has no labels")
        labels = self._check_condition(batch.y, batch.x.shape[0]) if self.n_classes else None
        nll = -self.body.log_prob(batch.x, labels).mean()
        # Data space: log p_data = log p_model + log_det_to_model, i.e. log P(v) for discrete data.
        bits = bits_per_dim(nll.detach() - self.data.log_det_to_model, self.data.dim)
        return ModelOutput(nll, {"nll": nll.detach(), "bits_per_dim": bits})

    def after_step(self, group: str) -> None:
        if self._ema_names:
            update_average(self, "ema", self._ema_pairs(), self.config.ema)

    def _ema_pairs(self):
        return averaged_pairs(self, "ema", self._ema_names, dict(self.body.named_parameters()))

    @contextlib.contextmanager
    def _eval_mode(self):
        """Eval mode (no dropout) with the averaged weights, when the family keeps an average."""
        was_training = self.training
        self.eval()
        try:
            with swapped_in(self._ema_pairs() if self._ema_names else []):
                yield
        finally:
            self.train(was_training)

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) (or log p(x | y)) per row in model space, nats: (B, *shape) -> (B,)."""
        with self._eval_mode():
            if not self.n_classes or condition is not None:
                return self.body.log_prob(x, self._check_condition(condition, x.shape[0]))
            b = x.shape[0]
            per_class = torch.stack([self.body.log_prob(x, torch.full((b,), y, dtype=torch.long, device=x.device))
                                     for y in range(self.n_classes)])  # (classes, B)
            return torch.logsumexp(per_class, 0) - math.log(self.n_classes)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """n draws in model space (n, *shape), position by position in raster order: one forward
        pass per position (H·W for PixelCNN++, H·W·C for the symbol nets, D for vectors)."""
        labels = self._check_condition(condition, n)
        with self._eval_mode():
            return self.body.sample(n, self.data.shape, generator, labels)


class DiscreteAutoregressiveModel(AutoregressiveModel):
    """An autoregressive family whose body (`image_body`) models discrete data of any shape (images,
    (1, T) audio, discrete vectors) as one sequence of positions: WaveNet, NADE, MADE. Continuous
    vectors still get the MADE-MoG fallback."""

    @staticmethod
    def models_discrete(data: DataSpec) -> bool:
        return bool(data.levels)


@register_family("pixelcnn")
class PixelCNNModel(AutoregressiveModel):
    """PixelCNN (2016a): mask-A 7×7 conv, mask-B residual blocks, a softmax over the levels."""

    config_cls = PixelCNNConfig

    def image_body(self) -> nn.Module:
        c, levels = self.config, self.data.levels
        net = PixelCNN(self.data.shape[0] * levels, c.hidden, c.depth, c.kernel, n_classes=self.n_classes,
                       block_kernel_size=c.block_kernel)
        return ChannelGrid(net, self.data)
