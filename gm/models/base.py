"""The model contract every family implements, and saving/rebuilding a model from disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from gm.core.config import build, to_dict
from gm.data.dataspec import DataSpec
from gm.core.registry import FAMILIES


class ModelOutput:
    """A group's loss and what to log about it.

    `loss`: the scalar to minimise. The logs are given as floats or 0-d tensors (detached here):
    a family logs tensors, so the training step never waits for the device to read a number.
    `values` holds them as given (what the step engine accumulates on the device); `logs`
    reads them as floats (one device read per tensor: for tests and one-off calls).
    """

    def __init__(self, loss: torch.Tensor, logs: dict[str, float | torch.Tensor] | None = None):
        self.loss = loss
        self.values: dict[str, float | torch.Tensor] = {
            k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in (logs or {}).items()}

    @property
    def logs(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.values.items()}

    def __repr__(self) -> str:
        return f"ModelOutput(loss={self.loss!r}, logs={self.values!r})"


@dataclass
class Batch:
    x: torch.Tensor  # (B, *shape), model space
    y: torch.Tensor | None = None  # (B,) int64 labels, when the data has them


@dataclass
class StepGroup:
    """One optimizer over some parameters, stepped `repeats` times per iteration."""

    name: str
    params: list[nn.Parameter]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    optimizer: Literal["adam", "rmsprop"] = "adam"
    repeats: int = 1  # e.g. a WGAN critic's n_critic
    weight_decay: float = 0.0

    def make_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer == "rmsprop":
            return torch.optim.RMSprop(self.params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.Adam(self.params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class Capabilities:
    """What a model can do beyond sampling. Callers ask here, never for attribute names.

    Each ability is a contract method of GenerativeModel, whose default raises
    NotImplementedError; a family implements exactly the ones it declares:
    - likelihood: `log_prob`, exact ("exact": flows, autoregressive) or a lower bound
      ("bound": latent-variable models); None for implicit models.
    - importance_weighted: log_prob is an importance-weighted bound whose number of draws can
      be raised for evaluation: `with_importance_samples`.
    - reconstruction: an encoder and a decoder: `reconstruct`.
    - rate_distortion: the negative ELBO splits into rate and distortion: `recon_and_kl`.
    - codebook: codes from a finite codebook: `codebook_perplexity`.
    - conditional: a model of p(x | y): `sample` (and `log_prob`) take int64 labels as `condition`.
    """

    likelihood: Literal["exact", "bound"] | None = None
    importance_weighted: bool = False
    reconstruction: bool = False
    rate_distortion: bool = False
    codebook: bool = False
    conditional: bool = False

    def __post_init__(self):
        if self.importance_weighted and self.likelihood != "bound":
            raise ValueError(f"importance_weighted needs likelihood 'bound', got {self.likelihood!r}")

    def declared(self) -> set[str]:
        """The names of the abilities this declares (likelihood counts when it is not None)."""
        return {f.name for f in fields(self) if getattr(self, f.name) not in (None, False)}


class LikelihoodOf:
    """`likelihood` of a family (its declaration), a model or a baseline: `capabilities.likelihood`,
    the shorthand that saved models, registrations and plots record."""

    def __get__(self, obj, owner=None) -> Literal["exact", "bound"] | None:
        return (owner if obj is None else obj).capabilities.likelihood


class GenerativeModel(nn.Module):
    """Base class of every family. Subclasses are registered with @register_family(name).

    - `config_cls`: the family's frozen config dataclass.
    - `capabilities`: what the family can do beyond sampling (see Capabilities), declared on the
      class; a family whose config changes them (labels, variational dequantization) refines
      them in `capabilities_for`, and every model carries its own from construction.
    - All tensors are in model space (see DataSpec); the pipeline maps to data space.
    """

    config_cls: ClassVar[type]
    capabilities: Capabilities = Capabilities()
    likelihood = LikelihoodOf()
    registry_name: ClassVar[str]

    def __init__(self, config, data: DataSpec):
        super().__init__()
        self.config = config
        self.data = data
        self.capabilities = self.capabilities_for(config)

    @classmethod
    def capabilities_for(cls, config) -> Capabilities:
        """What a model of this family built from `config` can do; the family's declaration unless
        its config decides."""
        return cls.capabilities

    # -- the contract -------------------------------------------------------------
    def step_groups(self) -> list[StepGroup]:
        raise NotImplementedError

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """n samples in model space, shape (n, *data.shape)."""
        raise NotImplementedError

    def after_step(self, group: str) -> None:
        """Hook after an optimizer step of `group` (e.g. WGAN weight clipping)."""

    @classmethod
    def check_train(cls, config, train) -> None:
        """Raise ConfigError (naming the field of `config`) if the train section (TrainParams)
        does not suit a model of this family built from `config`; a no-op unless the family has
        such constraints. A classmethod: experiments and sweeps are checked before any model exists."""

    # -- abilities (see Capabilities): each raises unless the family declares it ------
    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row log density in model space (nats); a lower bound when likelihood == 'bound'."""
        raise NotImplementedError(f"{type(self).__name__} has no likelihood")

    def with_importance_samples(self, k: int) -> "GenerativeModel":
        """The same model (weights, eval mode) whose log_prob bound draws k importance samples."""
        raise NotImplementedError(f"{type(self).__name__}'s log_prob is no importance-weighted bound")

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at the code of x: (B, *shape) -> (B, *shape), model space."""
        raise NotImplementedError(f"{type(self).__name__} has no encoder")

    def recon_and_kl(self, x: torch.Tensor, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Distortion -log p(x|z) at one z ~ q(z|x) and rate KL(q(z|x) ‖ p(z)), each (B,) nats."""
        raise NotImplementedError(f"{type(self).__name__} has no rate-distortion split")

    def codebook_perplexity(self, x: torch.Tensor) -> float:
        """exp(entropy of the average code usage) over the codes of the batch x; from 1 to K."""
        raise NotImplementedError(f"{type(self).__name__} has no codebook")

    # -- helpers ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_config(cls, config, data: DataSpec) -> "GenerativeModel":
        return cls(config, data)

    def with_config(self, **changes) -> "GenerativeModel":
        """A copy in eval mode under this config with `changes` (fields that leave the parameters
        as they are, such as a number of draws), carrying these weights."""
        model = type(self).from_config(replace(self.config, **changes), self.data)
        model.load_state_dict(self.state_dict())
        return model.eval()


def build_model(family: str, config, data: DataSpec) -> GenerativeModel:
    return FAMILIES.get_or_fail(family).from_config(config, data)


def save_model(model: GenerativeModel, directory: str | Path, extra: dict | None = None) -> Path:
    """Write config.json (family, config, data spec) and weights.pt; enough to rebuild anywhere."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "family": model.registry_name,
        "config": to_dict(model.config),
        "data": model.data.to_dict(),
        "likelihood": model.likelihood,
        **(extra or {}),
    }
    (directory / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    torch.save(model.state_dict(), directory / "weights.pt")
    return directory


def load_model(directory: str | Path, map_location: str = "cpu") -> GenerativeModel:
    directory = Path(directory)
    meta_path = directory / "config.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: missing; expected a model saved by gm.models.base.save_model")
    meta = json.loads(meta_path.read_text())
    family = FAMILIES.get_or_fail(meta["family"], str(meta_path))
    config = build(family.config_cls, meta["config"], f"{meta_path}:config")
    model = family.from_config(config, DataSpec.from_dict(meta["data"]))
    model.load_state_dict(torch.load(directory / "weights.pt", map_location=map_location, weights_only=True))
    model.eval()
    return model
