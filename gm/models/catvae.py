"""Categorical VAE with the Gumbel-softmax (Jang et al. 2017) / Concrete (Maddison et al. 2017)
relaxation.

The latent is `n_latent` independent categorical variables of `n_categories` categories;
the decoder reads their one-hot codes flattened to (N·K,). Training replaces each one-hot
draw by the relaxed sample

    y = softmax((log π + g) / τ),  g ~ Gumbel(0, 1)                     (Jang et al. 2017, Eq. 2)

with τ annealed as τ = max(τ_min, τ_start·exp(-r·t)) over optimizer steps t (`estimator:
gumbel`), optionally straight-through (a hard one-hot forward, the relaxed gradient; Jang et al.
2017 §2.2; `estimator: straight_through`). The KL to the uniform prior is analytic:
Σ_n Σ_k q_nk log q_nk + N log K.

`estimator: score_function` is the unbiased alternative the relaxation was built to avoid (the
survey contrasts the two): the likelihood-ratio / REINFORCE gradient (Williams 1992; for
variational inference Paisley et al. 2012, Mnih & Gregor 2014) of the exact discrete objective

    ∇_φ E_q[f(z)] = E_q[(f(z) − b) ∇_φ log q_φ(z|x)],   f(z) = log p(x|z),

with z an exact one-hot draw and b a control variate that leaves it unbiased: none, a moving
average of f (`baseline: moving_average`, bias-corrected like Adam's moments), or that average
plus an input-dependent net b_ψ(x) fitted to f by least squares (`baseline: learned`; NVIL's
centring plus its input-dependent baseline, Mnih & Gregor 2014 §3.2). The KL stays analytic.
`gradient_estimates` draws an estimator's encoder gradient many times on one batch, so their
variances (and the relaxations' bias) can be printed side by side (`make bench ARGS=estimators`).

Evaluation needs no relaxation: `posterior` draws exact one-hot codes by Gumbel-max
(argmax(log π + g) ~ Cat(π), Jang et al. 2017 Eq. 1) with their exact log q(z|x), and
log p(z) = -N log K, so the inherited `elbo`, `iwae_bound` and `log_prob` are honest bounds
of a model with a discrete latent (p(x) = Σ_z p(x|z) p(z)).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from gm.core.config import ConfigError, bounded
from gm.models._latent import ExplicitPosteriorModel, LatentConfig, encoder_net
from gm.models.base import Batch, ModelOutput, StepGroup
from gm.nn.mlp import mlp
from gm.core.numerics import rand
from gm.core.registry import register_family

__all__ = ["CatVAE", "CatVAEConfig", "ESTIMATORS", "categorical_kl_to_uniform", "gradient_estimates", "gumbel_noise",
           "gumbel_softmax", "score_function_surrogate"]

ESTIMATORS = ("gumbel", "straight_through", "score_function")


@dataclass(frozen=True)
class CatVAEConfig(LatentConfig):
    # The decoder's input, the flattened one-hot codes: n_latent·n_categories, filled in by the
    # model. Left out (None) in params, so tuning n_latent or n_categories never meets a stale
    # value; a value given that disagrees is an error rather than silently ignored.
    z_dim: int | None = bounded(None, gt=0)
    n_latent: int = bounded(30, gt=0)  # categorical variables N (Jang et al.'s reference code: 30 × 10)
    n_categories: int = bounded(10, gt=1)  # categories K per variable
    tau_start: float = bounded(1.0, gt=0)  # Jang et al. 2017: τ = max(0.5, exp(-r·t))
    tau_min: float = bounded(0.5, gt=0)
    anneal_rate: float = bounded(3e-5, ge=0)  # r per optimizer step (Jang et al. try r in 1e-5..1e-4)
    # The gradient through the discrete draw: the Gumbel-softmax relaxation, its straight-through form,
    # or the unbiased score-function (REINFORCE) estimator with a control variate `baseline`.
    estimator: Literal["gumbel", "straight_through", "score_function"] = "gumbel"
    straight_through: bool = False  # the older spelling of `estimator: straight_through` (saved models carry it)
    baseline: Literal["none", "moving_average", "learned"] = "moving_average"  # score_function only
    baseline_decay: float = bounded(0.99, ge=0, lt=1)  # the moving average's decay per step (NVIL §3.2 uses 0.8-0.99)
    beta: float = bounded(1.0, ge=0)  # weight of the KL to the uniform prior; 1 is the (relaxed) ELBO

    @property
    def gradient_estimator(self) -> str:
        """The estimator in force: `estimator`, or straight_through when the older flag says so."""
        return "straight_through" if self.straight_through else self.estimator

    @property
    def code_dim(self) -> int:
        """N·K, the length of the flattened one-hot codes."""
        return self.n_latent * self.n_categories

    def validate(self):
        if self.z_dim is not None and self.z_dim != self.code_dim:
            raise ConfigError(f"z_dim: expected n_latent·n_categories = {self.code_dim} (or leave it out), "
                              f"got {self.z_dim}")
        if self.tau_min > self.tau_start:
            raise ConfigError(f"tau_min: expected a value <= tau_start ({self.tau_start}), got {self.tau_min}")
        if self.straight_through and self.estimator != "gumbel":
            raise ConfigError(f"straight_through: the older spelling of estimator: straight_through; it cannot "
                              f"be combined with estimator: {self.estimator} (leave straight_through out)")


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Standard Gumbel noise g = -log(-log U), U ~ U(0, 1) kept away from 0."""
    u = rand(shape, generator, device).clamp_min(torch.finfo(torch.float32).tiny)
    return -torch.log(-torch.log(u))


