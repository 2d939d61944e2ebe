"""The step engine: one iteration of a family's step schedule, and data-parallel gradient averaging.

Used by the Ray Train worker loop (gm/training/loop.py), the benchmarks and the tests alike.
"""

from __future__ import annotations

import math
import time
from typing import Iterator

import torch
import torch.distributed as dist

from gm.core.dist import world
from gm.data.dataspec import DataSpec
from gm.models.base import Batch, GenerativeModel, StepGroup


class Diverged(RuntimeError):
    """A loss became NaN or infinite."""


def sync_initial_state(model: torch.nn.Module) -> None:
    """Every worker starts from rank 0's weights."""
    if world()[1] > 1:
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params) -> None:
    """Data parallelism by hand: all-reduce the gradients of the group being stepped.

    DDP assumes one forward/backward per step over every parameter; adversarial
    schedules step disjoint groups several times per iteration, so we reduce
    exactly the group we are about to step.
    """
    rank, size = world()
    if size == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= size


def all_finite(loss: torch.Tensor) -> bool:
    """True when the loss is finite on every worker (so all of them stop together)."""
    ok = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
    if world()[1] > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


# ------------------------------------------------------------------------- the step loop


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The multiplier of the base learning rate at `step` of `total`: 1 throughout ("constant"),
    1 - step/total ("linear") or (1 + cos(π step/total)) / 2 ("cosine"); both decays reach 0
    at `total`."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"lr_schedule: expected 'constant', 'linear' or 'cosine', got {schedule!r}")


def apply_step(model: GenerativeModel, group: StepGroup, optimizer: torch.optim.Optimizer,
               loss: torch.Tensor) -> None:
    """One optimizer step of `group` on `loss`: backward, the gradients averaged over data-parallel
    workers (a no-op alone), the step, then the family's after-step hook (e.g. WGAN's clipping)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(group.params)
    optimizer.step()
    model.after_step(group.name)


class Stepper:
    """Runs the family's step schedule: for each group, `repeats` optimizer steps."""

    def __init__(self, model: GenerativeModel, spec: DataSpec, device: torch.device, generator: torch.Generator,
                 lr_schedule: str = "constant", total_steps: int = 1):
        self.model, self.spec, self.device, self.generator = model, spec, device, generator
        self.groups = model.step_groups()
        self.optimizers = [g.make_optimizer() for g in self.groups]
        self.lr_schedule, self.total_steps = lr_schedule, total_steps

    def set_learning_rates(self, step: int) -> None:
        """Every group's lr at `step`: its configured lr times the schedule's factor.

        Stateless (a function of the step alone), so a run resumed from a checkpoint
        continues on the same schedule.
        """
        factor = lr_factor(self.lr_schedule, step, self.total_steps)
        for group, opt in zip(self.groups, self.optimizers):
            for pg in opt.param_groups:
                pg["lr"] = group.lr * factor

    def to_batch(self, xy) -> Batch:
        x, y = xy
        x = torch.from_numpy(x).to(self.device)
        x = self.spec.to_model(x, generator=self.generator)
        return Batch(x=x, y=torch.from_numpy(y).to(self.device) if y is not None else None)

    def iteration(self, batches: Iterator, step: int) -> dict[str, float]:
        logs: dict[str, float] = {}
        self.model.train()
        self.set_learning_rates(step)
        for group, opt in zip(self.groups, self.optimizers):
            for _ in range(group.repeats):
                out = self.model.loss(self.to_batch(next(batches)), group.name)
                if not all_finite(out.loss):
                    raise Diverged(f"step {step}: loss of group {group.name!r} is {out.loss.item()}")
                apply_step(self.model, group, opt, out.loss)
            logs[f"loss_{group.name}"] = float(out.loss.detach())
            logs.update(out.logs)
        return logs

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)


def run_steps(stepper: Stepper, batches: Iterator, start: int, stop: int) -> tuple[dict, float]:
    """Steps [start, stop); returns the last logs and the seconds spent stepping."""
    t0 = time.perf_counter()
    logs: dict = {}
    for step in range(start, stop):
        logs = stepper.iteration(batches, step)
    return logs, time.perf_counter() - t0
