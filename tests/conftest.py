"""Shared fixtures: one thread per test, a tiny prepared root, a copy of the repository, an
embedded Ray. The plain helpers (toy specs and batches, the step loop, the tiny profile) are in
tests/helpers.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import (  # noqa: F401  (re-exported for `from tests.conftest import ...`)
    BIN, REPO, copy_repo, env_for, seeded, tiny_params, train_single_group, train_steps, write_params,
)


@pytest.fixture(autouse=True)
def one_thread():
    # Every tensor in the unit tests is tiny: intra-op threads only add overhead, and on a
    # shared 2-core box their spin-waits slow a file down many times over.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def store(tmp_path):
    """A fresh sqlite MLflow store in tmp_path, set up as a stage sets up its own; runs left open are ended."""
    import mlflow

    from gm import tracking

    tracking.setup(tracking.MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"), tmp_path)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(autouse=True)
def integration_only_ray(request):
    """A test that starts Ray must be marked `integration` (make test-fast runs without Ray)."""
    def running() -> bool:
        ray = sys.modules.get("ray")
        return ray is not None and ray.is_initialized()

    before = running()
    yield
    if not before and running() and request.node.get_closest_marker("integration") is None:
        pytest.fail("this test started Ray: mark it @pytest.mark.integration")


@pytest.fixture
def tmp_repo(tmp_path) -> Path:
    return copy_repo(tmp_path / "repo")


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    """A root holding only the bundled digits (data/digits/digits.csv.gz)."""
    from gm.data.bootstrap import materialise_default_data

    root = tmp_path_factory.mktemp("repo")
    materialise_default_data(root)
    return root


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A root with tiny prepared datasets (artifacts/prepared/<name>) and params.yaml."""
    from gm.params import parse_params
    from gm.data.bootstrap import materialise_default_data
    from gm.core.layout import Layout
    from gm.stages.prepare import prepare

    root = tmp_path_factory.mktemp("prepared")
    materialise_default_data(root)
    raw = tiny_params()
    write_params(root, raw)
    params = parse_params(raw, root / "params.yaml")
    for name, src in params.datasets.items():
        prepare(name, src, root, Layout(root).prepared_root, params.data_seed, params.val_fraction,
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
