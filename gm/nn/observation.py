"""Observation models p(x | params): the likelihood heads of decoders (and of autoregressive nets).

Every head scores model-space vectors x (B, D) (see `DataSpec`) and returns a density in
model space, in fp32 whatever the autocast dtype of the network's params (an fp32 island,
`gm.nn.precision`), so the evaluation's one conversion (add `DataSpec.log_det_to_model`) gives
honest numbers for every head:

- gaussian: a continuous density, mean from the network, a learned per-dimension log σ.
- gaussian_z: the VAE's decoder as Kingma & Welling define it (2014, App. C.2): mean and
  log σ both from the network, so the variance depends on z.
- bernoulli, categorical, logistic (discretized logistic mixture, Salimans et al. 2017):
  a probability mass P(v) over the data's levels v. Dequantized model-space x falls in the
  bin of its level, of width 1/scale; the head returns the density of "P(v) spread uniformly
  over that bin", log P(v) + D·log(scale), which the evaluation turns back into exactly
  log P(v) per image. Bits/dim of discrete data are therefore the real code length.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gm.core.config import ConfigError
from gm.data.dataspec import DataSpec
from gm.core.numerics import categorical, normal_log_prob, rand, randn
from gm.nn.precision import fp32

ObservationName = Literal["gaussian", "gaussian_z", "bernoulli", "categorical", "logistic"]


def levels_of(x: torch.Tensor, data: DataSpec) -> torch.Tensor:
    """The discrete level v (int64) of each model-space value (dequantized or a bin centre)."""
    v = torch.floor(x * data.scale + data.shift)
    return v.clamp(0, data.levels - 1).long()


def bin_centres(v: torch.Tensor, data: DataSpec) -> torch.Tensor:
    """Model-space centre of level v's bin: what a discrete sample becomes in model space."""
    return data.rescale(v.float() + 0.5)


def discretized_logistic_mixture_log_prob(v: torch.Tensor, logit_pi: torch.Tensor, mean: torch.Tensor,
                                          log_scale: torch.Tensor, data: DataSpec) -> torch.Tensor:
    """log P(v) per element under a mixture of logistics discretized onto the data's levels.

    v (...,) int64 levels; logit_pi, mean, log_scale (..., K) in model space. Level v owns
    the model-space interval [c - h, c + h], c its bin centre, h = 1/(2·scale); the lowest
    and highest levels take the tails (-inf and +inf), so P sums to 1 over the levels
    (PixelCNN++, Salimans et al. 2017, Eq. 2). Returns (...,) in nats.
    """
    logit_pi, mean, log_scale = fp32(logit_pi), fp32(mean), fp32(log_scale)  # an fp32 island under autocast
    c = bin_centres(v, data).unsqueeze(-1)  # (..., 1)
    h = 0.5 / data.scale
    inv_s = torch.exp(-log_scale)  # (..., K)
    upper = (c + h - mean) * inv_s
    lower = (c - h - mean) * inv_s
    # log(σ(upper) - σ(lower)), stable in the tails; at the edge levels one side is a tail.
    log_cdf_upper = F.logsigmoid(upper)  # log σ(u): the lowest level's mass
    log_sf_lower = F.logsigmoid(-lower)  # log(1 - σ(l)): the highest level's mass
    diff = torch.sigmoid(upper) - torch.sigmoid(lower)
    mid = (c - mean) * inv_s
    # Where the difference underflows, use the density at the centre times the bin width.
    log_mid = torch.where(
        diff > 1e-5,
        torch.log(diff.clamp_min(1e-12)),
        mid - log_scale - 2 * F.softplus(mid) + math.log(2 * h),
    )
    vv = v.unsqueeze(-1).expand_as(mean)
    log_p = torch.where(vv == 0, log_cdf_upper, torch.where(vv == data.levels - 1, log_sf_lower, log_mid))
    return torch.logsumexp(F.log_softmax(logit_pi, dim=-1) + log_p, dim=-1)


