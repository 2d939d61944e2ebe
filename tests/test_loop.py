"""The step loop's learning-rate schedules (closed forms; resumable because stateless)."""

from __future__ import annotations

import math

import pytest
import torch

import gm.models  # noqa: F401  (fills the registry)
from gm.core.config import build
from gm.models.base import build_model
from gm.core.registry import FAMILIES
from gm.training.engine import Stepper, lr_factor
from tests.helpers import TOY


@pytest.mark.parametrize("schedule,step,expect", [
    ("constant", 0, 1.0), ("constant", 70, 1.0),
    ("linear", 0, 1.0), ("linear", 25, 0.75), ("linear", 100, 0.0), ("linear", 150, 0.0),
    ("cosine", 0, 1.0), ("cosine", 50, 0.5), ("cosine", 100, 0.0),
    ("cosine", 25, (1 + math.cos(math.pi / 4)) / 2),
])
def test_lr_factor_closed_forms(schedule, step, expect):
    assert lr_factor(schedule, step, 100) == pytest.approx(expect, abs=1e-12)


def test_unknown_schedule_names_the_field():
    with pytest.raises(ValueError, match="lr_schedule: expected"):
        lr_factor("step", 1, 10)


def test_stepper_sets_every_group_lr_from_the_step_alone():
    spec = TOY
    config = build(FAMILIES["wgan_gp"].config_cls, {"hidden": 8, "depth": 1, "lr_gen": 1e-3, "lr_critic": 4e-3}, "m")
    model = build_model("wgan_gp", config, spec)
    stepper = Stepper(model, spec, torch.device("cpu"), torch.Generator().manual_seed(0), "linear", 200)
    batches = iter(lambda: (torch.randn(8, 2).numpy(), None), None)
    stepper.iteration(batches, 50)
    lrs = {g.name: opt.param_groups[0]["lr"] for g, opt in zip(stepper.groups, stepper.optimizers)}
    assert lrs == pytest.approx({"critic": 4e-3 * 0.75, "gen": 1e-3 * 0.75})
    # A fresh stepper (as after a resume) at the same step lands on the same rates.
    again = Stepper(model, spec, torch.device("cpu"), torch.Generator().manual_seed(0), "linear", 200)
    again.set_learning_rates(50)
    assert [o.param_groups[0]["lr"] for o in again.optimizers] == [o.param_groups[0]["lr"] for o in stepper.optimizers]


def test_checkpoint_selection_picks_lowest_score_or_final_step():
    from types import SimpleNamespace

    from gm.training.driver import select_checkpoint

    def ckpt(step):
        return SimpleNamespace(path=f"checkpoint_{step:08d}")

    c250, c500, c750, c800 = ckpt(250), ckpt(500), ckpt(750), ckpt(800)
    kept = [(c250, {"step": 250, "val_score": 0.9}), (c500, {"step": 500, "val_score": 0.4}),
            (c750, {"step": 750, "val_score": 1.3}), (c800, {"step": 800})]
    result = SimpleNamespace(best_checkpoints=kept, checkpoint=c750, metrics=kept[2][1])
    assert select_checkpoint(result, "best")[0] is c500
    assert select_checkpoint(result, "last")[0] is c750  # the final scored checkpoint, not the best
    # the Result fit() returns lists only the best; the latest comes as result.checkpoint
    live = SimpleNamespace(best_checkpoints=kept[1:2], checkpoint=c750, metrics={"step": 750, "val_score": 1.3})
    assert select_checkpoint(live, "last") == (c750, {"step": 750, "val_score": 1.3})
    assert select_checkpoint(live, "best")[0] is c500
    assert select_checkpoint(SimpleNamespace(best_checkpoints=[], checkpoint=None), "last") == (None, {})
    with pytest.raises(ValueError, match="select"):
        select_checkpoint(result, "median")
