"""The step engine (gm.training.engine): bucketed data-parallel gradient averaging against one
worker with the whole batch, the device-side divergence record, the segment's logs, host reads per
segment, and channels-last.

The data-parallel tests start 2 gloo workers with torch.multiprocessing (no Ray) once per module;
each worker runs every case and saves what it got, and the tests compare against one process.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.overrides import TorchFunctionMode

import gm.models  # noqa: F401  (fills the registry)
from gm.core import numerics
from gm.core.config import build
from gm.core.dist import world
from gm.core.registry import FAMILIES
from gm.data.dataspec import DataSpec
from gm.flows.image import ActNorm
from gm.models.base import Batch, GenerativeModel
from gm.training import engine
from gm.training.engine import (
    FINITE_CHECK_EVERY, Diverged, GradientReducer, Slot, Stepper, plan_buckets, run_steps, sync_initial_state,
    to_channels_last, wants_channels_last,
)
from tests.helpers import TOY, make_batch, perturb

B = 8  # rows per worker; one worker gets 2B
ITERATIONS = 3
BUCKET_BYTES = 2048  # small: several buckets, some holding several parameters
CASES = {  # family: (data, small config); wgan_gp keeps its n_critic = 5 (two groups, critic 5 times per iteration)
    "wgan_gp": (TOY, {"hidden": 16, "depth": 2, "z_dim": 2, "lr_gen": 1e-3, "lr_critic": 1e-3}),
    "vae": (TOY, {"hidden": 16, "depth": 2, "z_dim": 2}),
    "realnvp": (TOY, {"n_layers": 4, "hidden": 16, "depth": 1}),  # with ActNorm layers
}
WRONG = "vae"  # the case also run with a bucket layout that differs between the ranks


class BatchStepper(Stepper):
    """The training loop's Stepper fed model-space Batch objects."""

    def to_batch(self, batch: Batch) -> Batch:
        return batch


def model_for(family: str) -> GenerativeModel:
    data, config = CASES[family]
    cls = FAMILIES[family]
    torch.manual_seed(0)
    model = cls(build(cls.config_cls, config, family), data)
    perturb(model, 0.05, seed=1)  # zero-initialised output layers would hide a wrong gradient
    if any(isinstance(m, ActNorm) for m in model.modules()):
        # ActNorm's data-dependent init, here from a batch of its own: initialised from the first
        # training batch, the last ActNorm's bias has a gradient of rounding noise at the first step
        # (the batch's mean of z, which that init makes 0), which Adam scales up to ~lr·0.05
        with torch.no_grad():
            model.train()
            model.loss(make_batch(data, 2 * B, seed=99), "flow")
    return model


def full_batches(family: str) -> list[Batch]:
    """Every batch the schedule needs for ITERATIONS iterations, 2B rows each: the one worker's batches."""
    data, _ = CASES[family]
    per_iteration = sum(g.repeats for g in model_for(family).step_groups())
    return [make_batch(data, 2 * B, seed=100 + i) for i in range(ITERATIONS * per_iteration)]


def rows(batch: Batch, rank: int, size: int) -> Batch:
    """Worker `rank`'s rows of the whole batch: rows rank·B:(rank + 1)·B when 2 workers share 2B."""
    n = batch.x.shape[0] // size
    return Batch(x=batch.x[rank * n:(rank + 1) * n], y=None if batch.y is None else batch.y[rank * n:(rank + 1) * n])


# --------------------------------------------------------------------------- matching noise


class RowNoise:
    """Noise keyed by (draw number, global row), so that 2 workers with B rows each draw exactly
    the noise one worker with their 2B rows draws.

    The k-th draw of shape (n, ...) on rank r of W is rows r·n:(r + 1)·n of a (W·n, ...) draw from
    a generator seeded with k, which is what one worker (W = 1) with the whole batch of W·n rows
    draws for its k-th call. Both set-ups make the same calls in the same order (the same model
    code on the same schedule). `patched` installs it over the product's seeded-noise functions
    (gm.core.numerics.randn and .rand) in every gm module that imported them, which covers every
    draw in these families' training losses (the generator's z, the reparameterised ε, the
    gradient penalty's interpolation weights); each of them has the batch row as its first dim.
    """

    def __init__(self):
        self.calls = 0

    def draw(self, sampler, shape, generator=None, device=None):
        rank, size = world()
        n = shape[0]
        g = torch.Generator().manual_seed(10_000 + self.calls)
        self.calls += 1
        return sampler((size * n, *shape[1:]), generator=g)[rank * n:(rank + 1) * n].to(device)

    @contextlib.contextmanager
    def patched(self):
        fakes = {numerics.randn: functools.partial(self.draw, torch.randn),
                 numerics.rand: functools.partial(self.draw, torch.rand)}
        undo = []
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("gm"):
                for name in ("randn", "rand"):
                    f = getattr(module, name, None)
                    if callable(f) and f in fakes:
                        undo.append((module, name, f))
                        setattr(module, name, fakes[f])
        try:
            yield self
        finally:
            for module, name, f in undo:
                setattr(module, name, f)


