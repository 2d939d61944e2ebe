"""The shared adversarial base: a generator against a critic, by backbone, with the stabilisers.

A family (gan.py, wgan.py, wgan_gp.py, cramer.py, fgan.py) subclasses `AdversarialModel`
with its config (a subclass of `AdversarialConfig` overriding the defaults its paper
uses) and implements two hooks: `critic_objective` and `generator_objective`. The base
builds the networks, runs the two-player step schedule and adds the stabilisers, which
any family can switch on:

- feature matching (Salimans et al. 2016, §3.1),
- one-sided label smoothing (ibid. §3.4; only families with a real target use it),
- minibatch discrimination (ibid. §3.2),
- historical averaging (ibid. §3.3),
- instance noise (Sønderby et al. 2017; Arjovsky & Bottou 2017),
- packing (PacGAN, Lin et al. 2018): the critic judges `pack` samples at once,
- virtual batch norm in the generator (Salimans et al. 2016, §3.4; gm/nn/vbn.py),
- unrolled critic updates in the generator's loss (Metz et al. 2017, `unroll_steps`).

`critic` picks the DCGAN critic (`arch: dcgan`): Radford et al.'s (batch norm, N(0, 0.02)
initialisation of both nets) or the pooled one without batch norm (the only one a gradient
penalty allows).

`conditional` makes a cGAN (Mirza & Osindero 2014): the one-hot label is fed to both the
generator (beside z) and the critic (beside x), and fakes take the labels of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Literal

import torch
from torch import nn
from torch.func import functional_call

from gm.core.config import ConfigError, bounded
from gm.data.dataspec import DataSpec
from gm.models.base import Batch, Capabilities, GenerativeModel, ModelOutput, StepGroup
from gm.nn.ema import averaged_pairs, register_average, swapped_in, update_average
from gm.nn.dcgan import DCGANCritic, DCGANGenerator, RadfordCritic, check_dcgan_data, radford_init
from gm.nn.mlp import (
    Activation,
    bounded_output,
    check_unconditional,
    clamp_to_model_space,
    label_count,
    mlp,
    one_hot_labels,
)
from gm.core.numerics import rand, randn
from gm.nn.precision import fp32, full_precision
from gm.nn.sagan import SAGANCritic, SAGANGenerator, sagan_blocks
from gm.nn.scaled import apply_spectral_norm, power_iterations_paused, running_stats_paused
from gm.nn.vbn import ReferenceBatch, VirtualBatchNorm, reference_input, vbn_mlp

# Salimans et al.'s code (improved-gan): 5 dimensions per minibatch-discrimination kernel.
MBD_KERNEL_DIM = 5


@dataclass(frozen=True)
class AdversarialConfig:
    # MLPs for toys/vectors; DCGAN (Radford 2016) for images; SAGAN's nets (Zhang 2019: self-attention at
    # `attention` pixels, spectral norm on every weight of both nets) for images 4·2^k pixels wide
    arch: Literal["mlp", "dcgan", "sagan"] = "mlp"
    z_dim: int = bounded(8, gt=0)  # latent dimension; 2 is enough for 2-D toys
    hidden: int = bounded(256, gt=0)  # MLP width, or DCGAN base channel count
    depth: int = bounded(3, gt=0)  # MLP hidden layers per net (DCGAN: derived from the image size)
    activation: Activation = "leaky_relu"  # critic (MLP); DCGAN (Radford 2016): LeakyReLU(0.2) in D, ReLU in G
    conditional: bool = False  # cGAN (Mirza & Osindero 2014): labels into generator and critic
    lr_gen: float = bounded(2e-4, gt=0)  # DCGAN, Adam lr 2e-4
    lr_critic: float = bounded(2e-4, gt=0)
    betas: tuple[float, float] = bounded((0.5, 0.999), ge=0, lt=1)  # DCGAN, β1 = 0.5
    optimizer: Literal["adam", "rmsprop"] = "adam"
    n_critic: int = bounded(1, gt=0)  # critic steps per generator step
    # stabilising techniques, selectable on every adversarial family (Salimans et al. 2016; Sønderby et al. 2017)
    feature_matching: bool = False  # generator matches E f(x) of the critic's penultimate features
    label_smoothing: float = bounded(0.0, ge=0, lt=0.5)  # one-sided: real target 1 - s (families with a target)
    minibatch_discrimination: int = bounded(0, ge=0)  # number of minibatch-discrimination kernels (0 = off)
    historical_averaging: float = bounded(0.0, ge=0)  # weight of ||θ - mean of past θ||² in both losses
    instance_noise: float = bounded(0.0, ge=0)  # std of Gaussian noise added to every critic input
    instance_noise_steps: int = bounded(0, ge=0)  # std -> 0 linearly over this many critic steps (0 = constant)
    pack: int = bounded(1, gt=0)  # PacGAN (Lin et al. 2018): the critic sees `pack` samples concatenated (1 = off)
    # arch dcgan: "radford" = Radford et al. 2016's D (BN after every conv but the first, flattened, N(0, 0.02)
    # init of both nets); "pooled" = no batch norm, global mean pool (per sample: valid under a gradient penalty)
    critic: Literal["pooled", "radford"] = "radford"  # a gradient-penalty family's default is "pooled"
    # Metz et al. 2017: the generator's loss through k differentiable critic gradient steps (0 = off)
    unroll_steps: int = bounded(0, ge=0)
    virtual_batch_norm: bool = False  # Salimans et al. 2016, §3.4: generator normalised by a fixed reference batch
    vbn_reference: int = bounded(64, gt=0)  # the reference batch's size
    attention: int = bounded(8, gt=0)  # arch sagan: the width (pixels) of the maps the self-attention block sees
    # samples from an exponential moving average of G's weights (Karras et al. 2018 §A.1, Brock et al. 2019: 0.999;
    # Yazıcı et al. 2019); the decay warms up as min(ema, (1 + t)/(10 + t)) over generator steps t (0 = off)
    ema: float = bounded(0.0, ge=0, lt=1)

    def validate(self) -> None:
        """Stabiliser combinations that are wrong whatever the data (a subclass adding checks calls this too).

        A gradient penalty (WGAN-GP, Cramér GAN: `gp_weight` > 0) constrains ‖∇_x D(x)‖ of a
        per-sample critic; through minibatch discrimination D(x_i) depends on the whole batch,
        so the penalised gradient is coupled across samples and no longer the one the penalty
        is about (Gulrajani et al. 2017, §4: no critic batch normalisation, for the same reason).
        """
        gp_weight = getattr(self, "gp_weight", 0.0)
        if self.arch == "dcgan" and self.critic == "radford" and gp_weight > 0:
            raise ConfigError(
                f"critic: expected 'pooled' with a gradient penalty (gp_weight = {gp_weight}), got 'radford'; "
                f"batch norm in the critic makes D(x_i) depend on the whole batch, so the penalty penalises a "
                f"gradient coupled across the batch, not the per-sample one (set critic: pooled or gp_weight: 0)")
        if self.minibatch_discrimination and gp_weight > 0:
            raise ConfigError(
                f"minibatch_discrimination: expected 0 with a gradient penalty (gp_weight = {gp_weight}), got "
                f"{self.minibatch_discrimination}; the penalty through a minibatch-discrimination layer penalises "
                f"a gradient coupled across the batch (set minibatch_discrimination: 0 or gp_weight: 0)")


# --------------------------------------------------------------------------- pure functions


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor | None = None, pack: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sided penalty E (‖∇D(x̂)‖₂ - 1)² on x̂ = ε·real + (1 - ε)·fake (WGAN-GP, Eq. 3).

    real, fake: (B, ...) tensors of the shape the critic takes; `critic` maps them to one
    value per critic input. With `pack` > 1 the critic reads consecutive groups of `pack`
    samples as one input (PacGAN), so ε and the gradient norm are per group of G = B / pack;
    `eps`: (G,) weights, drawn from U[0, 1] when None. Returns (the mean penalty,
    differentiable w.r.t. the critic's parameters; the per-input gradient norms, shape (G,),
    detached).
    """
    b = real.shape[0]
    g = b // pack
    if eps is None:
        eps = rand((g,), device=real.device)
    eps = eps.to(real).repeat_interleave(pack).view(b, *([1] * (real.dim() - 1)))  # broadcast over features
    # An fp32 island under autocast: the interpolates, the critic on them (autocast off, so its
    # gradient and that gradient's own backward are fp32 too), the gradient and its norm.
    x_hat = (eps * fp32(real) + (1 - eps) * fp32(fake)).detach().requires_grad_(True)  # (B, ...)
    with full_precision(x_hat.device):
        out = fp32(critic(x_hat))  # (B, 1)
        # create_graph: the penalty is itself minimised, so its gradient must be differentiable.
        (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)  # (B, ...)
    # The tiny constant keeps the sqrt differentiable where a gradient is exactly zero.
    norms = torch.sqrt(grad.reshape(g, -1).pow(2).sum(1) + 1e-12)  # (G,)
    return ((norms - 1) ** 2).mean(), norms.detach()


