"""Sweep definitions from params.yaml (`tune.sweeps.<name>`), validated before Ray starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from gm.core.config import ConfigError, build, bounded
from gm.training.experiment import ExperimentConfig
from tune.spaces import SPACES
from gm.core.registry import FAMILIES
from gm.models.base import build_model

# domain name -> (number of arguments, or None for a list, Ray Tune constructor name)
DOMAINS = {"uniform": 2, "loguniform": 2, "randint": 2, "choice": None, "grid": None}


@dataclass(frozen=True)
class SweepConfig:
    experiment: str  # the experiment whose config the trials start from
    num_samples: int = bounded(4, gt=0)  # trials (times the grid, if any); PBT: the population
    # asha: successive halving stops weak trials early; pbt: population-based training, weak trials
    # take over a strong trial's checkpoint and perturb its knobs; fifo: every trial runs its full budget
    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    # random: independent draws (and grids); optuna: TPE, a model-based searcher fed by finished trials
    search: Literal["random", "optuna"] = "random"
    grace_period: int = bounded(1, gt=0)  # ASHA: reports (of train.eval_every steps) before a trial may stop
    reduction_factor: int = bounded(2, gt=1)
    perturbation_interval: int = bounded(2, gt=0)  # PBT: reports between exploit/explore decisions
    quantile_fraction: float = bounded(0.25, gt=0, le=0.5)  # PBT: bottom share that copies the top share
    resample_probability: float = bounded(0.25, ge=0, le=1)  # PBT: chance a knob is redrawn, not scaled
    # PBT: false, asynchronous as in Jaderberg et al. 2017 (a member decides when it reaches a perturbation
    # point, among the members still running); true, members wait for one another at each point (a member
    # that finishes before another has reported is then never compared with it)
    synch: bool = False
    max_concurrent_trials: int | None = bounded(None, gt=0)  # None: as many as the cluster's CPUs/GPUs allow
    trial_driver_cpus: float = bounded(0.0, ge=0)  # the trial function only launches the TorchTrainer
    seed: int = 0
    space: dict | None = None  # dotted key -> domain; None: the family's default space (tune/spaces.py)


def extreme_values(kind: str, args) -> list:
    """Every value of a list domain (choice, grid); the lowest and highest of a range (randint's
    upper bound is exclusive)."""
    if DOMAINS[kind] is None:
        return list(args)
    return [args[0], args[1] - 1 if kind == "randint" else args[1]]


def _field_of(exp: ExperimentConfig, key: str, where: str):
    section, _, name = key.partition(".")
    target = {"model": exp.model, "train": exp.train}.get(section)
    fields = {f.name: f for f in dataclasses.fields(target)} if target is not None else {}
    if target is None or name not in fields:
        raise ConfigError(f"{where}: unknown knob {key!r}; expected model.<field> or train.<field> "
                          f"of experiment {exp.name!r}")
    return target, fields[name]


def check_space(space: Mapping, exp: ExperimentConfig, where: str) -> dict:
    """Every knob names a real field, every domain is well formed and inside the field's bounds."""
    out = {}
    for key, domain in space.items():
        at = f"{where}.{key}"
        target, f = _field_of(exp, key, at)
        if not isinstance(domain, Mapping) or len(domain) != 1 or next(iter(domain)) not in DOMAINS:
            raise ConfigError(f"{at}: expected one of {{{', '.join(DOMAINS)}: ...}}, got {domain!r}")
        kind, args = next(iter(domain.items()))
        arity = DOMAINS[kind]
        if not isinstance(args, (list, tuple)) or not args or (arity and len(args) != arity):
            raise ConfigError(f"{at}.{kind}: expected a list of {arity or 'one or more'} values, got {args!r}")
        if arity and not args[0] < args[1]:
            raise ConfigError(f"{at}.{kind}: expected low < high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"{at}.loguniform: expected positive bounds, got {args!r}")
        for v in extreme_values(kind, args):  # each value must build a valid config
            try:
                built = build(type(target), {**dataclasses.asdict(target), f.name: v}, at)
            except ConfigError as e:
                raise ConfigError(f"{at}: value {v!r} is out of range ({str(e).split(': ', 1)[-1]})") from None
            model, train = (built, exp.train) if target is exp.model else (exp.model, built)
            try:
                FAMILIES[exp.family].check_train(model, train)  # the family's cross-section checks
            except ConfigError as e:
                raise ConfigError(f"{at}: value {v!r} conflicts with model.{e}") from None
        out[key] = {kind: list(args)}
    return out


def build_sweep(name: str, raw: Mapping, experiments: Mapping[str, ExperimentConfig]) -> SweepConfig:
    where = f"tune.sweeps.{name}"
    sweep = build(SweepConfig, raw, where)
    if sweep.experiment not in experiments:
        raise ConfigError(f"{where}.experiment: unknown experiment {sweep.experiment!r}; "
                          f"expected one of: {', '.join(experiments)}")
    exp = experiments[sweep.experiment]
    space = sweep.space
    if space is None:
        if exp.family not in SPACES:
            raise ConfigError(f"{where}.space: family {exp.family!r} has no default search space "
                              f"(tune/spaces.py); give one here")
        space = SPACES[exp.family]()
    if not space:
        raise ConfigError(f"{where}.space: expected at least one knob")
    space = check_space(space, exp, f"{where}.space")
    if sweep.scheduler == "pbt" and sweep.search != "random":
        raise ConfigError(f"{where}.search: PBT draws its own population and mutations; expected 'random' "
                          f"with scheduler: pbt, got {sweep.search!r}")
    for key, domain in space.items():
        if "grid" in domain and (sweep.search != "random" or sweep.scheduler == "pbt"):
            raise ConfigError(f"{where}.space.{key}: a grid needs search: random and a scheduler other than "
                              f"pbt; use choice instead")
    return dataclasses.replace(sweep, space=space)


def check_pbt_space(sweep: SweepConfig, exp: ExperimentConfig, spec, where: str) -> None:
    """PBT copies a strong trial's weights into a weak one and then changes its knobs: every knob must
    leave the model's parameter shapes alone (learning rates, penalty weights, β do; widths do not)."""
    import torch

    def shapes(model_cfg) -> dict:
        torch.manual_seed(0)
        return {k: tuple(v.shape) for k, v in build_model(exp.family, model_cfg, spec).state_dict().items()}

    base = shapes(exp.model)
    for key, domain in sweep.space.items():
        section, _, name = key.partition(".")
        if section != "model":
            continue
        for v in extreme_values(*next(iter(domain.items()))):
            if shapes(dataclasses.replace(exp.model, **{name: v})) != base:
                raise ConfigError(f"{where}.space.{key}: value {v!r} changes the model's parameter shapes, which "
                                  f"PBT cannot carry across an exploit; tune it with scheduler asha or fifo")


def to_tune_domain(domain: Mapping) -> Any:
    from ray import tune

    kind, args = next(iter(domain.items()))
    if kind == "grid":
        return tune.grid_search(list(args))
    if kind == "choice":
        return tune.choice(list(args))
    return getattr(tune, kind)(*args)


def apply_overrides(exp_dict: dict, overrides: Mapping[str, Any]) -> dict:
    """ExperimentConfig.to_dict() with dotted `model.x` / `train.y` values replaced."""
    out = {**exp_dict, "model": dict(exp_dict["model"]), "train": dict(exp_dict["train"])}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        out[section][name] = value
    return out
