"""The model contract's capabilities: every family implements exactly what it declares, and
evaluation reports exactly what it declares."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import gm.models  # noqa: F401  (fills the registry)
from gm.core.config import build
from gm.core.registry import FAMILIES
from gm.data.dataspec import DataSpec
from gm.data.io import data_spec, read_split, write_splits
from gm.evaluation import EvaluateParams, ModelSampler, evaluate
from gm.models.base import Capabilities, GenerativeModel
from gm.training.validate import validation_scores

IMAGE = DataSpec(shape=(1, 8, 8), kind="image", num_classes=10, levels=17)
SMALL = {"hidden": 16, "depth": 1}
SMALL_EXTRA = {"realnvp": {"n_layers": 2}, "vqvae": {"codebook_size": 8, "prior_hidden": 8, "prior_blocks": 1}}
K = 3  # importance samples wherever a config has them
# Each ability's contract method (see Capabilities).
METHODS = {"likelihood": "log_prob", "importance_weighted": "with_importance_samples",
           "reconstruction": "reconstruct", "rate_distortion": "recon_and_kl", "codebook": "codebook_perplexity"}
# Config fields with which a family's config decides its abilities, and the value that changes them.
DECIDING = {"conditional": True, "dequantization": "variational"}


def variants(family: str) -> list[GenerativeModel]:
    """Small models of `family` on digits-like images: its defaults, then each deciding field changed."""
    cls = FAMILIES[family]
    fields = {f.name for f in dataclasses.fields(cls.config_cls)}
    base = {**SMALL, **SMALL_EXTRA.get(family, {}), **({"iwae_k": K} if "iwae_k" in fields else {})}
    configs = [base] + [{**base, name: value} for name, value in DECIDING.items() if name in fields]
    models = []
    for raw in configs:
        torch.manual_seed(0)
        models.append(cls(build(cls.config_cls, raw, f"test.{family}"), IMAGE).eval())
    return models


def batch(n: int = 6) -> torch.Tensor:
    raw = torch.randint(0, IMAGE.levels, (n, *IMAGE.shape), generator=torch.Generator().manual_seed(0))
    return IMAGE.to_model(raw, generator=torch.Generator().manual_seed(1))


def use(model: GenerativeModel, ability: str, x: torch.Tensor):
    """Exercise one ability on the batch x, checking what it returns."""
    if ability == "likelihood":
        lp = model.log_prob(x)
        assert lp.shape == (len(x),) and torch.isfinite(lp).all()
    elif ability == "importance_weighted":
        wider = model.with_importance_samples(K + 2)
        assert wider.config.iwae_k == K + 2 and not wider.training and wider.capabilities == model.capabilities
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), wider.state_dict().values()))
        assert torch.isfinite(wider.log_prob(x)).all()
    elif ability == "reconstruction":
        r = model.reconstruct(x)
        assert r.shape == x.shape and torch.isfinite(r).all()
    elif ability == "rate_distortion":
        recon, kl = model.recon_and_kl(x)
        assert recon.shape == kl.shape == (len(x),) and torch.isfinite(recon + kl).all()
    elif ability == "codebook":
        assert 1.0 <= model.codebook_perplexity(x) <= model.config.codebook_size + 1e-6


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_declared_abilities_work_and_undeclared_ones_are_the_base_classes(family):
    models, x = variants(family), batch()
    cls = FAMILIES[family]
    assert all(isinstance(m.capabilities, Capabilities) for m in models)
    assert models[0].capabilities == cls.capabilities  # the defaults are the family's declaration
    with torch.no_grad():
        for model in models:
            for ability in METHODS:
                if ability in model.capabilities.declared():
                    use(model, ability, x)
                else:
                    with pytest.raises(NotImplementedError):
                        use(model, ability, x)
    for ability, method in METHODS.items():
        if not any(ability in m.capabilities.declared() for m in models):
            assert getattr(cls, method) is getattr(GenerativeModel, method), f"{family} overrides {method}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_conditional_models_take_labels_and_the_others_refuse_them(family):
    labels = torch.arange(4) % IMAGE.num_classes
    for model in variants(family):
        if model.capabilities.conditional:
            assert model.sample(4, torch.Generator().manual_seed(0), condition=labels).shape == (4, *IMAGE.shape)
        else:
            with pytest.raises(ValueError, match="unconditional"):
                model.sample(4, torch.Generator().manual_seed(0), condition=labels)


# --------------------------------------------------------------------------- what evaluation reports


@pytest.fixture(scope="module")
def digits_like(tmp_path_factory) -> Path:
    """A prepared split of random 8x8 images on 17 levels with 10 labels."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, size=(300, 1, 8, 8)).astype(np.float32)
    y = np.arange(300) % 10
    out = tmp_path_factory.mktemp("digits_like") / "digits_like"
    write_splits(out, x, y, {"kind": "image", "shape": [1, 8, 8], "levels": 17, "num_classes": 10},
                 seed=0, val_fraction=0.2, test_fraction=0.2, source_hash="test", name="digits_like")
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_evaluation_reports_exactly_what_the_family_declares(family, digits_like):
    params = EvaluateParams(n_samples=40, iwae_k=K, kid_subsets=2, kid_subset_size=20)
    val_x, _ = read_split(digits_like, "val")
    assert data_spec(digits_like) == IMAGE
    for model in variants(family):
        caps = model.capabilities
        torch.manual_seed(0)
        metrics, _ = evaluate(ModelSampler(model), digits_like, params, seed=0)
        assert ("test_recon_mse" in metrics) == caps.reconstruction
        assert ("codebook_perplexity" in metrics) == caps.codebook
        assert ("test_bits_per_dim" in metrics) == (caps.likelihood is not None)
        assert (metrics.get("test_bound") == 1.0) == (caps.likelihood == "bound")
        assert (metrics.get("test_bound") == 0.0) == (caps.likelihood == "exact")
        assert all(math.isfinite(v) for v in metrics.values())
        scores = validation_scores(model, IMAGE, val_x, n=40)
        assert ("val_rate" in scores and "val_distortion" in scores) == caps.rate_distortion
