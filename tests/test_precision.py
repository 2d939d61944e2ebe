"""Mixed precision (`train.precision: bf16`) and compilation (`train.compile`) in the step engine.

Tolerance of bf16 against fp32: |loss_bf16 - loss_fp32| <= 2e-2 · max(1, |loss_fp32|) (RTOL below).
bfloat16 keeps 8 significant bits (machine epsilon 2^-7 ≈ 7.8e-3): each matmul or convolution
under autocast rounds its inputs and weights to it, an error of up to ~1e-2 relative per layer before
the errors of a few layers average out; likelihood reductions, log-determinants, KL terms and
penalties are fp32 islands, so no sum over many dimensions rounds to 8 bits. Measured on these
models (torch 2.13, CPU): at most 6.5e-4 on that scale (WGAN-GP's generator; the others 1e-5 to
6e-5); 2e-2, a few bf16 epsilons, leaves room for other seeds, devices and kernels (CUDA's bf16
matmuls accumulate differently), while a missing island shows as a bfloat16 loss (checked for every
family below). Losses near 0 (a GAN's) are compared on an absolute scale of 1, where a relative
error means nothing.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import gm.models  # noqa: F401  (fills the registry)
from gm.core.config import build
from gm.core.registry import FAMILIES
from gm.data.dataspec import DataSpec
from gm.models.base import Batch, GenerativeModel
from gm.training.engine import Stepper, run_steps
from tests.helpers import DIGITS, TOY, make_batch, perturb

RTOL = 2e-2

# one family of each kind: latent, adversarial, flow, autoregressive (the flows twice: toy and image)
KINDS = {
    "vae": (DIGITS, {"hidden": 32, "depth": 2, "z_dim": 4}),
    "wgan_gp": (TOY, {"hidden": 32, "depth": 2, "z_dim": 2}),
    "realnvp": (TOY, {"n_layers": 4, "hidden": 32, "depth": 2}),
    "glow": (DIGITS, {"hidden": 16, "depth": 2}),
    "pixelcnn": (DIGITS, {"hidden": 16, "depth": 2}),
}
SMALL = {"hidden": 16, "depth": 2}
SMALL_EXTRA = {"realnvp": {"n_layers": 4}, "vae": {"iwae_k": 8}, "vae_flow": {"iwae_k": 8},
               "catvae": {"iwae_k": 8, "n_latent": 4, "n_categories": 4}}


def built(family: str, data: DataSpec, config: dict) -> GenerativeModel:
    cls = FAMILIES[family]
    torch.manual_seed(0)
    model = cls(build(cls.config_cls, config, family), data)
    perturb(model, 0.05, seed=1)  # zero-initialised layers would make both precisions trivially agree
    return model.train()


def losses(model: GenerativeModel, batch: Batch, bf16: bool) -> dict[str, torch.Tensor]:
    """Each group's loss on `batch`, the noise drawn from the same seed."""
    out = {}
    for g in model.step_groups():
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out[g.name] = model.loss(batch, g.name).loss
    return out


def close(a: float, b: float) -> bool:
    return abs(a - b) <= RTOL * max(1.0, abs(b))


@pytest.mark.parametrize("family", KINDS)
def test_bf16_losses_agree_with_fp32_and_are_fp32(family):
    data, config = KINDS[family]
    model = built(family, data, config)
    batch = make_batch(data, 16, seed=0)
    full = losses(model, batch, bf16=False)
    half = losses(model, batch, bf16=True)
    for name in full:
        assert half[name].dtype == torch.float32, f"{name}: the loss must leave its fp32 island in fp32"
        assert close(half[name].item(), full[name].item()), (name, half[name].item(), full[name].item())
        assert half[name].item() != full[name].item(), "bf16 must actually have run"


@pytest.mark.parametrize("family,data", [(f, d) for f in sorted(FAMILIES) for d in ("toy", "image")])
def test_every_family_s_loss_is_fp32_under_bf16_autocast(family, data):
    """The fp32 islands cover every family: no loss comes out of autocast as a bfloat16 sum."""
    spec = {"toy": TOY, "image": DIGITS}[data]
    model = built(family, spec, {**SMALL, **SMALL_EXTRA.get(family, {})})
    for name, loss in losses(model, make_batch(spec, 8, seed=0), bf16=True).items():
        assert loss.dtype == torch.float32 and torch.isfinite(loss), (name, loss)


class BatchStepper(Stepper):
    def to_batch(self, batch: Batch) -> Batch:
        return batch


def stepped(family: str, iterations: int = 2, **options) -> tuple[GenerativeModel, Stepper, dict]:
    data, config = KINDS[family]
    model = built(family, data, config)
    stepper = BatchStepper(model, data, torch.device("cpu"), torch.Generator().manual_seed(0), **options)
    torch.manual_seed(3)
    logs, _ = run_steps(stepper, (make_batch(data, 16, seed=i) for i in itertools.count()), 0, iterations)
    return model, stepper, logs


@pytest.mark.parametrize("family", ["vae", "glow"])
def test_a_bf16_step_keeps_parameters_gradients_and_optimizer_state_in_fp32(family):
    before = {k: v.clone() for k, v in built(family, *KINDS[family]).state_dict().items()}
    model, stepper, logs = stepped(family, precision="bf16")
    _, _, reference = stepped(family)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not .half()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for opt in stepper.optimizers for state in opt.state.values()
               for k, v in state.items() if k != "step")
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert logs.keys() == reference.keys()
    for k in logs:
        assert close(logs[k], reference[k]), (k, logs[k], reference[k])


def test_an_unknown_precision_is_refused():
    model = built("vae", *KINDS["vae"])
    with pytest.raises(ValueError, match="precision: expected 'fp32' or 'bf16', got 'fp16'"):
        Stepper(model, model.data, torch.device("cpu"), torch.Generator(), precision="fp16")


# --------------------------------------------------------------------------- compile
# Inductor on CPU compiles C++ (~20 s for the smallest model on a busy 2-core machine) and draws its
# own random numbers, so these tests use the aot_eager backend: dynamo's trace (where graph breaks
# happen) and AOTAutograd's forward/backward graphs, run eagerly, the same numbers as eager.


def test_a_compiled_step_matches_the_eager_one_and_counts_no_graph_break():
    model, stepper, logs = stepped("vae", compile=True, compile_backend="aot_eager")
    eager_model, eager, reference = stepped("vae")
    assert stepper.graph_breaks == 0 and eager.graph_breaks == 0
    assert logs == pytest.approx(reference, rel=1e-5)
    for (k, a), b in zip(model.state_dict().items(), eager_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_graph_breaks_are_counted():
    data, config = KINDS["vae"]
    model = built("vae", data, config)
    loss = model.loss

    def broken(batch, group):
        torch._dynamo.graph_break()
        return loss(batch, group)

    model.loss = broken
    stepper = BatchStepper(model, data, torch.device("cpu"), torch.Generator(), compile=True, compile_backend="eager")
    run_steps(stepper, (make_batch(data, 8, seed=i) for i in itertools.count()), 0, 2)
    assert stepper.graph_breaks >= 1
    assert isinstance(stepper.graph_breaks, int)