# --------------------------------------------------------------------------- what each set-up runs


def train(family: str, rank: int, size: int, bucket_bytes: int = BUCKET_BYTES) -> dict[str, torch.Tensor]:
    """ITERATIONS iterations of `family`'s schedule on this worker's rows; the final state."""
    model = model_for(family)
    sync_initial_state(model)
    stepper = BatchStepper(model, model.data, torch.device("cpu"), torch.Generator().manual_seed(0),
                           bucket_bytes=bucket_bytes)
    batches = iter([rows(b, rank, size) for b in full_batches(family)])
    with RowNoise().patched():
        run_steps(stepper, batches, 0, ITERATIONS)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def generator_step_gradients(rank: int, size: int) -> dict[str, dict[str, torch.Tensor]]:
    """WGAN-GP's generator loss on this worker's rows: every gradient it leaves as computed here
    ("local") and after the generator group's reducer ("reduced"; alone: the same)."""
    model = model_for("wgan_gp")
    gen = model.step_groups()[1]
    batch = rows(full_batches("wgan_gp")[0], rank, size)
    out = {}
    for kind in ("local", "reduced"):
        model.zero_grad(set_to_none=True)
        reducer = GradientReducer(gen.params, BUCKET_BYTES) if kind == "reduced" and size > 1 else None
        with RowNoise().patched():
            loss = model.loss(batch, "gen").loss
        if reducer is not None:
            reducer.arm()
        loss.backward()
        if reducer is not None:
            reducer.finish()
            reducer.remove()
        out[kind] = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out


def rank_one_reverses_its_buckets(plan):
    """A wrong layout on rank 1 only: each bucket's parameters in reverse order (so the ranks
    sum different parameters' gradients into the same elements)."""
    @functools.wraps(plan)
    def wrong(params, bucket_bytes=engine.BUCKET_BYTES):
        buckets = plan(params, bucket_bytes)
        if world()[0] != 1:
            return buckets
        out = []
        for b in buckets:
            offsets = itertools.accumulate([s.numel for s in b[::-1]], initial=0)
            out.append([Slot(s.param, s.bucket, off, s.numel, k) for k, (s, off) in enumerate(zip(b[::-1], offsets))])
        return out
    return wrong


def worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {"train": {f: train(f, rank, 2) for f in CASES},
                   "one_bucket": train("vae", rank, 2, engine.BUCKET_BYTES),
                   "gen_grads": generator_step_gradients(rank, 2)}
        plan = engine.plan_buckets
        engine.plan_buckets = rank_one_reverses_its_buckets(plan)
        try:
            results["wrong_layout"] = train(WRONG, rank, 2)
        finally:
            engine.plan_buckets = plan
        torch.save(results, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(worker, args=(free_port(), str(folder)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                raise TimeoutError("the 2 gloo workers did not finish in 180 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


# --------------------------------------------------------------------------- data parallelism


@pytest.mark.parametrize("family", CASES)
def test_two_workers_with_half_batches_reach_one_worker_s_parameters(two_workers, family):
    """2 gloo workers with B rows each end where 1 worker with the 2B rows ends, after ITERATIONS
    iterations (WGAN-GP: 5 critic steps and a generator step each; its generator loss leaves
    gradients on the critic, which must be neither reduced nor stepped)."""
    one = train(family, 0, 1)
    for r in range(2):
        assert max_difference(two_workers[r]["train"][family], one) < 2e-6, (family, r)
    moved = max_difference(one, {k: v for k, v in model_for(family).state_dict().items()})
    assert moved > 1e-3, "the parameters must have moved well beyond the tolerance"


def test_one_bucket_of_the_default_size_gives_the_same_parameters(two_workers):
    assert max_difference(two_workers[0]["one_bucket"], train("vae", 0, 1)) < 2e-6


def test_gradients_are_averaged_and_only_the_stepped_group_s(two_workers):
    """The generator's reducer averages (not sums) the generator's gradients, to the gradient of
    the whole batch's mean loss, and leaves the critic's gradients (which the generator's loss
    also produces) as each worker computed them."""
    whole = generator_step_gradients(0, 1)["local"]
    gen_names = {n for n, _ in model_for("wgan_gp").gen.named_parameters(prefix="gen")}
    for r in range(2):
        got = two_workers[r]["gen_grads"]
        for name, grad in got["reduced"].items():
            if name in gen_names:
                torch.testing.assert_close(grad, whole[name], rtol=1e-5, atol=1e-7)
                assert not torch.allclose(grad, 2 * whole[name], rtol=1e-3, atol=1e-6)  # not summed
            else:
                assert torch.equal(grad, got["local"][name]), f"rank {r}: {name} was reduced"
    critic = [n for n in whole if n not in gen_names]
    assert any(not torch.allclose(two_workers[0]["gen_grads"]["local"][n], two_workers[1]["gen_grads"]["local"][n])
               for n in critic), "the two halves must give the critic different gradients"


def test_a_bucket_layout_that_differs_between_ranks_breaks_the_equivalence(two_workers):
    """The check has teeth: with rank 1 laying its buckets out in reverse order, the parameters
    no longer match one worker's (nor each other's)."""
    one = train(WRONG, 0, 1)
    wrong = [two_workers[r]["wrong_layout"] for r in range(2)]
    print(f"wrong bucket layout on rank 1: max |Δθ| vs one worker: rank 0 {max_difference(wrong[0], one):.3g}, "
          f"rank 1 {max_difference(wrong[1], one):.3g}; right layout: "
          f"{max_difference(two_workers[0]['train'][WRONG], one):.3g}")
    assert max_difference(wrong[0], one) > 1e-3
    assert max_difference(wrong[1], one) > 1e-3


def test_bucket_plan_caps_sizes_and_covers_every_parameter_once():
    params = [torch.zeros(n) for n in (10, 300, 5, 200, 600, 1)]  # float32: 4 bytes each
    buckets = plan_buckets(params, bucket_bytes=1200)  # 300 floats
    # reverse order; a parameter over the cap (600 floats) alone; a new bucket where the next would overflow
    assert [[s.param for s in b] for b in buckets] == [[5], [4], [3, 2], [1], [0]]
    for b in buckets:
        assert [s.offset for s in b] == list(itertools.accumulate([s.numel for s in b[:-1]], initial=0))
        assert [s.index for s in b] == list(range(len(b)))
        assert sum(s.numel for s in b) * 4 <= 1200 or len(b) == 1
    assert sorted(s.param for b in buckets for s in b) == list(range(len(params)))


def test_one_worker_has_no_reducer():
    model = model_for("vae")
    stepper = BatchStepper(model, model.data, torch.device("cpu"), torch.Generator())
    assert stepper.reducers == [None]
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters())


# --------------------------------------------------------------------------- divergence and logs


def tiny(family: str = "vae") -> GenerativeModel:
    return model_for(family)


def stream(family: str, nan_at: int | None = None, seen: list | None = None):
    """Endless toy batches; the `nan_at`-th (0-based) is all NaN. `seen` counts what was drawn."""
    data = CASES[family][0]
    for i in itertools.count():
        if seen is not None:
            seen.append(i)
        b = make_batch(data, B, seed=i)
        yield Batch(x=torch.full_like(b.x, math.nan)) if i == nan_at else b


def test_diverged_names_the_step_group_and_repeat():
    model = tiny("wgan_gp")
    stepper = BatchStepper(model, model.data, torch.device("cpu"), torch.Generator())
    # 6 optimizer steps per iteration (5 critic, 1 generator): batch 6·2 + 2 is iteration 2's third critic step
    with pytest.raises(Diverged, match=r"^step 2: loss of group 'critic' is nan \(critic step 3 of 5\)$"):
        run_steps(stepper, stream("wgan_gp", nan_at=6 * 2 + 2), 0, 4)


def test_divergence_is_read_every_few_steps_not_every_step():
    """The record is read every FINITE_CHECK_EVERY iterations: a NaN at iteration 3 stops the
    segment after iteration FINITE_CHECK_EVERY - 1, naming iteration 3; later NaNs do not move it."""
    model = tiny()
    stepper = BatchStepper(model, model.data, torch.device("cpu"), torch.Generator())
    seen: list = []
    with pytest.raises(Diverged, match=r"^step 3: loss of group 'vae' is nan$"):
        run_steps(stepper, stream("vae", nan_at=3, seen=seen), 0, 3 * FINITE_CHECK_EVERY)
    assert len(seen) == FINITE_CHECK_EVERY


def test_an_error_after_a_nan_is_reported_as_the_divergence():
    model = tiny()
    stepper = BatchStepper(model, model.data, torch.device("cpu"), torch.Generator())

    def batches():
        yield from itertools.islice(stream("vae", nan_at=1), 3)
        raise ValueError("what a NaN did to a later step")

    with pytest.raises(Diverged, match="^step 1: loss of group 'vae' is nan$") as info:
        run_steps(stepper, batches(), 0, 10)
    assert isinstance(info.value.__context__, ValueError)


def test_segment_logs_are_the_means_over_the_segment_s_optimizer_steps():
    model = tiny("wgan_gp")
    stepper = BatchStepper(model, model.data, torch.device("cpu"), torch.Generator())
    seen: dict[str, list[float]] = {}
    loss = model.loss

    def recorded(batch, group):
        out = loss(batch, group)
        seen.setdefault(f"loss_{group}", []).append(out.loss.item())
        for k, v in out.logs.items():
            seen.setdefault(k, []).append(v)
        return out

    model.loss = recorded
    logs, seconds = run_steps(stepper, stream("wgan_gp"), 0, 4)
    assert seconds > 0 and len(seen["loss_critic"]) == 20 and len(seen["loss_gen"]) == 4
    assert set(logs) == set(seen)
    assert all(type(v) is float for v in logs.values())
    for k, values in seen.items():
        assert logs[k] == pytest.approx(sum(values) / len(values), rel=1e-5, abs=1e-6), k


class DeviceReads(TorchFunctionMode):
    """Counts the reads of tensor values on the host (.item(), .tolist(), bool/int/float of a
    tensor), except of the tensors in `exempt` (the optimizers' step counters: torch keeps them on
    the CPU whatever the device, so reading them waits for nothing)."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
             torch.Tensor.__float__, torch.Tensor.__index__}

    def __init__(self, exempt=()):
        super().__init__()
        self.count = 0
        self.exempt = {id(t) for t in exempt}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS and not (args and id(args[0]) in self.exempt):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family", CASES)
def test_a_segment_reads_the_device_a_fixed_number_of_times(family):
    """No host sync per step: the values read on the host per segment do not grow with its steps."""
    def reads(steps: int) -> int:
        model = tiny(family)
        stepper = BatchStepper(model, model.data, torch.device("cpu"), torch.Generator())
        batches = stream(family)
        run_steps(stepper, batches, 0, 1)  # ActNorm's one-off initialisation; the optimizers' state
        counters = [state["step"] for opt in stepper.optimizers for state in opt.state.values()]
        assert counters and all(t.device.type == "cpu" for t in counters)
        with DeviceReads(exempt=counters) as mode:
            run_steps(stepper, batches, 1, 1 + steps)
        return mode.count

    assert reads(2) == reads(12) == 1  # the segment's logs and divergence record, in one transfer


# --------------------------------------------------------------------------- channels-last

RGB = DataSpec(shape=(3, 8, 8), kind="image", levels=17)
CONV = {  # every family with 2-D convolutions (PixelCNN++ without dropout: its masks follow the memory order)
    "pixelcnn": {"hidden": 16, "depth": 2}, "gated_pixelcnn": {"hidden": 16, "depth": 2},
    "pixelcnnpp": {"hidden": 16, "depth": 2, "dropout": 0.0}, "glow": {"hidden": 16, "depth": 2},
    "realnvp": {"hidden": 8, "depth": 1}, "vqvae": {"hidden": 16, "depth": 2}, "gan": {"arch": "dcgan", "hidden": 8},
}


@pytest.mark.parametrize("family", CONV)
def test_channels_last_on_cpu_gives_the_same_losses(family):
    cls = FAMILIES[family]
    torch.manual_seed(0)
    model = cls(build(cls.config_cls, CONV[family], family), RGB)
    perturb(model, 0.05, seed=1)
    batch = make_batch(RGB, 4, seed=0)
    cpu = torch.device("cpu")
    other = torch.device("meta")  # a device where it was not measured to pay
    assert wants_channels_last(model, cpu) and wants_channels_last(model, other, force=True)
    assert not wants_channels_last(model, other) and to_channels_last(batch.x, other) is batch.x
    assert not wants_channels_last(FAMILIES["vae"](build(FAMILIES["vae"].config_cls, {}, "vae"), RGB), cpu)
    expected = {}
    for g in model.step_groups():
        torch.manual_seed(3)
        expected[g.name] = model.loss(batch, g.name).loss.item()
    to_channels_last(model, cpu, force=True)
    x = to_channels_last(batch.x, cpu, force=True)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in model.parameters())
    for g in model.step_groups():
        torch.manual_seed(3)
        assert model.loss(Batch(x=x), g.name).loss.item() == pytest.approx(expected[g.name], rel=1e-5, abs=1e-6)


def test_a_stepper_in_channels_last_steps_like_one_without():
    def run(flag: bool) -> dict:
        cls = FAMILIES["pixelcnn"]
        torch.manual_seed(0)
        model = cls(build(cls.config_cls, CONV["pixelcnn"], "pixelcnn"), RGB)
        stepper = BatchStepper(model, RGB, torch.device("cpu"), torch.Generator(), channels_last=flag)
        logs, _ = run_steps(stepper, (make_batch(RGB, 4, seed=i) for i in itertools.count()), 0, 2)
        return logs

    assert run(True) == pytest.approx(run(False), rel=1e-5)
