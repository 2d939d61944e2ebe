"""The step engine: one iteration of a family's step schedule, data-parallel gradient averaging in
buckets, divergence detection without a host sync per step, precision and compilation.

Used by the Ray Train worker loop (gm/training/loop.py), the benchmarks and the tests alike.

Data parallelism (`GradientReducer`). Adversarial schedules step disjoint groups several times per
iteration, and a group's loss may also leave gradients on other groups' parameters (the generator's
loss runs through the critic), so DDP's one-forward-one-backward model does not fit. Each step group
gets its own reducer: its parameters are laid out in flat buckets of at most `BUCKET_BYTES`
(reverse registration order, as DDP, since backward reaches the last layers first); a per-parameter
post-accumulate-grad hook copies a gradient into its bucket as soon as it is accumulated, and a
bucket whose gradients are all in is all-reduced asynchronously at once (buckets are launched in
index order, so every rank issues the same collectives in the same order). Only the reducer of the
group being stepped is armed: gradients that another group's backward leaves behind are neither
reduced nor stepped. Before the optimizer step the handles are waited on and the summed buckets,
divided by the world size, copied back: gradients are averaged, as the batch-mean losses of one
worker with the whole batch would have them. A parameter no worker's loss reached keeps no gradient,
as with one worker (each bucket carries one "used" count per parameter). With one worker there is
no reducer, no hook and no collective.

No host sync per step. Losses and logs stay on the device: each optimizer step adds its loss and
its logs (`ModelOutput.values`: 0-d tensors or floats) to per-segment sums, and whether the loss
was finite is recorded on the device (`torch.where`): the code of the first non-finite optimizer
step (its iteration and its slot in the schedule) and that loss. `run_steps` reads the record on
the host every `FINITE_CHECK_EVERY` iterations and at the end of its segment (with several workers
after one all-reduce (MIN) of the record, so all of them stop together), and converts the
segment's means to floats once, with the record, in one transfer. A diverged run raises `Diverged`
naming the step, the group and the repeat (the loop then writes no checkpoint); at most
`FINITE_CHECK_EVERY` iterations are wasted after a divergence.

Precision (`precision="bf16"`): the loss of each group is computed under
`torch.autocast(device_type, dtype=torch.bfloat16)`; parameters, gradients and optimizer state stay
fp32 (autocast, not .half()), and backward runs outside the autocast region. These computations are
fp32 islands (inputs cast with `gm.nn.precision.fp32`, or autocast disabled), because a sum of many
terms or a log-density in bfloat16 (8 significant bits) loses the likelihood's digits:
- observation heads' log-likelihoods (`gm.nn.observation`: Gaussian, Bernoulli, categorical
  log-softmax, the discretized logistic mixture and its logsumexp), summed over dimensions in fp32;
- the autoregressive families' likelihoods (`gm.nn.pixelcnn.PixelCNN.log_prob`,
  `gm.models.pixelcnn`: the level log-softmax and the continuous mixture's logsumexp,
  `gm.models.pixelcnnpp`: the mixture over components);
- latent-variable models (`gm.models._latent`): the reparameterised draw and log q(z|x), the
  Gaussian KL, the prior log-density and the IWAE log-mean-exp;
- flows: the prior log-density and the log-determinant (`gm.models._flow`), every coupling's
  scale and shift and its log-det sum (`gm.flows.image.AffineCoupling`, `AdditiveCoupling`,
  `FactorOut`; `gm.flows.layers` MAF/IAF layers and amortised planar/radial parameters), and the
  invertible 1×1 convolution as a whole (`InvConv1x1`: its weight from the LU factors and its
  product, autocast off), so the data path of a flow stays fp32 between conditioner networks;
- adversarial models (`gm.models._adversarial`): the critic's output and features (so the
  Wasserstein estimate, the GAN losses, feature matching and the f-divergence terms are fp32), and
  the gradient penalty as a whole (WGAN-GP, Cramér GAN: the interpolates, the critic on them with
  autocast off, its input gradient, that gradient's own backward and its norm: a penalty on the
  gradient of a bfloat16 critic was off by 1e-2 relative); the AAE's and AVB's discriminator logits.
The networks' matmuls and convolutions (the bulk of the work) run in bfloat16. Logs that families
still read with .item() inside `loss` (AAE, AVB, WAE, CatVAE, VQ-VAE; VQ-VAE also reads its
codebook and step buffers) and an annealed instance noise (it reads the critic's step count) still
sync the host per step on those families.

Compilation (`compile=True`): each group's loss computation (`model.loss` under the autocast) is
`torch.compile`d; backward and the optimizer step stay eager. `Stepper.graph_breaks` is the number of
graph breaks dynamo counted since the stepper was made (`torch._dynamo.utils.counters`).

Channels-last (`channels_last`): on CUDA and on CPU, a model with 2-D convolutions and its image batches
are put in `torch.channels_last` memory format (measured on the 2-core CPU, one thread, steps/s plain ->
channels-last: RealNVP digits 23.6 -> 29.7, Glow 13.4 -> 15.0, DCGAN 91 -> 97, PixelCNN++ 5.6 -> 6.3,
PixelCNN 18.4 -> 18.9); a no-op on other devices unless forced.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from gm.core.dist import world
from gm.data.dataspec import DataSpec
from gm.models.base import Batch, GenerativeModel, StepGroup

BUCKET_BYTES = 25 * 2**20  # the gradient bucket size (DDP's default, 25 MB)
FINITE_CHECK_EVERY = 50  # iterations between reads of the divergence record within a segment
PRECISIONS = ("fp32", "bf16")
COMPILE_BACKEND = "inductor"
_FINITE = 2**62  # the divergence record's value while every loss was finite


class Diverged(RuntimeError):
    """A loss became NaN or infinite."""


def sync_initial_state(model: torch.nn.Module) -> None:
    """Every worker starts from rank 0's weights."""
    if world()[1] > 1:
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


