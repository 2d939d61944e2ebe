"""The registry's model flavour: an mlflow.pyfunc sampler that rebuilds a family from disk.

    model = mlflow.pyfunc.load_model("models:/gm-wgan_gp-grid25@champion")
    x = model.predict([{"n": 2500, "seed": 0}])            # (n, *data_shape), data space
    x = model.predict([{"n": 10, "label": 3}])             # conditional families
    x = model.predict([{"n": 16, "truncation": 0.7}])      # StyleGAN: w̄ + ψ (w - w̄); BigGAN: |z| <= 0.7
    lp = model.predict([{"log_prob": x.tolist()}])         # (n,) nats, data space (bound: see tags)

This file is what the registry stores as the model's code (MLflow's models-from-code, logged by
gm.tracking.register_version with gm's own code beside it): loading a version imports it and gm, then
reads the model folder's JSON config and its weights with torch.load(weights_only=True). Nothing is
unpickled. The type hints of `predict` are the model's signature: a list of requests, validated by
MLflow before they reach gm; the answer is the requests' results stacked along the first axis (a numpy
array; its schema is left open).
"""

from __future__ import annotations

from typing import Any, Optional

import mlflow.pyfunc
import numpy as np
import pydantic
import torch

from gm.inference import data_log_prob, sample_data
from gm.models.base import load_model


class Request(pydantic.BaseModel):
    """One request: `n` samples (of class `label` for a conditional family), or the log-density of the
    rows of `log_prob` (each row a flattened data point), deterministic given `seed`."""

    n: Optional[int] = None
    seed: int = 0
    label: Optional[int] = None
    truncation: Optional[float] = None  # StyleGAN's ψ, BigGAN's threshold (families with the trick); None: off
    log_prob: Optional[list[list[float]]] = None


class GMSampler(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.model = load_model(context.artifacts["model"])
        self.spec = self.model.data

    # No return hint: MLflow would read one as the output schema, and an array whose shape depends on the
    # family and the request has none it can express (`list[Any]` makes it warn that Any goes unchecked at
    # every registration). Unhinted, the output schema is MLflow's plain AnyType, with no warning.
    def predict(self, context, model_input: list[Request], params=None):
        return predict_many(self.model, model_input)


def predict_many(model, requests: list) -> np.ndarray:
    """Several requests of one kind (all samples, or all log-densities), their results stacked in order."""
    if not requests:
        raise ValueError("expected at least one request: [{'n': int, 'seed': int}] or [{'log_prob': rows}]")
    kinds = {"log_prob" if _field(r, "log_prob") is not None else "n" for r in requests}
    if len(kinds) > 1:
        raise ValueError("one call serves one kind of request: samples ({'n': ...}) or log-densities ({'log_prob': ...})")
    return np.concatenate([predict(model, r) for r in requests])


def _field(request, key: str):
    return request.get(key) if isinstance(request, dict) else getattr(request, key, None)


def predict(model, request: Any) -> np.ndarray:
    """Serve one request (a dict or a Request) against a loaded gm model (shared by the pyfunc and tests)."""
    if isinstance(request, pydantic.BaseModel):
        request = request.model_dump()
    if hasattr(request, "to_dict") and not isinstance(request, dict):  # a one-row DataFrame
        request = {k: v[0] for k, v in request.to_dict("list").items()}
    if not isinstance(request, dict):
        raise TypeError("expected a dict: {'n': int, 'seed': int, 'label': int} or {'log_prob': array}")
    spec = model.data
    seed = int(request.get("seed") or 0)
    if request.get("log_prob") is not None:
        if model.likelihood is None:
            raise ValueError(f"{model.registry_name} has no likelihood; request samples with {{'n': ...}}")
        x = np.asarray(request["log_prob"], dtype=np.float32).reshape(-1, *spec.shape)
        return data_log_prob(model, spec, x, seed=seed)
    n = 1 if request.get("n") is None else int(request["n"])
    if n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    condition = None
    if request.get("label") is not None:
        labels = np.broadcast_to(np.asarray(request["label"], dtype=np.int64), (n,))
        condition = torch.from_numpy(labels.copy())
    truncation = request.get("truncation")
    return sample_data(model, spec, n, seed=seed, condition=condition,
                       truncation=None if truncation is None else float(truncation))


if __name__ != "gm.serving":  # loaded by MLflow from the registry as the model's code (models-from-code)
    mlflow.models.set_model(GMSampler())
