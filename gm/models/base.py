"""The model contract every family implements, and saving/rebuilding a model from disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from gm.core.config import build, to_dict
from gm.core.files import CorruptFile, atomic_write, first_line, load_tensors, read_json, sha256_file
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

    def level_perplexities(self, x: torch.Tensor) -> dict[str, float]:
        """Part of the codebook ability: each level's perplexity over the codes of the batch x, by level
        name, for a hierarchy of codebooks (VQ-VAE-2: {"top": ..., "bottom": ...}); {} for one codebook."""
        if not self.capabilities.codebook:
            raise NotImplementedError(f"{type(self).__name__} has no codebook")
        return {}

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
    """Write weights.pt, then config.json (family, config, data spec, the weights' sha256); enough to
    rebuild anywhere. Each file is written whole or not at all; the recorded hash lets `load_model` catch
    weights altered since (a flipped bit in a tensor loads without complaint otherwise)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = atomic_write(directory / "weights.pt", lambda p: torch.save(model.state_dict(), p))
    meta = {
        **(extra or {}),
        "family": model.registry_name,
        "config": to_dict(model.config),
        "data": model.data.to_dict(),
        "likelihood": model.likelihood,
        "weights_sha256": sha256_file(weights),
    }
    text = json.dumps(meta, indent=2, sort_keys=True)
    atomic_write(directory / "config.json", lambda p: p.write_text(text))
    return directory


def model_remedy(directory: str | Path) -> str:
    """What to do about a damaged model folder, from where it lies: the stage that exports it again, or,
    inside a Ray Train checkpoint, a fresh start of that run (Ray cannot resume from an earlier one)."""
    directory = Path(directory)
    if directory.parent.name == "models" and directory.name.startswith("seed-"):  # artifacts/train/<exp>/models/
        return f"run `dvc repro -f train@{directory.parent.parent.name}` to train and export it again"
    if directory.name == "model" and directory.parent.parent.name == "tune":  # artifacts/tune/<sweep>/model
        return f"run `dvc repro -f tune@{directory.parent.name}` to tune and export it again"
    if directory.parent.name.startswith("checkpoint_"):
        return checkpoint_remedy(directory.parent)
    return "save the model again (gm.models.base.save_model)"


def checkpoint_remedy(checkpoint: str | Path) -> str:
    """What to do about a damaged Ray Train checkpoint: its run cannot resume from it (Ray resumes from
    its latest checkpoint only, and refuses a run whose recorded checkpoints are missing), so the run
    starts afresh: remove its folder (that run only), or run the stage with --fresh (every run)."""
    run = Path(checkpoint).parent
    return f"this run cannot resume from it: remove {run} (or run the stage with --fresh) to train it from step 0"


def load_model(directory: str | Path, map_location: str = "cpu", remedy: str | None = None) -> GenerativeModel:
    """Rebuild a model saved by `save_model`, in eval mode. Its weights load with weights_only=True
    (gm.core.files.load_tensors: stored code never runs). FileNotFoundError when a file is missing;
    CorruptFile naming the file when config.json is garbled or not a model config, weights.pt is
    truncated, garbled or holds anything but tensors, or the weights do not fit the config; `remedy`
    (default: from where the folder lies, `model_remedy`) says what to do."""
    directory = Path(directory)
    remedy = model_remedy(directory) if remedy is None else remedy
    meta_path = directory / "config.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: missing; expected a model saved by gm.models.base.save_model; "
                                f"{remedy}")
    meta = read_json(meta_path, remedy)
    try:
        family = FAMILIES.get_or_fail(meta["family"], "family")
        config = build(family.config_cls, meta["config"], "config")
        model = family.from_config(config, DataSpec.from_dict(meta["data"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # ConfigError is a ValueError
        said = str(e.args[0]) if isinstance(e, KeyError) and e.args else first_line(e)
        why = f"no {said!r}" if isinstance(e, KeyError) and " " not in said else said  # a missing key, or a message
        raise CorruptFile(meta_path, f"not a gm model config ({why})", remedy) from None
    weights = directory / "weights.pt"
    state = load_tensors(weights, remedy, map_location)
    recorded = meta.get("weights_sha256")  # folders saved before it was recorded are not checked
    if recorded is not None and sha256_file(weights) != recorded:
        raise CorruptFile(weights, "contents differ from the sha256 in config.json (garbled or altered since "
                                   "it was saved)", remedy)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
        raise CorruptFile(weights, f"weights do not fit the config in config.json ({detail[:160]})", remedy) from None
    model.eval()
    return model
