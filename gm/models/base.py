"""The model contract every family implements, and saving/rebuilding a model from disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from gm.core.config import build, to_dict
from gm.data.dataspec import DataSpec
from gm.core.registry import FAMILIES


@dataclass
class ModelOutput:
    loss: torch.Tensor  # scalar to minimise for the group
    logs: dict[str, float] = field(default_factory=dict)


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


class GenerativeModel(nn.Module):
    """Base class of every family. Subclasses are registered with @register_family(name).

    - `config_cls`: the family's frozen config dataclass.
    - `likelihood`: "exact" (flows, autoregressive), "bound" (latent-variable models:
      log_prob is an importance-weighted lower bound) or None (implicit models).
    - All tensors are in model space (see DataSpec); the pipeline maps to data space.
    """

    config_cls: ClassVar[type]
    likelihood: ClassVar[Literal["exact", "bound"] | None] = None
    registry_name: ClassVar[str]

    def __init__(self, config, data: DataSpec):
        super().__init__()
        self.config = config
        self.data = data

    # -- the contract -------------------------------------------------------------
    def step_groups(self) -> list[StepGroup]:
        raise NotImplementedError

    def loss(self, batch: Batch, group: str) -> ModelOutput:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """n samples in model space, shape (n, *data.shape)."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row log density in model space (nats); a lower bound when likelihood == 'bound'."""
        raise NotImplementedError(f"{type(self).__name__} has no likelihood")

    def after_step(self, group: str) -> None:
        """Hook after an optimizer step of `group` (e.g. WGAN weight clipping)."""

    # -- helpers ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_config(cls, config, data: DataSpec) -> "GenerativeModel":
        return cls(config, data)


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
