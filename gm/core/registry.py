"""Name -> implementation registries, filled by decorators (never string switches)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

T = TypeVar("T")


class Registry(dict):
    """A named mapping whose lookups fail with the list of known names."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = obj
            try:
                obj.registry_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorate

    def get_or_fail(self, name: str, where: str = ""):
        if name not in self:
            known = ", ".join(sorted(self)) or "none"
            at = f"{where}: " if where else ""
            raise KeyError(f"{at}unknown {self.kind} {name!r}; expected one of: {known}")
        return self[name]


@dataclass(frozen=True)
class Metric:
    """A registered metric: `fn` returns flat {name: float}, and evaluation calls it with
    fn(**{param: <input named consumes[param]>}) on data of the `kinds` it applies to ("toy",
    "image"), whenever every input it consumes is available (gm.evaluation.evaluation_inputs)."""

    name: str
    fn: Callable[..., dict[str, float]]
    consumes: Mapping[str, str]  # fn's parameter -> the evaluation input passed to it
    kinds: tuple[str, ...]

    def __post_init__(self):
        params = inspect.signature(self.fn).parameters
        for p in self.consumes:
            if p not in params:
                raise ValueError(f"metric {self.name!r}: {self.fn.__name__} has no parameter {p!r}")
        for p in params.values():
            if p.default is p.empty and p.name not in self.consumes:
                raise ValueError(f"metric {self.name!r}: parameter {p.name!r} of {self.fn.__name__} "
                                 "has no default and consumes no input")
        if not self.kinds:
            raise ValueError(f"metric {self.name!r}: expected the data kinds it applies to, got none")


FAMILIES = Registry("model family")
METRICS = Registry("metric")

register_family = FAMILIES.register


def register_metric(name: str, *, consumes: Mapping[str, str], kinds: tuple[str, ...]) -> Callable[[T], T]:
    """Register the decorated function as metric `name` (see Metric); the function is returned
    as it is, to be called directly too."""

    def decorate(fn: T) -> T:
        METRICS.register(name)(Metric(name, fn, dict(consumes), tuple(kinds)))  # type: ignore[arg-type]
        return fn

    return decorate