def sample_discretized_logistic_mixture(logit_pi: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        data: DataSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """Levels v (...,) drawn from the discretized mixture with parameters (..., K)."""
    k = categorical(F.softmax(logit_pi, -1), generator)  # (...,) the component of each element
    m = mean.gather(-1, k.unsqueeze(-1)).squeeze(-1)
    s = log_scale.gather(-1, k.unsqueeze(-1)).squeeze(-1).exp()
    u = rand(m.shape, generator, m.device).clamp(1e-5, 1 - 1e-5)
    x = m + s * (torch.log(u) - torch.log1p(-u))  # a logistic draw, model space
    return levels_of(x, data)


class Observation(nn.Module):
    """p(x | params): `params_per_dim` numbers per data dimension from the network."""

    params_per_dim: int = 1

    def __init__(self, data: DataSpec):
        super().__init__()
        self.data = data

    def split(self, params: torch.Tensor) -> torch.Tensor:
        """(..., D·P) -> (..., D, P)."""
        return params.unflatten(-1, (self.data.dim, self.params_per_dim))

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Model-space log density of x (B, D) given params (..., B, D·P), summed over D: (..., B)."""
        raise NotImplementedError

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One model-space draw x ~ p(x | params), (..., D)."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The distribution's mean in model space, (..., D) (reconstructions, pythae's samples)."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Projections after an optimizer step (e.g. a floor on a learned σ)."""

    def _discrete_density(self, log_mass: torch.Tensor) -> torch.Tensor:
        """log P(v) summed over D -> the model-space density of P spread over the bins (see module doc)."""
        return log_mass.sum(-1) + self.data.dim * math.log(self.data.scale)


class GaussianObservation(Observation):
    """N(x; m, diag s²), m from the network, log s a learned (D,) vector floored at `min_log_std`."""

    def __init__(self, data: DataSpec, min_log_std: float = -7.0):
        super().__init__(data)
        self.min_log_std = min_log_std
        self.log_std = nn.Parameter(torch.zeros(data.dim))  # (D,)

    def floored_log_std(self) -> torch.Tensor:
        return self.log_std.clamp(min=self.min_log_std)

    def after_step(self) -> None:
        # Project, not only clamp in the forward pass: a clamped forward has zero gradient
        # below the floor, so a parameter that crossed it could never come back.
        with torch.no_grad():
            self.log_std.clamp_(min=self.min_log_std)

    def log_prob(self, params, x):
        return normal_log_prob(fp32(x), fp32(params), self.floored_log_std()).sum(-1)

    def sample(self, params, generator=None):
        return params + self.floored_log_std().exp() * randn(params.shape, generator, params.device)

    def mean(self, params):
        return params


class GaussianZObservation(Observation):
    """N(x; m(z), diag s(z)²): the network gives mean and log s per dimension (Kingma & Welling 2014,
    App. C.2: log σ² = W h + b beside the mean). log s is floored smoothly at `min_log_std`,
    min + softplus(raw − min), so it keeps a gradient everywhere (a clamp would freeze a unit below it)."""

    params_per_dim = 2

    def __init__(self, data: DataSpec, min_log_std: float = -7.0):
        super().__init__(data)
        self.min_log_std = min_log_std

    def _parts(self, params):
        p = self.split(fp32(params))  # (..., D, 2)
        return p[..., 0], self.min_log_std + F.softplus(p[..., 1] - self.min_log_std)

    def log_std_of(self, params) -> torch.Tensor:
        """The floored log s(z) of each dimension: (..., D)."""
        return self._parts(params)[1]

    def log_prob(self, params, x):
        mean, log_std = self._parts(params)
        return normal_log_prob(fp32(x), mean, log_std).sum(-1)

    def sample(self, params, generator=None):
        mean, log_std = self._parts(params)
        return mean + log_std.exp() * randn(mean.shape, generator, mean.device)

    def mean(self, params):
        return self._parts(params)[0]


class BernoulliObservation(Observation):
    """Independent Bernoulli over binary data (levels = 2), logits from the network."""

    def __init__(self, data: DataSpec):
        super().__init__(data)
        if data.levels != 2:
            raise ConfigError(f"decoder: 'bernoulli' needs binary data (levels = 2), got levels = {data.levels}")

    def log_prob(self, params, x):
        params = fp32(params)
        v = levels_of(x, self.data).to(params.dtype)  # (B, D) in {0, 1}
        return self._discrete_density(-F.binary_cross_entropy_with_logits(params, v.expand_as(params),
                                                                          reduction="none"))

    def sample(self, params, generator=None):
        v = (rand(params.shape, generator, params.device) < torch.sigmoid(params)).long()
        return bin_centres(v, self.data)

    def mean(self, params):
        p = torch.sigmoid(params)
        return bin_centres(torch.zeros_like(p), self.data) * (1 - p) + bin_centres(torch.ones_like(p), self.data) * p


class CategoricalObservation(Observation):
    """A softmax over the data's levels for every dimension (PixelRNN's 256-way softmax)."""

    def __init__(self, data: DataSpec):
        super().__init__(data)
        if not data.levels:
            raise ConfigError("decoder: 'categorical' needs discrete data (the data spec has no levels)")
        self.params_per_dim = data.levels

    def log_prob(self, params, x):
        logits = self.split(fp32(params))  # (..., B, D, L)
        v = levels_of(x, self.data).expand(logits.shape[:-1])  # (..., B, D)
        return self._discrete_density(F.log_softmax(logits, -1).gather(-1, v.unsqueeze(-1)).squeeze(-1))

    def sample(self, params, generator=None):
        return bin_centres(categorical(F.softmax(self.split(params), -1), generator), self.data)

    def mean(self, params):
        probs = F.softmax(self.split(params), -1)  # (..., D, L)
        centres = bin_centres(torch.arange(self.params_per_dim, device=params.device), self.data)
        return (probs * centres).sum(-1)


class LogisticObservation(Observation):
    """A discretized mixture of `components` logistics per dimension (PixelCNN++'s likelihood)."""

    def __init__(self, data: DataSpec, components: int = 1):
        super().__init__(data)
        if not data.levels:
            raise ConfigError("decoder: 'logistic' needs discrete data (the data spec has no levels)")
        self.components = components
        self.params_per_dim = 3 * components

    def _parts(self, params):
        logit_pi, mean, log_scale = self.split(params).chunk(3, dim=-1)  # (..., D, K) each
        return logit_pi, mean, log_scale.clamp(min=-7.0)

    def log_prob(self, params, x):
        logit_pi, mean, log_scale = self._parts(fp32(params))
        v = levels_of(x, self.data).expand(mean.shape[:-1])
        return self._discrete_density(discretized_logistic_mixture_log_prob(v, logit_pi, mean, log_scale, self.data))

    def sample(self, params, generator=None):
        v = sample_discretized_logistic_mixture(*self._parts(params), self.data, generator)
        return bin_centres(v, self.data)

    def mean(self, params):
        logit_pi, mean, _ = self._parts(params)
        return (F.softmax(logit_pi, -1) * mean).sum(-1).clamp(-1.0, 1.0)


def make_observation(name: str, data: DataSpec, min_log_std: float = -7.0, components: int = 1) -> Observation:
    """The observation model by name; discrete heads check that the data is discrete."""
    if name == "gaussian":
        return GaussianObservation(data, min_log_std)
    if name == "gaussian_z":
        return GaussianZObservation(data, min_log_std)
    if name == "bernoulli":
        return BernoulliObservation(data)
    if name == "categorical":
        return CategoricalObservation(data)
    if name == "logistic":
        return LogisticObservation(data, components)
    raise ConfigError(f"decoder: expected one of gaussian, gaussian_z, bernoulli, categorical, logistic, "
                      f"got {name!r}")
