"""Plain helpers shared by the tests (fixtures live in conftest.py): the toy data specs, the toy
batch, the one step loop (the product's Stepper), the tiny pipeline profile and a copy of the repo."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Callable, Iterable

import torch
import yaml

from gm.chaos import kill_when  # noqa: F401  (re-exported for the tests)
from gm.data.dataspec import DataSpec
from gm.models.base import Batch, GenerativeModel

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# --------------------------------------------------------------------------- toy data

TOY = DataSpec(shape=(2,), kind="toy")  # continuous 2-D points
VEC3 = DataSpec(shape=(3,), kind="toy")
DIGITS = DataSpec(shape=(1, 8, 8), kind="image", num_classes=10, levels=17)  # as the prepared digits
SMALL_IMAGE = DataSpec(shape=(1, 4, 4), kind="image", levels=17)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_batch(data: DataSpec = TOY, b: int = 32, seed: int = 0) -> Batch:
    """A model-space batch for `data`: random levels, dequantized, for discrete data; 2·N(0, 1) for
    continuous toys (they span a few units); labels when the data has classes."""
    g = seeded(seed)
    if data.levels:
        raw = torch.randint(0, data.levels, (b, *data.shape), generator=g)
        x = data.to_model(raw, generator=g)  # (B, *shape) in [-1, 1)
    else:
        x = 2 * torch.randn((b, *data.shape), generator=g)
    y = torch.randint(0, data.num_classes, (b,), generator=g) if data.num_classes else None
    return Batch(x=x, y=y)


def toy_batch(b: int = 32, seed: int = 0) -> Batch:
    """The toy batch: `b` unlabelled 2-D points, 2·N(0, 1)."""
    return make_batch(TOY, b, seed)


def perturb(model: torch.nn.Module, std: float, seed: int = 0) -> None:
    """Random weights everywhere, so zero-initialised (identity) layers are not trivial."""
    g = seeded(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


# --------------------------------------------------------------------------- the step loop


def _model_space_stepper(model: GenerativeModel):
    from gm.training.engine import Stepper

    class ModelSpaceStepper(Stepper):
        """The training loop's Stepper fed batches already in model space (Batch objects)."""

        def to_batch(self, batch: Batch) -> Batch:
            return batch

    return ModelSpaceStepper(model, model.data, torch.device("cpu"), seeded(0))


def train_steps(model: GenerativeModel, batches: Callable[[], Batch] | Iterable[Batch], steps: int,
                check: Callable | None = None) -> list[dict]:
    """`steps` iterations of the training loop's schedule (gm.training.engine.Stepper: each group
    `repeats` optimizer steps, in order, a fresh batch per optimizer step); returns each
    iteration's logs (`loss_<group>` and the model's logs).

    `batches`: a function returning a Batch, or an iterable of them. `check(out)` runs on every
    optimizer step's ModelOutput (e.g. the loss decomposition). A non-finite loss raises
    gm.training.engine.Diverged, as in training (checked after every iteration here)."""
    stepper = _model_space_stepper(model)
    stream = iter(batches, None) if callable(batches) else iter(batches)
    if check is not None:
        loss = model.loss

        def checked(batch, group):
            out = loss(batch, group)
            check(out)
            return out

        model.loss = checked  # an instance attribute: shadows the method until deleted below
    try:
        logs = []
        for step in range(steps):
            entry = stepper.iteration(stream, step)
            stepper.check_finite()  # the loop reads the device-side record once per segment; here every step
            logs.append({k: float(v) for k, v in entry.items()})
        return logs
    finally:
        if check is not None:
            del model.loss


def train_single_group(model: GenerativeModel, x: torch.Tensor, steps: int, check=None) -> list[float]:
    """`steps` optimizer steps of a one-group model on the fixed model-space batch x; returns the losses."""
    (group,) = model.step_groups()
    logs = train_steps(model, itertools.repeat(Batch(x)), steps, check)
    return [entry[f"loss_{group.name}"] for entry in logs]


# --------------------------------------------------------------------------- the tiny pipeline


def tiny_params(**overrides) -> dict:
    """A profile small enough for CI: real Ray/MLflow/DVC, seconds of training per experiment."""
    params = {
        "ray": {"address": "local", "num_cpus": 2},
        "mlflow": {"experiment": "gm-test"},
        "data": {
            "seed": 0, "val_fraction": 0.1, "test_fraction": 0.2,
            "datasets": {
                "ring8": {"source": "ring8", "n": 3000},
                "digits": {"source": "digits", "path": "data/digits/digits.csv.gz"},
            },
        },
        "featurize": {"epochs": 3, "channels": [8, 16], "feature_dim": 32},
        "train": {"steps": 60, "batch_size": 64, "eval_every": 30, "val_samples": 300,
                  "scaling": {"num_workers": 1}},
        "experiments": {
            "wgan_gp-ring8": {"family": "wgan_gp", "dataset": "ring8",
                              "model": {"z_dim": 2, "hidden": 32, "depth": 2, "n_critic": 2}},
            "vae-digits": {"family": "vae", "dataset": "digits", "train": {"seeds": 2},
                           "model": {"z_dim": 4, "hidden": 32, "depth": 1, "iwae_k": 8}},
        },
        "tune": {"sweeps": {"vae-digits": {"experiment": "vae-digits", "num_samples": 2,
                                           "space": {"model.beta": {"choice": [0.5, 2.0]}}}}},
        "evaluate": {"n_samples": 500, "iwae_k": 16, "baseline_seeds": 2, "kid_subsets": 10,
                     "kid_subset_size": 200},
    }
    for key, value in overrides.items():
        params[key] = value
    return params


def env_for(root: Path) -> dict:
    from gm.chaos import stage_env

    return stage_env(root)


def copy_repo(dest: Path) -> Path:
    """The tracked files of this checkout (as a fresh clone would have them), in `dest`, as a git repo."""
    from gm.profiles import copy_checkout

    return copy_checkout(REPO, dest)


def write_params(root: Path, params: dict) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path
