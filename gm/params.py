"""The whole of params.yaml, assembled from the configs each layer owns.

Only stages, the CLI and tests import this module: it sits above everything it assembles
(data sources, training, tracking, evaluation, the featurizer and tune's sweeps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from gm.core.config import ConfigError, build, coerce
from gm.data.sources import build_source
from gm.evaluation import EvaluateParams
from gm.featurizer import FeaturizerConfig
from gm.tracking import MlflowParams
from gm.training.cluster import RayParams
from gm.training.experiment import ExperimentConfig, TrainParams, build_experiment
from tune.sweep import build_sweep


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml, validated."""

    raw: dict
    ray: RayParams
    mlflow: MlflowParams
    datasets: dict  # name -> source config (gm.data.sources)
    data_seed: int
    val_fraction: float
    test_fraction: float
    experiments: dict  # name -> ExperimentConfig
    sweeps: dict  # name -> tune.SweepConfig
    evaluate: Any
    featurize: Any  # gm.featurizer.FeaturizerConfig
    path: Path

    def dataset(self, name: str):
        """The source config of data.datasets.<name>."""
        return lookup(self.datasets, name, "data.datasets", "dataset")

    def sweep(self, name: str):
        """The tune.SweepConfig of tune.sweeps.<name>."""
        return lookup(self.sweeps, name, "tune.sweeps", "sweep")

    def experiment(self, name: str) -> ExperimentConfig:
        return lookup(self.experiments, name, "experiments", "experiment")


def lookup(table: Mapping, name: str, section: str, kind: str):
    """table[name], or a one-line ConfigError naming <section>.<name> and the known names."""
    if name not in table:
        raise ConfigError(f"{section}.{name}: no such {kind}; expected one of: {', '.join(table)}")
    return table[name]


TOP_LEVEL = ("ray", "mlflow", "data", "featurize", "train", "experiments", "tune", "evaluate")


def parse_params(raw: Mapping, path: Path = Path("params.yaml")) -> Params:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    unknown = [k for k in raw if k not in TOP_LEVEL]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section; expected one of: {', '.join(TOP_LEVEL)}")
    ray_p = build(RayParams, raw.get("ray"), "ray")
    mlflow_p = build(MlflowParams, raw.get("mlflow"), "mlflow")

    data = raw.get("data") or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"data: expected a mapping, got {data!r}")
    unknown = [k for k in data if k not in ("seed", "val_fraction", "test_fraction", "datasets")]
    if unknown:
        raise ConfigError(f"data.{unknown[0]}: unknown key; expected one of: seed, val_fraction, test_fraction, datasets")
    seed = coerce(data.get("seed", 0), int, "data.seed")
    val_fraction = coerce(data.get("val_fraction", 0.1), float, "data.val_fraction")
    test_fraction = coerce(data.get("test_fraction", 0.2), float, "data.test_fraction")
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < v < 0.5:
            raise ConfigError(f"data.{name}: expected a fraction in (0, 0.5), got {v!r}")
    ds_raw = data.get("datasets") or {}
    if not isinstance(ds_raw, Mapping) or not ds_raw:
        raise ConfigError("data.datasets: expected a non-empty mapping of dataset name -> source")
    datasets = {name: build_source(name, cfg, f"data.datasets.{name}") for name, cfg in ds_raw.items()}

    train_defaults = raw.get("train") or {}
    if not isinstance(train_defaults, Mapping):
        raise ConfigError(f"train: expected a mapping, got {train_defaults!r}")
    build(TrainParams, train_defaults, "train")  # the defaults alone must be valid too
    exp_raw = raw.get("experiments") or {}
    if not isinstance(exp_raw, Mapping):
        raise ConfigError(f"experiments: expected a mapping, got {exp_raw!r}")
    experiments = {n: build_experiment(n, e, train_defaults, datasets) for n, e in exp_raw.items()}

    tune_raw = raw.get("tune") or {}
    if not isinstance(tune_raw, Mapping) or any(k != "sweeps" for k in tune_raw):
        raise ConfigError("tune: expected a mapping with the single key 'sweeps'")
    sweeps_raw = tune_raw.get("sweeps") or {}
    if not isinstance(sweeps_raw, Mapping):
        raise ConfigError(f"tune.sweeps: expected a mapping, got {sweeps_raw!r}")
    sweeps = {n: build_sweep(n, s, experiments) for n, s in sweeps_raw.items()}

    evaluate = build(EvaluateParams, raw.get("evaluate"), "evaluate")
    featurize = build(FeaturizerConfig, raw.get("featurize"), "featurize")
    return Params(
        raw=dict(raw), ray=ray_p, mlflow=mlflow_p, datasets=datasets, data_seed=seed,
        val_fraction=val_fraction, test_fraction=test_fraction, experiments=experiments,
        sweeps=sweeps, evaluate=evaluate, featurize=featurize, path=Path(path),
    )


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; every problem is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; expected the pipeline's params.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    return parse_params(raw or {}, path)

