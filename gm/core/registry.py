"""Name -> implementation registries, filled by decorators (never string switches)."""

from __future__ import annotations

from typing import Callable, TypeVar

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


FAMILIES = Registry("model family")
METRICS = Registry("metric")

register_family = FAMILIES.register
register_metric = METRICS.register