def minibatch_features(m: torch.Tensor) -> torch.Tensor:
    """o(x_i)_b = Σ_j exp(-‖M_{i,b} - M_{j,b}‖_L1) from M = f(x)·T, shape (N, B, C) -> (N, B).

    Salimans et al. 2016, §3.2; the sum runs over the whole minibatch, j = i included (the
    paper's formula), so every o_b ≥ 1 and a collapsed batch gives o_b = N.
    """
    l1 = (m[:, None] - m[None, :]).abs().sum(-1)  # (N, N, B)
    return torch.exp(-l1).sum(1)  # (N, B)


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """‖E f(x) - E f(G(z))‖₂² over the critic's features, (B, F) each (Salimans et al. 2016, §3.1)."""
    return (real_features.mean(0) - fake_features.mean(0)).pow(2).sum()


# --------------------------------------------------------------------------- modules


class MinibatchDiscrimination(nn.Module):
    """Appends o(x) ∈ R^B to features f(x) ∈ R^A via a tensor T ∈ R^{A×B×C} (Salimans et al. 2016, §3.2)."""

    def __init__(self, in_features: int, kernels: int, kernel_dim: int = MBD_KERNEL_DIM):
        super().__init__()
        self.kernels, self.kernel_dim = kernels, kernel_dim
        self.T = nn.Parameter(0.1 * torch.randn(in_features, kernels, kernel_dim))  # improved-gan init scale

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        m = torch.einsum("na,abc->nbc", f, self.T)  # (N, B, C)
        return torch.cat([f, minibatch_features(m)], dim=1)  # (N, A + B)


