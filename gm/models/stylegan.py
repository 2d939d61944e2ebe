"""StyleGAN (Karras et al. 2019, "A Style-Based Generator Architecture for Generative Adversarial Networks").

The generator is a mapping network z -> w (PixelNorm, `mapping_layers` equalised-lr dense layers at lr ×0.01)
and a synthesis network from a learned constant whose every style layer is modulated by AdaIN from its own
w, with per-pixel noise inputs (gm/nn/stylegan.py). Training follows the paper (§2-3, Appendix C):

- the non-saturating logistic loss with the R1 penalty on real data (Mescheder et al. 2018),

      critic:     E softplus(D(G(z))) + E softplus(-D(x)) + γ/2 · E ‖∇_x D(x)‖²,
      generator:  E softplus(-D(G(z))),

  γ = `r1_gamma` (10 on FFHQ), the penalty at every critic step (StyleGAN2's lazy regularisation is not used);
- style mixing (§3.1): with probability `mixing_prob` (0.9) per batch, a second latent z2 -> w2 and a
  crossover layer k uniform in 1..num_ws-1: layers before k take w1, the others w2 (one decision and one k
  per batch, as the paper's code; drawn on the device, so no host read);
- w̄, an exponential moving average of w (β = `w_avg_beta`, 0.995): the batch mean of the generator step's
  w1 (before mixing, as the paper's code) is taken in `generate` and folded into the `w_avg` buffer by
  `after_step("gen")` only; sampling never changes it;
- the truncation trick at sampling (§2, Appendix B): `sample(n, generator, condition, truncation=ψ)` maps
  every style layer's w to w̄ + ψ (w - w̄); ψ = 1 (default) is no truncation, ψ = 0 gives w̄'s image;
- Adam with lr 1e-3 and β = (0, 0.99) for both players, one critic step per generator step.

The R1 penalty and the critic's minibatch standard deviation: through the std layer D(x_i) depends on the
other samples of its group, so ∇_x Σ_j D(x_j) at x_i has cross terms ∂D(x_j)/∂x_i. As the paper's code
(loss.py, D_logistic_r1: the gradient of the sum of the real scores w.r.t. the reals, mbstd on) the penalty
is computed on that batch gradient and documented as such; `mbstd_group: 0` removes the layer and makes R1
exactly per sample. Minibatch discrimination with R1 is refused (as the base refuses it with a gradient
penalty): its coupling is the whole batch, not one statistic per group.

Conditional (`conditional: true`, not in the paper): the label is embedded and concatenated to z before the
mapping network's PixelNorm (the paper's code), and reaches the critic as extra input channels (the base).
w̄ is one average over all classes.

On vectors (toy data) there are no pixels for AdaIN or noise: `arch` becomes `mlp`, the same mapping network
drives `StyleMLP` (a learned constant, `depth` dense layers each scaled and shifted by its own w: style
modulation without instance normalisation, no noise), against the base's MLP critic; mixing, w̄ and
truncation work as on images. The search space and the registry's `truncation` request live elsewhere
(tune/spaces.py, gm/serving.py, gm/inference.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gm.core.config import ConfigError, bounded
from gm.core.numerics import rand, randn
from gm.core.registry import register_family
from gm.data.dataspec import DataSpec
from gm.models._adversarial import AdversarialConfig, AdversarialModel, Critic
from gm.models.gan import discriminator_loss
from gm.nn.mlp import bounded_output, clamp_to_model_space, mlp
from gm.nn.precision import fp32, full_precision
from gm.nn.scaled import truncate_w
from gm.nn.stylegan import (
    MappingNetwork,
    StyleGANCritic,
    StyleGenerator,
    StyleMLP,
    StyleSynthesis,
    mix_styles,
    stylegan_resolutions,
)


@dataclass(frozen=True)
class StyleGANConfig(AdversarialConfig):
    # stylegan: mapping + style synthesis against ProGAN's critic (square images 4·2^k wide); mlp: vectors
    arch: Literal["mlp", "stylegan"] = "stylegan"
    ema: float = bounded(0.999, ge=0, lt=1)  # as ProGAN (the official code's G_smoothing): samples from averaged G
    z_dim: int = bounded(32, gt=0)  # the paper's 512
    w_dim: int = bounded(32, gt=0)  # the paper's 512
    mapping_layers: int = bounded(2, gt=0)  # the paper's 8; 2 for CPU
    mapping_lr_mul: float = bounded(0.01, gt=0)  # the mapping network's learning-rate multiplier (Appendix C)
    hidden: int = bounded(32, gt=0)  # channels of every resolution of both nets (MLP width on vectors)
    mixing_prob: float = bounded(0.9, ge=0, le=1)  # style mixing regularisation (§3.1)
    w_avg_beta: float = bounded(0.995, ge=0, lt=1)  # the EMA of w that truncation pulls towards
    r1_gamma: float = bounded(10.0, ge=0)  # γ of the R1 penalty γ/2 E‖∇D(x_real)‖² (FFHQ: 10)
    mbstd_group: int = bounded(4, ge=0)  # the critic's minibatch-stddev group (0 = no std layer)
    lr_gen: float = bounded(1e-3, gt=0)  # Appendix C: Adam, lr 0.001 (the paper's final resolution)
    lr_critic: float = bounded(1e-3, gt=0)
    betas: tuple[float, float] = bounded((0.0, 0.99), ge=0, lt=1)  # Appendix C: β1 = 0, β2 = 0.99
    n_critic: int = bounded(1, gt=0)
    critic: Literal["pooled", "radford"] = "pooled"  # unused by arch stylegan (ProGAN's critic); radford refused

    def validate(self) -> None:
        super().validate()
        if self.virtual_batch_norm:
            raise ConfigError("virtual_batch_norm: expected false, got true; the StyleGAN generator has no batch "
                              "norm to virtualise (AdaIN normalises per sample)")
        if self.critic != "pooled":
            raise ConfigError(f"critic: expected 'pooled', got {self.critic!r}; Radford's critic is arch dcgan's, "
                              f"StyleGAN uses ProGAN's")
        if self.minibatch_discrimination and self.r1_gamma > 0:
            raise ConfigError(
                f"minibatch_discrimination: expected 0 with the R1 penalty (r1_gamma = {self.r1_gamma}), got "
                f"{self.minibatch_discrimination}; the penalty through a minibatch-discrimination layer penalises "
                f"a gradient coupled across the batch (set minibatch_discrimination: 0 or r1_gamma: 0)")


def r1_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, pack: int = 1
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E ‖∇_x D(x)‖² on real data (Mescheder et al. 2018, R1; unweighted: the loss adds γ/2 of it).

    `critic` maps (B, ...) to (G, 1) outputs, G = B / pack. The gradient is that of Σ D over the batch (the
    paper's code), so with a batch-coupled critic (minibatch stddev) it includes the cross-sample terms.
    With packing the norm is per critic input (pack). An fp32 island under autocast, create_graph so that
    the penalty is trained. Returns (the mean squared norm, differentiable; the per-input squared norms (G,),
    detached; the critic's outputs on `real`, differentiable, for the loss's own real term)."""
    b = real.shape[0]
    x = fp32(real).detach().requires_grad_(True)
    with full_precision(x.device):
        out = fp32(critic(x))  # (G, 1)
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)  # (B, ...)
    sq = grad.reshape(b // pack, -1).pow(2).sum(1)  # (G,)
    return sq.mean(), sq.detach(), out


@register_family("stylegan")
class StyleGAN(AdversarialModel):
    """Mapping + style synthesis network against ProGAN's critic, non-saturating logistic loss with R1."""

    config_cls = StyleGANConfig
    vector_fallback = True

    def __init__(self, config: StyleGANConfig, data: DataSpec):
        super().__init__(config, data)
        self.register_buffer("w_avg", torch.zeros(config.w_dim))  # w̄, the paper's dlatent_avg (starts at 0)
        self._batch_w: torch.Tensor | None = None  # the generator step's mean w1, folded in by after_step

    def build_networks(self, c: StyleGANConfig, data: DataSpec) -> tuple[nn.Module, nn.Module]:
        bound = bounded_output(data)
        mapping = MappingNetwork(c.z_dim, c.w_dim, c.mapping_layers, self.num_labels, c.mapping_lr_mul)
        if c.arch == "mlp":
            synthesis = StyleMLP(data.dim, c.hidden, c.depth, c.w_dim, out_activation=bound)
            body = mlp((data.dim + self.critic_labels) * c.pack, c.hidden, c.hidden, c.depth - 1, c.activation,
                       out_activation=c.activation)
            critic = Critic(body, c.hidden, self._critic_out_dim(), c.minibatch_discrimination)
        elif c.arch == "stylegan":
            size = stylegan_resolutions(data)[-1]
            synthesis = StyleSynthesis(data, c.hidden, c.w_dim, out_activation=bound)
            body = StyleGANCritic((data.shape[0] + self.critic_labels) * c.pack, size, c.hidden, c.mbstd_group)
            critic = Critic(body, body.feature_dim, self._critic_out_dim(), c.minibatch_discrimination)
        else:
            raise ValueError(f"arch: expected 'stylegan' or 'mlp', got {c.arch!r}")
        return StyleGenerator(mapping, synthesis), critic

    # -- the generator ------------------------------------------------------------
    def styles(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None,
               mixing: bool | None = None) -> torch.Tensor:
        """ws (n, num_ws, w_dim) for n latents: w1 = f(z1) at every layer, or, when mixing (default: in
        training, with probability `mixing_prob`), w1 before a random crossover and w2 = f(z2) from it.
        Draws from `generator`, in order: z1, then (mixing) z2, the mixing decision and the crossover."""
        c = self.config
        device = self.w_avg.device
        onehot = self._one_hot(y, n, device)
        w = self.gen.mapping(randn((n, c.z_dim), generator, device), onehot)  # (n, W)
        if self.training and torch.is_grad_enabled():  # a generator step: its w feeds w̄ in after_step
            self._batch_w = w.detach().mean(0)
        num_ws = self.gen.num_ws
        ws = w[:, None].expand(n, num_ws, c.w_dim)
        if (self.training if mixing is None else mixing) and c.mixing_prob > 0 and num_ws > 1:
            w2 = self.gen.mapping(randn((n, c.z_dim), generator, device), onehot)
            mixed = rand((), generator, device) < c.mixing_prob
            k = 1 + (rand((), generator, device) * (num_ws - 1)).long().clamp(max=num_ws - 2)  # 1..num_ws-1
            ws = mix_styles(w, w2, torch.where(mixed, k, torch.full_like(k, num_ws)), num_ws)
        return ws

    def generate(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 truncation: float = 1.0, mixing: bool | None = None) -> torch.Tensor:
        """n samples with gradients, (n, *shape) in model space: styles (mixed in training), truncated towards
        w̄ when ψ ≠ 1, then the synthesis network with noise from `generator`."""
        ws = self.styles(n, y, generator, mixing)
        if truncation != 1.0:
            ws = truncate_w(ws, self.w_avg.to(ws.dtype), truncation)
        return self.gen.synthesis(ws, generator).view(n, *self.data.shape)

    def sample(self, n: int, generator: torch.Generator | None = None, condition: torch.Tensor | None = None,
               truncation: float = 1.0) -> torch.Tensor:
        """n samples (n, *shape) in model space, never mixed, deterministic given `generator`; `truncation` ψ
        pulls every w towards w̄: w̄ + ψ (w - w̄)."""
        truncation = float(truncation)
        if truncation != truncation or abs(truncation) == float("inf"):
            raise ValueError(f"truncation: expected a finite ψ, got {truncation}")
        return self.sample_with(n, generator, condition, truncation=truncation, mixing=False)

    @torch.no_grad()
    def synthesize(self, ws: torch.Tensor, noise_seed: int = 0) -> torch.Tensor:
        """Samples (B, *shape) in model space from explicit styles ws (B, num_ws, w_dim), one w per style layer,
        with the same noise inputs for every sample, drawn from `noise_seed` (the paper's figures fix the noise
        likewise): a sample is a function of its ws alone, so mixed or truncated styles compare exactly."""
        ws = ws.to(self.w_avg)
        # One sample at a time, each from a fresh stream: the noise drawn is (1, 1, H, W) per layer, the same for all.
        with self.ema_weights():  # the averaged G, as every sample of the model
            out = [self.gen.synthesis(w[None], torch.Generator().manual_seed(noise_seed)) for w in ws]
        return clamp_to_model_space(torch.cat(out).view(len(ws), *self.data.shape), self.data)

    def after_step(self, group: str) -> None:
        """The base's bookkeeping, then w̄ <- β w̄ + (1 - β) mean(w) of the generator step just taken."""
        super().after_step(group)
        if group == "gen" and self._batch_w is not None:
            with torch.no_grad():
                self.w_avg.copy_(torch.lerp(self._batch_w.to(self.w_avg), self.w_avg, self.config.w_avg_beta))
            self._batch_w = None

    # -- the objectives -----------------------------------------------------------
    def critic_objective(self, real, fake, y):
        gamma = self.config.r1_gamma
        d_fake = self.critic_forward(fake, y)[0]
        logs = {}
        if gamma > 0:
            r1, _, d_real = r1_penalty(lambda x: self.critic_forward(x, y)[0], real, self.config.pack)
            logs["r1"] = r1.detach()
        else:
            d_real = self.critic_forward(real, y)[0]
        loss = discriminator_loss(d_real, d_fake, self.real_target())
        if gamma > 0:
            loss = loss + 0.5 * gamma * r1
        return loss, {"d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach(), **logs}

    def generator_objective(self, fake, y, real):
        return F.softplus(-self.critic_forward(fake, y)[0]).mean(), {}
