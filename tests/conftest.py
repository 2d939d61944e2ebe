"""Shared test helpers: a tiny pipeline profile and a temporary copy of the repository."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def one_thread():
    # Every tensor in the unit tests is tiny: intra-op threads only add overhead, and on a
    # shared 2-core box their spin-waits slow a file down many times over.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["GM_ROOT"] = str(root)
    return env


def copy_repo(dest: Path) -> Path:
    """The tracked files of this checkout (as a fresh clone would have them), in `dest`, as a git repo."""
    from gm.profiles import copy_checkout

    return copy_checkout(REPO, dest)


@pytest.fixture
def tmp_repo(tmp_path) -> Path:
    return copy_repo(tmp_path / "repo")


def write_params(root: Path, params: dict) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A root with tiny prepared datasets (artifacts/prepared/<name>) and params.yaml."""
    from gm.params import parse_params
    from gm.data.bootstrap import materialise_default_data
    from pipelines.prepare import prepare

    root = tmp_path_factory.mktemp("prepared")
    materialise_default_data(root)
    raw = tiny_params()
    write_params(root, raw)
    params = parse_params(raw, root / "params.yaml")
    for name, src in params.datasets.items():
        prepare(name, src, root, root / "artifacts" / "prepared", params.data_seed, params.val_fraction,
                params.test_fraction)
    return root


@pytest.fixture(scope="module")
def local_ray():
    """An embedded 2-CPU Ray for the tests of one module."""
    import ray

    from gm.params import parse_params
    from gm.training.cluster import init_ray

    ray.shutdown()
    init_ray(parse_params(tiny_params()).ray)
    yield
    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)  # init_ray pinned the state API to this cluster


def train_single_group(model, x, steps: int, check=None) -> list[float]:
    """`steps` optimizer steps of a one-group model on the fixed batch x; returns the losses.

    `check(out)` runs on every step's ModelOutput (e.g. the loss decomposition)."""
    from gm.models.base import Batch

    (group,) = model.step_groups()
    opt = group.make_optimizer()
    losses = []
    for _ in range(steps):
        out = model.loss(Batch(x), group.name)
        if check is not None:
            check(out)
        losses.append(out.loss.item())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.after_step(group.name)
    return losses
