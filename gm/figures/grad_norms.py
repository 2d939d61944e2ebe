"""WGAN-GP's Figure 1b: critic gradient norms through the layers, clipping against the penalty.

Deep WGAN critics (a 12-layer ReLU MLP without batch norm) are trained on the Swiss roll
(make_swiss_roll(noise=0.25), columns 0 and 2, / 7.5) against a fixed generator; then the
norm of the critic loss' gradient with respect to each layer's weights is measured. With
weight clipping at c ∈ {0.1, 0.01, 0.001} the norms grow or shrink geometrically with
depth (exploding or vanishing); with the two-sided gradient penalty (λ = 10) they stay
within an order of magnitude (Gulrajani et al. 2017, §3 and Fig. 1b).

Drawn by the `figures` stage (python -m pipelines.figures) into reports/figures/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gm.core.config import build
from gm.data.dataspec import DataSpec
from gm.models.base import Batch
from gm.core.registry import FAMILIES
from gm.models._adversarial import critic_grad_norms
from gm.training.engine import apply_step
from gm.figures import axes, save

SETTINGS = (("wgan", {"clip": 0.1}), ("wgan", {"clip": 0.01}), ("wgan", {"clip": 0.001}),
            ("wgan_gp", {"gp_weight": 10.0}))


def swiss_roll(n: int, seed: int) -> torch.Tensor:
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n, noise=0.25, random_state=seed)
    return torch.from_numpy(x[:, [0, 2]] / 7.5).float()  # (n, 2)


def label(family: str, overrides: dict) -> str:
    return f"weight clipping c = {overrides['clip']}" if family == "wgan" else "gradient penalty λ = 10"


def run(seed: int = 0, steps: int = 200, depth: int = 12, hidden: int = 128, batch: int = 256) -> dict:
    """{setting label: per-layer gradient norms (input -> output)} after `steps` critic steps."""
    data = DataSpec(shape=(2,), kind="toy")
    real_all = swiss_roll(20 * batch, seed)
    out = {}
    for family, overrides in SETTINGS:
        torch.manual_seed(seed)
        cls = FAMILIES[family]
        model = cls(build(cls.config_cls, {"depth": depth, "hidden": hidden, "activation": "relu", "z_dim": 2,
                                           **overrides}, family), data)
        critic = model.step_groups()[0]
        opt = critic.make_optimizer()
        rng = np.random.default_rng(seed)
        for _ in range(steps):  # the critic alone, against the fixed (untrained) generator
            x = real_all[rng.integers(0, len(real_all), batch)]
            apply_step(model, critic, opt, model.loss(Batch(x=x), critic.name).loss)
        real = real_all[:batch]
        with torch.no_grad():
            fake = model.generate(batch)
        out[label(family, overrides)] = critic_grad_norms(model, real, fake)
    return out


def plot(result: dict, path: Path) -> Path:
    fig, ax = axes(path, (6, 4))
    for name, norms in result.items():
        ax.plot(range(1, len(norms) + 1), np.log10(np.maximum(norms, 1e-30)), marker="o", label=name)
    return save(fig, ax, path, xlabel="critic layer (input → output)", ylabel="log10 gradient norm",
                title="WGAN critics on the Swiss roll (Gulrajani et al. 2017, Fig. 1b)", dpi=110)
