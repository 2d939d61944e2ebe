"""Typed configs: params.yaml -> validated frozen dataclasses, one-line errors naming the field.

Every section of params.yaml is parsed by `build(cls, mapping, where)`: unknown keys,
wrong types and values outside a field's bounds raise `ConfigError` whose message
names the dotted path of the field (``experiments.vae-digits.model.beta``) and what
is expected. Bounds sit next to the field as metadata (`spec(ge=0)`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml


class ConfigError(ValueError):
    """A bad value in params.yaml (or any config mapping); the message is one line."""


def spec(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, **kw) -> Any:
    """A dataclass field with bounds checked by `build`."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable default: use a tuple or default_factory")
    return field(default=default, metadata=meta, **kw)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is tuple:
        return "a list of " + _type_name(typing.get_args(tp)[0])
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0]
        if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
            return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{where}: unsupported config type {tp!r}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _check_bounds(value: Any, meta: Mapping, where: str) -> None:
    if value is None or not meta:
        return
    items = value if isinstance(value, tuple) else (value,)
    for v in items:
        for key, op, word in (
            ("ge", lambda a, b: a >= b, ">="),
            ("gt", lambda a, b: a > b, ">"),
            ("le", lambda a, b: a <= b, "<="),
            ("lt", lambda a, b: a < b, "<"),
        ):
            if key in meta and not op(v, meta[key]):
                raise ConfigError(f"{where}: expected a value {word} {meta[key]}, got {value!r}")


def build(cls: type, data: Mapping | None, where: str):
    """Build dataclass `cls` from a mapping, validating keys, types and bounds."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key; expected one of: {', '.join(fields) or 'none'}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}"
        if name in data:
            value = _coerce(data[name], hints[name], path)
        elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        else:
            raise ConfigError(f"{path}: missing; expected {_type_name(hints[name])}")
        _check_bounds(value, f.metadata, path)
        kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{where}.{e}") from None
    return obj


def to_dict(obj) -> dict:
    """A config back to plain data (for MLflow params, JSON and checkpoints)."""
    return dataclasses.asdict(obj)


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for MLflow params."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def deep_merge(base: Mapping, override: Mapping) -> dict:
    out = dict(base)
    for k, v in (override or {}).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class RayParams:
    address: str = "local"  # "local" starts an embedded Ray; "auto" or "ray://host:10001" joins a cluster
    num_cpus: int | None = spec(None, gt=0)  # only for a local Ray; None = all cores
    storage_path: str | None = None  # checkpoints; must be shared storage on a cluster. None = <repo>/artifacts/ray

    def validate(self):
        ok = self.address in ("local", "auto") or self.address.startswith(("ray://", "127.", "localhost")) or ":" in self.address
        if not ok:
            raise ConfigError(f"address: expected 'local', 'auto', 'ray://host:port' or 'host:port', got {self.address!r}")


@dataclass(frozen=True)
class MlflowParams:
    tracking_uri: str | None = None  # None = sqlite:///<repo>/mlflow.db (absolute); MLFLOW_TRACKING_URI wins
    experiment: str = "gm"


@dataclass(frozen=True)
class ScalingParams:
    num_workers: int = spec(1, ge=0)  # 0 runs the loop in the driver process (unit tests only)
    use_gpu: bool = False
    cpus_per_worker: float = spec(1.0, gt=0)
    gpus_per_worker: float = spec(1.0, ge=0)  # used only when use_gpu


@dataclass(frozen=True)
class TrainParams:
    steps: int = spec(2000, gt=0)  # iterations of the model's step schedule
    batch_size: int = spec(128, gt=0)  # per worker
    eval_every: int = spec(250, gt=0)  # steps between validation + checkpoint
    val_samples: int = spec(1000, gt=0)  # samples drawn for sample-based validation scores
    seed: int = 0
    seeds: int = spec(1, gt=0)  # replicate runs with seeds seed, seed+1, ...: results as mean ± std
    num_to_keep: int = spec(1, ge=1)  # best checkpoints kept; Ray always keeps the latest as well
    # which checkpoint a run exports and registers: the lowest val_score, or the final one (for models whose
    # validation score disagrees with the benchmark, e.g. W1 on toys favours blurry early GANs over sharp late ones)
    select: Literal["best", "last"] = "best"
    max_failures: int = spec(2, ge=-1)  # worker/node failures survived by resuming from the latest checkpoint
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # every group's lr, from its value to 0 over steps
    data_in_memory: bool = True  # pull each worker's shard once (small data); False streams every epoch
    fail_once_at_step: int | None = spec(None, gt=0)  # fault injection for recovery tests
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
    from gm.registry import MODELS
    import gm.models  # noqa: F401  (fills the registry)

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
        family_cls = MODELS.get_or_fail(raw["family"])
    except KeyError as e:
        raise ConfigError(f"{where}.family: {e.args[0]}") from None
    if raw["dataset"] not in datasets:
        raise ConfigError(
            f"{where}.dataset: unknown dataset {raw['dataset']!r}; expected one of: {', '.join(datasets)}"
        )
    model = build(family_cls.config_cls, raw.get("model"), f"{where}.model")
    train = build(TrainParams, deep_merge(train_defaults, raw.get("train") or {}), f"{where}.train")
    validate_train = getattr(model, "validate_train", None)  # a family's checks against the train section
    if validate_train is not None:
        try:
            validate_train(train)
        except ConfigError as e:
            raise ConfigError(f"{where}.model.{e}") from None
    return ExperimentConfig(name=name, family=raw["family"], dataset=raw["dataset"], model=model, train=train)


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
        """The source config of data.datasets.<name>, or a one-line error listing the known ones."""
        if name not in self.datasets:
            raise ConfigError(f"data.datasets.{name}: no such dataset; expected one of: {', '.join(self.datasets)}")
        return self.datasets[name]

    def experiment(self, name: str) -> ExperimentConfig:
        if name not in self.experiments:
            raise ConfigError(f"experiments.{name}: no such experiment; expected one of: {', '.join(self.experiments)}")
        return self.experiments[name]


TOP_LEVEL = ("ray", "mlflow", "data", "featurize", "train", "experiments", "tune", "evaluate")


def parse_params(raw: Mapping, path: Path = Path("params.yaml")) -> Params:
    from gm.data.sources import build_source
    from gm.evaluation import EvaluateParams
    from gm.featurizer import FeaturizerConfig
    from tune.sweep import build_sweep

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
    seed = _coerce(data.get("seed", 0), int, "data.seed")
    val_fraction = _coerce(data.get("val_fraction", 0.1), float, "data.val_fraction")
    test_fraction = _coerce(data.get("test_fraction", 0.2), float, "data.test_fraction")
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
