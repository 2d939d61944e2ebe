"""gm.inference: a bound whose estimate draws random numbers is a function of its seed alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gm.core.config import build
from gm.core.registry import FAMILIES
from gm.inference import data_log_prob
from tests.helpers import DIGITS


@pytest.fixture(scope="module")
def vae_and_digits():
    torch.manual_seed(0)
    cls = FAMILIES["vae"]
    model = cls(build(cls.config_cls, {"z_dim": 4, "hidden": 16, "depth": 1, "iwae_k": 8}, "test"), DIGITS).eval()
    x = np.random.default_rng(0).integers(0, 17, size=(20, *DIGITS.shape)).astype(np.float32)
    return model, x


def test_an_importance_weighted_bound_depends_on_its_seed_not_on_the_global_generator(vae_and_digits):
    model, x = vae_and_digits
    torch.manual_seed(1)
    first = data_log_prob(model, DIGITS, x, seed=0)
    torch.manual_seed(2)  # another process, or other draws before: the global state differs
    state = torch.get_rng_state()
    again = data_log_prob(model, DIGITS, x, seed=0)
    assert np.array_equal(first, again)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left as it was
    other = data_log_prob(model, DIGITS, x, seed=1)
    assert not np.array_equal(first, other)  # the draws do follow the seed
