"""One experiment of params.yaml: (family, dataset, model config, train section), and its round trip
through plain data (configs cross process boundaries to Ray workers as dicts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import gm.models  # noqa: F401  (importing the package registers every family)
from gm.core.config import ConfigError, bounded, build, deep_merge, to_dict
from gm.core.registry import FAMILIES


@dataclass(frozen=True)
class ScalingParams:
    num_workers: int = bounded(1, ge=0)  # 0 runs the loop in the driver process (unit tests only)
    use_gpu: bool = False
    cpus_per_worker: float = bounded(1.0, gt=0)
    gpus_per_worker: float = bounded(1.0, ge=0)  # used only when use_gpu


@dataclass(frozen=True)
class TrainParams:
    steps: int = bounded(2000, gt=0)  # iterations of the model's step schedule
    batch_size: int = bounded(128, gt=0)  # per worker
    eval_every: int = bounded(250, gt=0)  # steps between validation + checkpoint
    val_samples: int = bounded(1000, gt=0)  # samples drawn for sample-based validation scores
    seed: int = 0
    seeds: int = bounded(1, gt=0)  # replicate runs with seeds seed, seed+1, ...: results as mean ± std
    num_to_keep: int = bounded(1, ge=1)  # best checkpoints kept; Ray always keeps the latest as well
    # which checkpoint a run exports and registers: the lowest val_score, or the final one (for models whose
    # validation score disagrees with the benchmark, e.g. W1 on toys favours blurry early GANs over sharp late ones)
    select: Literal["best", "last"] = "best"
    max_failures: int = bounded(2, ge=-1)  # worker/node failures survived by resuming from the latest checkpoint
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # every group's lr, from its value to 0 over steps
    data_in_memory: bool = True  # pull each worker's shard once (small data); False streams every epoch
    # autocast precision of the step: bf16 runs matmuls/convs in bfloat16 (log-determinants, likelihood
    # reductions and penalties stay fp32; docs/architecture.md); fp32 everywhere by default
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False  # torch.compile the step's loss (graph breaks are counted and reported)
    fail_once_at_step: int | None = bounded(None, gt=0)  # fault injection for recovery tests
    scaling: ScalingParams = field(default_factory=ScalingParams)

    def validate(self):
        if self.eval_every > self.steps:
            raise ConfigError(f"eval_every: expected a value <= steps ({self.steps}), got {self.eval_every}")
        if self.fail_once_at_step is not None and not self.eval_every < self.fail_once_at_step <= self.steps:
            raise ConfigError(
                f"fail_once_at_step: expected a step after the first checkpoint ({self.eval_every}) "
                f"and <= steps ({self.steps}), got {self.fail_once_at_step}")


@dataclass(frozen=True)
class ExperimentConfig:
    """One (family, dataset, config) triple; `model` is the family's own typed config."""

    name: str
    family: str
    dataset: str
    model: Any
    train: TrainParams

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "dataset": self.dataset,
            "model": to_dict(self.model),
            "train": to_dict(self.train),
        }


def build_experiment(name: str, raw: Mapping, train_defaults: Mapping, datasets: Mapping,
                     where: str | None = None) -> ExperimentConfig:
    """experiments.<name> (+ the global train defaults) -> ExperimentConfig."""
    where = where or f"experiments.{name}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    unknown = [k for k in raw if k not in ("family", "dataset", "model", "train")]
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; expected one of: family, dataset, model, train")
    for key in ("family", "dataset"):
        if not isinstance(raw.get(key), str):
            raise ConfigError(f"{where}.{key}: missing; expected a string")
    try:
        family_cls = FAMILIES.get_or_fail(raw["family"])
    except KeyError as e:
        raise ConfigError(f"{where}.family: {e.args[0]}") from None
    if raw["dataset"] not in datasets:
        raise ConfigError(
            f"{where}.dataset: unknown dataset {raw['dataset']!r}; expected one of: {', '.join(datasets)}"
        )
    model = build(family_cls.config_cls, raw.get("model"), f"{where}.model")
    train = build(TrainParams, deep_merge(train_defaults, raw.get("train") or {}), f"{where}.train")
    try:
        family_cls.check_train(model, train)  # the family's checks against the train section
    except ConfigError as e:
        raise ConfigError(f"{where}.model.{e}") from None
    return ExperimentConfig(name=name, family=raw["family"], dataset=raw["dataset"], model=model, train=train)


def experiment_from_dict(d: Mapping) -> ExperimentConfig:
    """Inverse of ExperimentConfig.to_dict."""
    return build_experiment(d["name"], {k: d[k] for k in ("family", "dataset", "model")}, d["train"],
                            {d["dataset"]: None})