# ---------------------------------------------------------------------- gradient averaging


@dataclass(frozen=True)
class Slot:
    """Where one parameter's gradient lives: bucket `bucket`, elements [offset, offset + numel)."""

    param: int  # index into the reducer's parameters
    bucket: int
    offset: int
    numel: int
    index: int  # its place in the bucket (its "used" count follows the bucket's gradients)


def plan_buckets(params: Sequence[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> list[list[Slot]]:
    """The bucket layout of `params`: in reverse order (backward reaches the last layers first),
    a new bucket when the device or dtype changes or the next parameter would overflow
    `bucket_bytes` (a parameter larger than that gets a bucket of its own). Every rank must get
    the same layout: it depends on the parameters' shapes alone."""
    buckets: list[list[Slot]] = []
    key, used = None, 0
    for i in reversed(range(len(params))):
        p = params[i]
        nbytes = p.numel() * p.element_size()
        if not buckets or (p.device, p.dtype) != key or (used + nbytes > bucket_bytes and used > 0):
            buckets.append([])
            key, used = (p.device, p.dtype), 0
        offset = sum(s.numel for s in buckets[-1])
        buckets[-1].append(Slot(i, len(buckets) - 1, offset, p.numel(), len(buckets[-1])))
        used += nbytes
    return buckets


class GradientReducer:
    """Averages one step group's gradients over the data-parallel workers, in flat buckets
    all-reduced asynchronously as soon as their gradients are accumulated (see the module doc).

    `arm()` before the group's backward, `finish()` after it and before the optimizer step. With
    `hooks=False` nothing is registered and `reduce_now()` reduces the gradients present."""

    def __init__(self, params: Sequence[nn.Parameter], bucket_bytes: int = BUCKET_BYTES, hooks: bool = True):
        self.params = [p for p in dict.fromkeys(params) if p.requires_grad]  # unique, in order
        self.world = world()[1]
        self.buckets = plan_buckets(self.params, bucket_bytes)
        self.slots = {s.param: s for b in self.buckets for s in b}
        # one flat buffer per bucket: the gradients, then one "used" count per parameter of the bucket
        self.buffers = []
        for b in self.buckets:
            p = self.params[b[0].param]
            self.buffers.append(torch.zeros(sum(s.numel for s in b) + len(b), dtype=p.dtype, device=p.device))
        self.armed = False
        self._reset()
        self._hooks = [p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(self.params)] \
            if hooks else []

    def _reset(self) -> None:
        self.ready = [False] * len(self.params)
        self.pending = [len(b) for b in self.buckets]
        self.handles: list = [None] * len(self.buckets)
        self.launched = 0

    def _hook(self, i: int):
        def ready(p: torch.Tensor) -> None:
            if self.armed and not self.ready[i]:
                self._fill(i, p.grad)
        return ready

    def _fill(self, i: int, grad: torch.Tensor | None) -> None:
        """Copy parameter i's local gradient (None: unused here) into its slot, then launch every
        bucket that is complete, in order."""
        s = self.slots[i]
        buf = self.buffers[s.bucket]
        used = buf[buf.numel() - len(self.buckets[s.bucket]) + s.index]
        if grad is None:
            buf[s.offset:s.offset + s.numel].zero_()
            used.zero_()
        else:
            buf[s.offset:s.offset + s.numel].copy_(grad.reshape(-1))
            used.fill_(1)
        self.ready[i] = True
        self.pending[s.bucket] -= 1
        while self.launched < len(self.buckets) and self.pending[self.launched] == 0:
            self.handles[self.launched] = dist.all_reduce(self.buffers[self.launched], async_op=True)
            self.launched += 1

    def arm(self) -> None:
        self._reset()
        self.armed = True

    def finish(self) -> None:
        """Reduce what no hook delivered (parameters this worker's loss did not reach), wait for
        every bucket and write the averaged gradients back."""
        for i, done in enumerate(self.ready):
            if not done:
                self._fill(i, None)
        self.armed = False
        for b, (slots, handle) in enumerate(zip(self.buckets, self.handles)):
            handle.wait()
            buf = self.buffers[b]
            counts = buf[buf.numel() - len(slots):]
            buf.div_(self.world)
            for s in slots:
                p = self.params[s.param]
                grad = buf[s.offset:s.offset + s.numel].view_as(p)
                if p.grad is not None:
                    p.grad.copy_(grad)
                else:
                    # Unused here: a gradient only if some worker used it (as one worker with the
                    # whole batch would have). One read of the count, only for such parameters.
                    if bool(counts[s.index] > 0):
                        p.grad = grad.clone()
        self._reset()

    def reduce_now(self) -> None:
        """Average the gradients present now (no hooks): the synchronous path."""
        self._reset()
        self.armed = True
        for i, p in enumerate(self.params):
            self._fill(i, p.grad)
        self.finish()

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def average_gradients(params, bucket_bytes: int = BUCKET_BYTES) -> None:
    """All-reduce (average) the gradients of `params` now, in flat buckets; a no-op alone."""
    if world()[1] == 1:
        return
    GradientReducer(params, bucket_bytes, hooks=False).reduce_now()


# ------------------------------------------------------------------------- channels-last


CHANNELS_LAST_DEVICES = ("cuda", "cpu")  # where channels-last convolutions were measured faster


def wants_channels_last(model: nn.Module, device: torch.device, force: bool = False) -> bool:
    """Channels-last pays on CUDA and CPU for models with 2-D convolutions; `force` asks for it anywhere."""
    return ((force or torch.device(device).type in CHANNELS_LAST_DEVICES)
            and any(isinstance(m, nn.Conv2d) for m in model.modules()))


def to_channels_last(obj, device: torch.device, force: bool = False):
    """A module or an image batch (B, C, H, W) in channels-last memory format on CUDA or CPU (or when
    forced); anything else, or on another device, unchanged. Modules are converted in place."""
    if not (force or torch.device(device).type in CHANNELS_LAST_DEVICES):
        return obj
    if isinstance(obj, nn.Module):
        return obj.to(memory_format=torch.channels_last) if wants_channels_last(obj, device, force) else obj
    if isinstance(obj, torch.Tensor) and obj.dim() == 4:
        return obj.contiguous(memory_format=torch.channels_last)
    return obj


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
               loss: torch.Tensor, reducer: GradientReducer | None = None) -> None:
    """One optimizer step of `group` on `loss`: backward, the gradients averaged over data-parallel
    workers (by `reducer` as backward goes, else all at once after it; a no-op alone), the step,
    then the family's after-step hook (e.g. WGAN's clipping)."""
    optimizer.zero_grad(set_to_none=True)
    if reducer is not None:
        reducer.arm()
    loss.backward()
    if reducer is not None:
        reducer.finish()
    else:
        average_gradients(group.params)
    optimizer.step()
    model.after_step(group.name)


def graph_break_count() -> int:
    """Graph breaks dynamo has counted in this process."""
    from torch._dynamo.utils import counters  # torch's own module: loading dynamo costs a second

    return int(sum(counters["graph_break"].values()))


class Stepper:
    """Runs the family's step schedule: for each group, `repeats` optimizer steps.

    `precision`: "fp32" or "bf16" (autocast of each loss; see the module doc); `compile`:
    torch.compile each group's loss (`compile_backend`); `bucket_bytes`: the gradient bucket size
    with several workers; `channels_last`: None for the default (a conv model on CUDA or CPU), or a bool.
    """

    def __init__(self, model: GenerativeModel, spec: DataSpec, device: torch.device, generator: torch.Generator,
                 lr_schedule: str = "constant", total_steps: int = 1, *, precision: str = "fp32",
                 compile: bool = False, bucket_bytes: int = BUCKET_BYTES, channels_last: bool | None = None,
                 compile_backend: str = COMPILE_BACKEND):
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected 'fp32' or 'bf16', got {precision!r}")
        self.model, self.spec, self.device, self.generator = model, spec, torch.device(device), generator
        self.groups = model.step_groups()
        self.optimizers = [g.make_optimizer() for g in self.groups]
        self.lr_schedule, self.total_steps = lr_schedule, total_steps
        self.precision = precision
        alone = world()[1] == 1  # no reducer, no hook, no collective
        self.reducers: list[GradientReducer | None] = [
            None if alone else GradientReducer(g.params, bucket_bytes) for g in self.groups]
        self.channels_last = wants_channels_last(model, self.device) if channels_last is None else channels_last
        if self.channels_last:
            to_channels_last(model, self.device, force=True)
        # the schedule's optimizer steps in order, (group index, repeat): the divergence record's slots
        self.schedule = [(gi, r) for gi, g in enumerate(self.groups) for r in range(g.repeats)]
        self._loss = self._group_loss
        self.compiled = compile
        self._breaks_before = 0
        if compile:
            self._breaks_before = graph_break_count()
            self._loss = torch.compile(self._group_loss, backend=compile_backend)
        self._reset_record()
        self._reset_sums()

    # -- the schedule --------------------------------------------------------------------
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
        x = torch.from_numpy(x)
        y = torch.from_numpy(y) if y is not None else None
        if self.device.type == "cuda":  # pinned and asynchronous: no wait for the device per batch
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True) if y is not None else None
        else:
            x, y = x.to(self.device), (y.to(self.device) if y is not None else None)
        x = self.spec.to_model(x, generator=self.generator)
        return Batch(x=x, y=y)

    def _group_loss(self, x: torch.Tensor, y: torch.Tensor | None, group: str):
        """(loss, logs) of `group` on the batch (x, y), under the precision's autocast."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model.loss(Batch(x=x, y=y), group)
        return out.loss, out.values

    def group_loss(self, batch: Batch, group: str):
        """(the loss, its logs: 0-d tensors or floats) of `group` on `batch`: eager or compiled."""
        x = to_channels_last(batch.x, self.device, force=True) if self.channels_last else batch.x
        return self._loss(x, batch.y, group)

    def iteration(self, batches: Iterator, step: int) -> dict:
        """One iteration of the schedule at `step`; returns its logs (`loss_<group>` and the model's
        logs of each group's last optimizer step) as they are, on the device: no host sync."""
        logs: dict = {}
        self.model.train()
        self.set_learning_rates(step)
        slot = 0
        for gi, (group, opt) in enumerate(zip(self.groups, self.optimizers)):
            for _ in range(group.repeats):
                loss, values = self.group_loss(self.to_batch(next(batches)), group.name)
                self._record(loss, step * len(self.schedule) + slot)
                self._accumulate(f"loss_{group.name}", loss.detach())
                for k, v in values.items():
                    self._accumulate(k, v)
                apply_step(self.model, group, opt, loss, self.reducers[gi])
                slot += 1
            logs[f"loss_{group.name}"] = loss.detach()
            logs.update(values)
        return logs

    # -- the device-side divergence record -------------------------------------------------
    def _reset_record(self) -> None:
        self._first_bad = torch.full((), _FINITE, dtype=torch.int64, device=self.device)
        self._bad_loss = torch.zeros((), dtype=torch.float32, device=self.device)

    def _record(self, loss: torch.Tensor, code: int) -> None:
        """Keep the code of the first non-finite loss and the loss itself, on the device."""
        new = ~torch.isfinite(loss.detach()) & (self._first_bad == _FINITE)
        self._first_bad = torch.where(new, code, self._first_bad)
        self._bad_loss = torch.where(new, loss.detach().float(), self._bad_loss)

    def _record_all(self) -> torch.Tensor:
        """The first non-finite code over every worker (one all-reduce alone)."""
        first = self._first_bad.clone()
        if world()[1] > 1:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        return first

    def _raise_if_bad(self, first: int, local: bool = False) -> None:
        if first == _FINITE:
            return
        step, slot = divmod(first, len(self.schedule))
        gi, repeat = self.schedule[slot]
        group = self.groups[gi]
        mine = int(self._first_bad) == first
        value = self._bad_loss.clone() if mine else torch.zeros((), device=self.device)
        if world()[1] > 1 and not local:  # only after a divergence: the loss from the worker that had it
            dist.all_reduce(value)
        where = f" ({group.name} step {repeat + 1} of {group.repeats})" if group.repeats > 1 else ""
        self._reset_record()
        raise Diverged(f"step {step}: loss of group {group.name!r} is {float(value)}{where}")

    def check_finite(self) -> None:
        """Raise Diverged if a loss since the last check was not finite on any worker (every worker
        calls it at the same points: one all-reduce and one host read)."""
        self._raise_if_bad(int(self._record_all()))

    # -- the segment's logs ------------------------------------------------------------------
    def _reset_sums(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {}
        self._counts: dict[str, int] = {}

    def _accumulate(self, key: str, value) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().float()
        self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._counts[key] = self._counts.get(key, 0) + 1

    def segment_logs(self) -> dict[str, float]:
        """Check the divergence record and return the means of the logs since the last call, as
        floats: one all-reduce (several workers) and one transfer to the host."""
        first = self._record_all()
        tensors = {k: v for k, v in self._sums.items() if isinstance(v, torch.Tensor)}
        values = torch.stack([first.double(), *(v.to(first.device, torch.float64) for v in tensors.values())]).tolist()
        self._raise_if_bad(int(values[0]))
        out = {k: float(v) / self._counts[k] for k, v in self._sums.items() if k not in tensors}
        out.update({k: v / self._counts[k] for k, v in zip(tensors, values[1:])})
        self._reset_sums()
        return dict(sorted(out.items()))

    @property
    def graph_breaks(self) -> int:
        """Graph breaks counted since this stepper was made (0 without `compile`)."""
        return graph_break_count() - self._breaks_before if self.compiled else 0

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)


def run_steps(stepper: Stepper, batches: Iterator, start: int, stop: int) -> tuple[dict, float]:
    """Steps [start, stop); returns the means of the losses and logs over the segment's optimizer
    steps (floats) and the seconds spent stepping. Raises Diverged if a loss was not finite: the
    device-side record is read every FINITE_CHECK_EVERY iterations and at the end."""
    t0 = time.perf_counter()
    stepper._reset_sums()
    try:
        for step in range(start, stop):
            stepper.iteration(batches, step)
            if (step - start + 1) % FINITE_CHECK_EVERY == 0 and step + 1 < stop:
                stepper.check_finite()
    except Diverged:
        raise
    except Exception as e:  # a failure after a non-finite loss is the divergence (this worker's record)
        first = int(stepper._first_bad)
        if first != _FINITE:
            stepper._raise_if_bad(first, local=True)
        raise e
    logs = stepper.segment_logs()
    return logs, time.perf_counter() - t0