class Critic(nn.Module):
    """body: input -> features (B, A); optional minibatch discrimination; head: linear -> (B, out)."""

    def __init__(self, body: nn.Module, feature_dim: int, out_dim: int, mbd_kernels: int = 0):
        super().__init__()
        self.body = body
        self.mbd = MinibatchDiscrimination(feature_dim, mbd_kernels) if mbd_kernels else None
        self.head = nn.Linear(feature_dim + mbd_kernels, out_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (B, A)
        if self.mbd is not None:
            h = self.mbd(h)  # (B, A + kernels)
        return self.head(h), h


class _Run(nn.Module):
    """Holds the critic as a submodule so torch.func.functional_call can swap its parameters while
    a closure (a family's objective, which reads self.critic) runs."""

    def __init__(self, critic: nn.Module):
        super().__init__()
        self.critic = critic

    def forward(self, fn: Callable[[], object]):
        return fn()


# --------------------------------------------------------------------------- the base


class AdversarialModel(GenerativeModel):
    """Generator G: (z ~ N(0, I), label) -> x against a critic D: (x, label) -> R^critic_out_dim.

    Step groups: "critic" (n_critic times), then "gen". Subclasses implement
    `critic_objective` and `generator_objective`; everything else lives here.
    """

    critic_out_dim: ClassVar[int] = 1  # Cramér GAN overrides (dimension of h(x))

    @classmethod
    def capabilities_for(cls, config: AdversarialConfig) -> Capabilities:
        return replace(cls.capabilities, conditional=config.conditional)

    @classmethod
    def check_train(cls, config: AdversarialConfig, train) -> None:
        """Packing needs whole packs in every batch."""
        if train.batch_size % config.pack:
            raise ConfigError(f"pack: expected a divisor of train.batch_size ({train.batch_size}), got {config.pack}")

    # image networks with no meaning on vectors (SAGAN's, ProGAN's, StyleGAN's and BigGAN's nets have no
    # positions to attend over, grow or modulate there): on toy data, a family with `vector_fallback` that
    # asks for one runs MLPs instead, with its own loss and settings
    IMAGE_ONLY_ARCHS: ClassVar[tuple[str, ...]] = ("sagan", "progan", "stylegan", "biggan")
    vector_fallback: ClassVar[bool] = False

    def __init__(self, config: AdversarialConfig, data: DataSpec):
        if self.vector_fallback and config.arch in self.IMAGE_ONLY_ARCHS and data.kind != "image":
            config = replace(config, arch="mlp")
        super().__init__(config, data)
        c = config
        # Labels into the generator (num_labels) and into the critic's input (critic_labels).
        self.num_labels, self.critic_labels = self._label_counts(c, data)
        self.gen, self.critic = self.build_networks(c, data)
        vbn = c.virtual_batch_norm
        if vbn:  # the generator reads the fixed reference input first (a buffer: saved with the model)
            self.gen = ReferenceBatch(self.gen, reference_input(c.vbn_reference, c.z_dim, self.num_labels))
        self.finish_networks(c)
        # The EMA of G's weights: a copy of each generator parameter by name (saved, resumed and exported)
        self._ema_names: list[str] = []
        if c.ema > 0:
            self._ema_names = register_average(self, "ema", dict(self.gen.named_parameters()))
        # Critic steps taken: anneals instance noise; a buffer so it survives checkpoints.
        self.register_buffer("critic_steps", torch.zeros((), dtype=torch.long))
        self._hist_names: dict[str, list[str]] = {}
        if c.historical_averaging > 0:
            self._init_historical_averages()

    def finish_networks(self, c: AdversarialConfig) -> None:
        """Changes to the built networks that their weights' names depend on (spectral norm's
        parametrisation), made before the EMA of G's weights is set up; none by default."""

    def build_networks(self, c: AdversarialConfig, data: DataSpec) -> tuple[nn.Module, nn.Module]:
        """(generator, critic) for config `c` on `data`, by `arch`: G maps (B, z_dim + num_labels) to samples in
        model space, the critic is a `Critic` on (channels + critic_labels) · pack inputs. A family with
        networks of its own (ProGAN's growing ones, StyleGAN's mapping and synthesis) overrides this."""
        out_dim = self._critic_out_dim()
        bound = bounded_output(data)
        gen_in = c.z_dim + self.num_labels
        vbn = c.virtual_batch_norm
        if c.arch == "mlp":
            if vbn:
                gen = vbn_mlp(gen_in, data.dim, c.hidden, c.depth, c.vbn_reference, "relu", out_activation=bound)
            else:
                gen = mlp(gen_in, data.dim, c.hidden, c.depth, "relu", out_activation=bound)
            # depth hidden layers, each followed by the activation; the head is the last linear layer.
            body = mlp((data.dim + self.critic_labels) * c.pack, c.hidden, c.hidden, c.depth - 1, c.activation,
                       out_activation=c.activation)
            critic = Critic(body, c.hidden, out_dim, c.minibatch_discrimination)
        elif c.arch == "dcgan":
            check_dcgan_data(data)
            norm = (lambda n: VirtualBatchNorm(n, c.vbn_reference)) if vbn else nn.BatchNorm2d
            gen = DCGANGenerator(gen_in, data.shape, c.hidden, out_activation=bound, norm=norm)
            channels, h, w = data.shape
            critic_cls = RadfordCritic if c.critic == "radford" else DCGANCritic
            body = critic_cls((channels + self.critic_labels) * c.pack, (h, w), c.hidden)
            critic = Critic(body, body.feature_dim, out_dim, c.minibatch_discrimination)
            if c.critic == "radford":
                radford_init(gen)
                radford_init(critic)
        elif c.arch == "sagan":
            channels, size, _ = data.shape if len(data.shape) == 3 else (0, 0, 0)
            sagan_blocks(data, c.attention)  # square images 4·2^k wide, attention at one of their resolutions
            norm = (lambda n: VirtualBatchNorm(n, c.vbn_reference)) if vbn else nn.BatchNorm2d
            gen = SAGANGenerator(gen_in, data.shape, c.hidden, c.attention, out_activation=bound, norm=norm)
            body = SAGANCritic((channels + self.critic_labels) * c.pack, size, c.hidden, c.attention)
            critic = apply_spectral_norm(Critic(body, body.feature_dim, out_dim, c.minibatch_discrimination))
        else:
            raise ValueError(f"arch: expected 'mlp', 'dcgan' or 'sagan', got {c.arch!r}")
        return gen, critic

    def _critic_out_dim(self) -> int:
        return self.critic_out_dim

    def _label_counts(self, config: AdversarialConfig, data: DataSpec) -> tuple[int, int]:
        """(labels into the generator, labels into the critic's input): both the cGAN's, or none."""
        n = label_count(config.conditional, data)
        return n, n

    # -- networks -----------------------------------------------------------------
    def _one_hot(self, y: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
        return one_hot_labels(self, y, n, self.num_labels, device)

    def generate(self, n: int, y: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples G(z, y) with gradients, (n, *shape) in model space (tanh-bounded for discrete data)."""
        device = self.critic_steps.device
        z = randn((n, self.config.z_dim), generator, device)  # (n, Z)
        onehot = self._one_hot(y, n, device)
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)  # (n, Z + K)
        return self.gen(z).view(n, *self.data.shape)

    def instance_noise_std(self) -> float:
        """The current instance-noise std: linear from `instance_noise` to 0 over `instance_noise_steps`."""
        c = self.config
        if c.instance_noise == 0 or c.instance_noise_steps == 0:
            return c.instance_noise
        return c.instance_noise * max(0.0, 1.0 - int(self.critic_steps) / c.instance_noise_steps)

    def critic_input(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, ...) as the critic reads it: whole packs checked, in the data's shape, with instance noise in
        training mode."""
        b, m = x.shape[0], self.config.pack
        if b % m:
            raise ValueError(f"pack = {m}: the critic needs a batch of whole packs, got {b} samples")
        x = x.reshape(b, *self.data.shape)
        std = self.instance_noise_std() if self.training else 0.0
        return x + std * torch.randn_like(x) if std > 0 else x

    def critic_forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(out (G, critic_out_dim), penultimate features (G, F)) for inputs x (B, *shape) or (B, D).

        G = B / pack: with packing, consecutive groups of `pack` samples (with their labels)
        are concatenated into one critic input, features (MLP) or channels (DCGAN). In
        training mode every input gets instance noise; the features include the
        minibatch-discrimination outputs when those are on.
        """
        x = self.critic_input(x)
        b, m = x.shape[0], self.config.pack
        onehot = one_hot_labels(self, y, b, self.critic_labels, x.device)
        if self.config.arch == "mlp":
            x = x.flatten(1)  # (B, D)
            if onehot is not None:
                x = torch.cat([x, onehot], dim=1)  # (B, D + K)
        elif onehot is not None:  # label maps as extra channels, (B, C + K, H, W)
            x = torch.cat([x, onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
        if m > 1:
            x = x.reshape(b // m, m * x.shape[1], *x.shape[2:])  # (G, m·(D + K)) or (G, m·(C + K), H, W)
        out, features = self.critic(x)
        return fp32(out), fp32(features)  # the losses on them in fp32 under autocast

    def real_target(self) -> float:
        """The target of real samples: 1 - s under one-sided label smoothing (Salimans et al. 2016, §3.4)."""
        return 1.0 - self.config.label_smoothing

    # -- family hooks -------------------------------------------------------------
    def critic_objective(self, real: torch.Tensor, fake: torch.Tensor,
                         y: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The critic's loss to minimise; `fake` is already detached. Returns (loss, logs)."""
        raise NotImplementedError

    def generator_objective(self, fake: torch.Tensor, y: torch.Tensor | None,
                            real: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The generator's loss to minimise on fakes with gradients. Returns (loss, logs)."""
        raise NotImplementedError

    # -- the contract -------------------------------------------------------------
    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters())

    def gen_parameters(self) -> list[nn.Parameter]:
        return list(self.gen.parameters())

    def step_groups(self) -> list[StepGroup]:
        c = self.config
        return [
            StepGroup("critic", self.critic_parameters(), lr=c.lr_critic, betas=c.betas, optimizer=c.optimizer,
                      repeats=c.n_critic),
            StepGroup("gen", self.gen_parameters(), lr=c.lr_gen, betas=c.betas, optimizer=c.optimizer),
        ]

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        real = batch.x  # (B, *shape)
        b = real.shape[0]
        y = batch.y if self.num_labels else None
        if self.num_labels and y is None:
            raise ValueError(f"{type(self).__name__} is conditional: the batch has no labels")
        if group == "critic":
            with torch.no_grad():  # the critic's step must not reach into G
                fake = self.generate(b, y)
            loss, logs = self.critic_objective(real, fake, y)
            logs = {"critic_loss": loss.detach(), **logs}
        elif group == "gen":
            fake = self.generate(b, y)
            if self.config.unroll_steps:
                loss, logs = self.unrolled_generator_loss(real, fake, y, self.config.unroll_steps)
            else:
                loss, logs = self.generator_loss(real, fake, y)
            logs = {"gen_loss": loss.detach(), **logs}
        else:
            raise KeyError(f"{type(self).__name__} has step groups 'critic' and 'gen', got {group!r}")
        if self.config.historical_averaging > 0:
            penalty = self.historical_penalty(group)
            loss = loss + self.config.historical_averaging * penalty
            logs[f"historical_penalty_{group}"] = penalty.detach()  # per group: the loop merges both logs
        return ModelOutput(loss, logs)

    def generator_loss(self, real: torch.Tensor, fake: torch.Tensor,
                       y: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The generator's loss against the critic as it is: feature matching, or the family's objective."""
        if self.config.feature_matching:
            with torch.no_grad():
                _, real_features = self.critic_forward(real, y)
            _, fake_features = self.critic_forward(fake, y)
            loss = feature_matching_loss(real_features, fake_features)
            return loss, {"feature_matching": loss.detach()}
        return self.generator_objective(fake, y, real)

    def unrolled_generator_loss(self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None,
                                k: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Unrolled GAN (Metz et al. 2017, Eq. 6-12): the generator's loss against θ_D^k, the critic after
        k gradient-descent steps θ^{i+1} = θ^i - η ∇_θ L_critic(θ^i) (η = lr_critic) from its current state.

        The steps are differentiable (create_graph): the generator's gradient includes the term
        through dθ_D^k/dθ_G, the paper's full estimator, not its cheaper variant that treats θ_D^k as a
        constant. Every unrolled step sees this batch's real samples and fakes (with gradients to G).
        The stored critic is untouched: the steps act on functional copies of its parameters, and its
        buffers (batch-norm statistics) are cloned. The unrolled steps are plain gradient descent (the
        paper's Eq. 2), not the critic optimizer's own (Adam, RMSProp) update, and they skip after-step
        hooks (WGAN's clip). A gradient penalty inside them is computed on detached interpolates, so
        its part of dθ_D^k/dθ_G is left out. Cost: about k + 1 critic forward/backward passes more,
        with second derivatives.
        """
        runner = _Run(self.critic)
        names = [n for n, _ in self.critic.named_parameters()]
        theta = [p for _, p in self.critic.named_parameters()]
        buffers = {f"critic.{n}": b.clone() for n, b in self.critic.named_buffers()}
        lr = self.config.lr_critic

        def state(params):
            return {**{f"critic.{n}": p for n, p in zip(names, params)}, **buffers}

        for _ in range(k):
            critic_loss = functional_call(runner, state(theta), (lambda: self.critic_objective(real, fake, y)[0],))
            grads = torch.autograd.grad(critic_loss, theta, create_graph=True, allow_unused=True)
            theta = [p if g is None else p - lr * g for p, g in zip(theta, grads)]
        loss, logs = functional_call(runner, state(theta), (lambda: self.generator_loss(real, fake, y),))
        return loss, {**logs, "unrolled_critic_loss": critic_loss.detach()}

    def after_step(self, group: str) -> None:
        """Count critic steps (instance-noise annealing), update the historical averages and the EMA of G."""
        if group == "critic":
            self.critic_steps += 1
        if self.config.historical_averaging > 0:
            self._update_historical_averages(group)
        if group == "gen" and self._ema_names:
            self._update_ema()

    # -- the EMA of G's weights ------------------------------------------------------
    def _ema_pairs(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        return averaged_pairs(self, "ema", self._ema_names, dict(self.gen.named_parameters()))

    def _update_ema(self) -> None:
        """ema <- d·ema + (1 - d)·θ with d = min(ema, (1 + t)/(10 + t)), t the generator steps averaged so far."""
        update_average(self, "ema", self._ema_pairs(), self.config.ema)

    def ema_weights(self):
        """G runs with the averaged weights inside (sampling); the live weights are back afterwards. Without
        an EMA (ema: 0) it changes nothing."""
        return swapped_in(self._ema_pairs() if self._ema_names else [])

    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        return self.sample_with(n, generator, condition)

    @torch.no_grad()
    def sample_with(self, n: int, generator: torch.Generator | None, condition: torch.Tensor | None,
                    **options) -> torch.Tensor:
        """n samples (n, *shape) in model space, `options` passed to `generate` (a family's truncation trick).
        A sample leaves the generator as it was: no spectral norm's power iteration, no update of batch
        norm's running statistics (in training mode it still normalises by the batch)."""
        if self.num_labels:
            if condition is None:
                raise ValueError(f"{type(self).__name__} is conditional: pass condition= int64 labels of shape (n,)")
        else:
            check_unconditional(self, condition)
        with power_iterations_paused(self.gen), running_stats_paused(self.gen), self.ema_weights():
            return clamp_to_model_space(self.generate(n, condition, generator, **options), self.data)

    # -- historical averaging (Salimans et al. 2016, §3.3) ------------------------
    def _group_params(self, group: str) -> list[nn.Parameter]:
        if group == "critic":
            return self.critic_parameters()
        if group == "gen":
            return self.gen_parameters()
        raise KeyError(f"{type(self).__name__} has step groups 'critic' and 'gen', got {group!r}")

    def _register_copies(self, prefix: str, params) -> list[str]:
        """A buffer `<prefix>_<i>` holding a copy of each parameter (running averages start at θ_0); their names."""
        names = []
        for i, p in enumerate(params):
            names.append(f"{prefix}_{i}")
            self.register_buffer(names[-1], p.detach().clone())
        return names

    def _init_historical_averages(self) -> None:
        # The running mean (1/t) Σ_{i≤t} θ_i starts at θ_0, so the penalty is zero at the first step.
        for group in ("critic", "gen"):
            self._hist_names[group] = self._register_copies(f"hist_{group}", self._group_params(group))
            self.register_buffer(f"hist_{group}_count", torch.ones((), dtype=torch.long))

    def historical_mean(self, group: str) -> list[torch.Tensor]:
        """The running means of `group`'s parameters, one tensor per parameter."""
        return [getattr(self, name) for name in self._hist_names[group]]

    def historical_penalty(self, group: str) -> torch.Tensor:
        """‖θ - (1/t) Σ_i θ_i‖² over the player's own parameters (unweighted)."""
        params = self._group_params(group)
        return sum((p - m).pow(2).sum() for p, m in zip(params, self.historical_mean(group)))

    @torch.no_grad()
    def _update_historical_averages(self, group: str) -> None:
        count = getattr(self, f"hist_{group}_count")
        count += 1
        for p, m in zip(self._group_params(group), self.historical_mean(group)):
            m.add_((p - m) / count)


# --------------------------------------------------------------------------- diagnostics


def critic_grad_norms(model: AdversarialModel, real: torch.Tensor, fake: torch.Tensor,
                      y: torch.Tensor | None = None) -> list[float]:
    """‖∂L_critic/∂W‖₂ for each Linear/Conv weight of the critic, input -> output order.

    L_critic is the family's `critic_objective` (with its penalty, if any) on the given
    real and fake batches. WGAN-GP's Figure 1b plots these per layer: with weight clipping
    they explode or vanish with depth, with the gradient penalty they stay stable.
    Parameters' `.grad` are left untouched.
    """
    layers = [m for m in model.critic.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    weights = [m.weight for m in layers]
    loss, _ = model.critic_objective(real, fake.detach(), y)
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    return [0.0 if g is None else g.norm().item() for g in grads]
