"""An exponential moving average of a network's weights (Polyak averaging), kept beside the live ones.

Used by the adversarial families for G (`ema`: Karras et al. 2018, Yazıcı et al. 2019) and by the
autoregressive ones for the whole net (PixelCNN++ evaluates with Polyak-averaged weights, Salimans
et al. 2017, §3). The average lives in buffers of the model (`<prefix>_<i>`, one per parameter, so it
is saved, resumed and exported with it); the live weights train, and `swapped_in` runs a block with
the average in their place.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def ema_decay(target: float, updates: float) -> float:
    """The decay of the next update: min(target, (1 + t)/(10 + t)) after t updates, so the first
    steps (far from any average worth keeping) are weighted in quickly."""
    return min(target, (1.0 + updates) / (10.0 + updates))


def register_average(model: nn.Module, prefix: str, named: dict[str, nn.Parameter]) -> list[str]:
    """A buffer `<prefix>_<i>` on `model` holding a copy of each parameter of `named` (the average
    starts at θ_0) and a counter `<prefix>_updates`; returns the parameters' names, in buffer order."""
    for i, p in enumerate(named.values()):
        model.register_buffer(f"{prefix}_{i}", p.detach().clone())
    model.register_buffer(f"{prefix}_updates", torch.zeros((), dtype=torch.long))
    return list(named)


def averaged_pairs(model: nn.Module, prefix: str, names: list[str], live: dict[str, nn.Parameter]
                   ) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(live parameter, its average) for each name registered by `register_average`."""
    return [(live[name], getattr(model, f"{prefix}_{i}")) for i, name in enumerate(names)]


@torch.no_grad()
def update_average(model: nn.Module, prefix: str, pairs: list[tuple[nn.Parameter, torch.Tensor]],
                   target: float) -> None:
    """average <- d·average + (1 − d)·θ, d = ema_decay(target, updates so far)."""
    counter = getattr(model, f"{prefix}_updates")
    decay = ema_decay(target, float(counter))
    for p, e in pairs:
        e.lerp_(p.detach(), 1.0 - decay)
    counter += 1


@contextlib.contextmanager
def swapped_in(pairs: list[tuple[nn.Parameter, torch.Tensor]]):
    """The averages in place of the live weights inside the block; the live ones back afterwards."""
    live = [p.detach().clone() for p, _ in pairs]
    with torch.no_grad():
        for p, e in pairs:
            p.copy_(e)
    try:
        yield
    finally:
        with torch.no_grad():
            for (p, _), v in zip(pairs, live):
                p.copy_(v)