def gumbel_softmax(logits: torch.Tensor, tau: torch.Tensor | float, hard: bool = False,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A relaxed one-hot sample softmax((logits + g)/τ) over the last dim (Jang et al. 2017, Eq. 2).

    `hard`: the one-hot of its argmax in the forward pass with the relaxed sample's gradient
    (straight-through); the forward value is exactly one-hot since the added term is y - y = 0.
    """
    y = F.softmax((logits + gumbel_noise(logits.shape, generator, logits.device)) / tau, dim=-1)
    if not hard:
        return y
    y_hard = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return y_hard + (y - y.detach())


def score_function_surrogate(log_q_z: torch.Tensor, f: torch.Tensor, baseline: torch.Tensor | float = 0.0
                             ) -> torch.Tensor:
    """A scalar whose gradient is the score-function estimate of ∇ E_q[f(z)] over the batch mean:
    mean((f − b) · log q(z|x)) with f and b held constant, so only log q carries gradient.
    log_q_z, f: (B,) at draws z ~ q (not reparameterised); baseline: (B,) or a number."""
    return ((f - baseline).detach() * log_q_z).mean()


def categorical_kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(Cat(softmax(logits)) ‖ Uniform(K)) = Σ_k q_k log q_k + log K, summed over the
    variables: (..., N, K) -> (...)."""
    log_q = F.log_softmax(logits, dim=-1)
    k = logits.shape[-1]
    return ((log_q.exp() * log_q).sum(-1) + math.log(k)).sum(-1)


@register_family("catvae")
class CatVAE(ExplicitPosteriorModel):
    """VAE with N K-way categorical latents trained through the Gumbel-softmax relaxation;
    `log_prob` is the IWAE bound with exact discrete posterior samples."""

    config_cls = CatVAEConfig

    def __init__(self, config: CatVAEConfig, data):
        # The base reads z_dim (decoder input, IWAE chunk width): make it N·K. The filled-in
        # config is what checkpoints store, and it validates as given.
        config = dataclasses.replace(config, z_dim=config.code_dim)
        super().__init__(config, data)  # decoder: mlp(N·K -> observation params)
        self.encoder = encoder_net(config, data, config.code_dim)  # -> logits (B, N·K)
        # Optimizer steps taken, for the temperature schedule; a buffer, so checkpoints keep it.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.estimator = config.gradient_estimator
        if self.estimator == "score_function" and config.baseline != "none":
            # The moving average of f (bias-corrected) and how many batches it has seen; buffers, so a
            # resumed run keeps its control variate.
            self.register_buffer("baseline_mean", torch.zeros(()))
            self.register_buffer("baseline_batches", torch.zeros((), dtype=torch.long))
        if self.estimator == "score_function" and config.baseline == "learned":
            self.baseline_net = mlp(data.dim, 1, config.hidden, 1, config.activation)  # b_ψ(x), NVIL's baseline net

    def step_groups(self) -> list[StepGroup]:
        return [StepGroup("vae", list(self.parameters()), lr=self.config.lr)]

    def after_step(self, group: str) -> None:
        super().after_step(group)
        self.step += 1

    def temperature(self) -> torch.Tensor:
        """τ = max(τ_min, τ_start·exp(-r·step)), a 0-dim tensor."""
        c = self.config
        return (c.tau_start * torch.exp(-c.anneal_rate * self.step.float())).clamp_min(c.tau_min)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *shape) -> unnormalised log q(z|x) per variable: (B, N, K)."""
        return self.encoder(x.flatten(1)).unflatten(-1, (self.config.n_latent, self.config.n_categories))

    def _one_hot(self, index: torch.Tensor) -> torch.Tensor:
        """Category indices (..., N) -> flattened one-hot codes (..., N·K)."""
        return F.one_hot(index, self.config.n_categories).float().flatten(-2)

    def posterior(self, x, k=None, generator=None):
        """Exact one-hot draws z ~ q(z|x) by Gumbel-max and log q(z|x) (not reparameterised):
        (B, N·K), (B,) or, with k, (k, B, N·K), (k, B)."""
        log_q = F.log_softmax(self.logits(x), dim=-1)  # (B, N, K)
        shape = log_q.shape if k is None else (k, *log_q.shape)
        index = (log_q + gumbel_noise(shape, generator, log_q.device)).argmax(-1)  # (.., B, N)
        log_q_z = log_q.expand(shape).gather(-1, index.unsqueeze(-1)).squeeze(-1).sum(-1)  # (.., B)
        return self._one_hot(index), log_q_z

    def prior_log_prob(self, z):
        """log p(z) = -N log K, the uniform mass of any one-hot code: (..., N·K) -> (...)."""
        c = self.config
        return torch.full(z.shape[:-1], -c.n_latent * math.log(c.n_categories), dtype=z.dtype, device=z.device)

    def prior_sample(self, n, generator=None):
        c = self.config
        u = rand((n, c.n_latent), generator, self.device)  # (n, N)
        index = (u * c.n_categories).long().clamp_max(c.n_categories - 1)
        return self._one_hot(index)  # (n, N·K)

    def encode_mean(self, x):
        """The posterior mode's one-hot code: (B, N·K)."""
        return self._one_hot(self.logits(x).argmax(-1))

    def control_variate(self, x: torch.Tensor) -> torch.Tensor:
        """The score-function baseline b for each row of x, (B,): 0, the moving average of f, or that
        average plus b_ψ(x)."""
        if self.config.baseline == "none":
            return torch.zeros(x.shape[0], device=x.device)
        seen = self.baseline_batches.clamp_min(1).float()
        mean = self.baseline_mean / (1 - self.config.baseline_decay ** seen)  # bias-corrected, as Adam's moments
        mean = torch.where(self.baseline_batches > 0, mean, torch.zeros_like(mean))
        if self.config.baseline == "moving_average":
            return mean.expand(x.shape[0])
        return mean + self.baseline_net(x.flatten(1)).squeeze(-1)

    def _track_baseline(self, f: torch.Tensor) -> None:
        """Fold a batch's mean f into the moving average (training only)."""
        if self.config.baseline == "none" or not self.training:
            return
        with torch.no_grad():
            d = self.config.baseline_decay
            self.baseline_mean.mul_(d).add_((1 - d) * f.mean())
            self.baseline_batches += 1

    def estimator_loss(self, x: torch.Tensor, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(surrogate, logs, logits (B, N, K)): a scalar whose gradient is the configured estimator's estimate of
        −∇ E_q[log p(x|z)] (the decoder's gradient exact at the draw), plus, for a learned baseline,
        its least-squares fit; the KL term is not included."""
        logits = self.logits(x)  # (B, N, K)
        if self.estimator != "score_function":
            tau = self.temperature()
            y = gumbel_softmax(logits, tau, self.estimator == "straight_through", generator)  # (B, N, K)
            recon = -self.log_px(x, y.flatten(-2)).mean()
            return recon, {"recon": recon.detach(), "tau": tau}, logits
        log_q = F.log_softmax(logits, dim=-1)
        index = (log_q.detach() + gumbel_noise(log_q.shape, generator, log_q.device)).argmax(-1)  # exact z ~ q: (B, N)
        log_q_z = log_q.gather(-1, index.unsqueeze(-1)).squeeze(-1).sum(-1)  # (B,)
        log_px = self.log_px(x, self._one_hot(index))  # (B,): the decoder's gradient is exact at z
        f = log_px.detach()
        b = self.control_variate(x)
        self._track_baseline(f)
        surrogate = -log_px.mean() - score_function_surrogate(log_q_z, f, b)
        logs = {"recon": -f.mean(), "baseline": b.detach().mean(), "advantage_std": (f - b.detach()).std()}
        if self.config.baseline == "learned":
            fit = (f - b).pow(2).mean()  # only b_ψ's parameters see it: f is constant, b is used detached above
            surrogate = surrogate + fit
            logs["baseline_mse"] = fit.detach()
        return surrogate, logs, logits

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        """The estimator's reconstruction surrogate + β·KL(q ‖ uniform): −log p(x|y) at a relaxed sample
        y (gumbel, straight_through) or the score-function surrogate at an exact draw."""
        if group != "vae":
            raise KeyError(f"CatVAE has the single step group 'vae', got {group!r}")
        surrogate, logs, logits = self.estimator_loss(batch.x)
        kl = categorical_kl_to_uniform(logits).mean()
        loss = surrogate + self.config.beta * kl
        recon = logs["recon"]
        logs = {"loss": loss.detach(), "kl": kl.detach(), **logs}
        logs["relaxed_elbo" if self.estimator != "score_function" else "elbo"] = -(recon + kl.detach())
        if hasattr(self.obs, "log_std"):
            logs["decoder_log_std"] = self.obs.floored_log_std().mean().detach()
        return ModelOutput(loss, logs)


def gradient_estimates(model: CatVAE, x: torch.Tensor, draws: int, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
    """`draws` independent estimates of the gradient of −E_q[log p(x|z)] (the batch mean) with respect
    to the encoder's parameters, by `model`'s estimator: (draws, P). The model's baseline is held as it
    is (no moving-average update) and the KL, whose gradient is exact, is left out, so the rows differ
    only through the estimator's noise."""
    params = list(model.encoder.parameters())
    was_training = model.training
    model.eval()  # the moving average is not updated while estimates are drawn
    rows = []
    try:
        for _ in range(draws):
            surrogate, _, _ = model.estimator_loss(x, generator)
            grads = torch.autograd.grad(surrogate, params, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                   for g, p in zip(grads, params)]))
    finally:
        model.train(was_training)
    return torch.stack(rows)
