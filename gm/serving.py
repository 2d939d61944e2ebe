"""The registry's model flavour: an mlflow.pyfunc sampler that rebuilds a family from disk.

    model = mlflow.pyfunc.load_model("models:/gm-wgan_gp-grid25@champion")
    x = model.predict({"n": 2500, "seed": 0})            # (n, *data_shape), data space
    x = model.predict({"n": 10, "label": 3})             # conditional families
    lp = model.predict({"log_prob": x})                  # (n,) nats, data space (bound: see tags)
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import torch

from gm.inference import data_log_prob, sample_data
from gm.models.base import load_model


class GMSampler(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.model = load_model(context.artifacts["model"])
        self.spec = self.model.data

    def predict(self, context, model_input, params=None):  # noqa: D401 (MLflow's signature)
        return predict(self.model, model_input)


def predict(model, request: Any) -> np.ndarray:
    """Serve one request dict against a loaded gm model (shared by the pyfunc and tests)."""
    if hasattr(request, "to_dict") and not isinstance(request, dict):  # a one-row DataFrame
        request = {k: v[0] for k, v in request.to_dict("list").items()}
    if not isinstance(request, dict):
        raise TypeError("expected a dict: {'n': int, 'seed': int, 'label': int} or {'log_prob': array}")
    spec = model.data
    if "log_prob" in request:
        if model.likelihood is None:
            raise ValueError(f"{model.registry_name} has no likelihood; request samples with {{'n': ...}}")
        x = np.asarray(request["log_prob"], dtype=np.float32).reshape(-1, *spec.shape)
        return data_log_prob(model, spec, x, seed=int(request.get("seed", 0)))
    n = int(request.get("n", 1))
    if n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    condition = None
    if "label" in request and request["label"] is not None:
        labels = np.broadcast_to(np.asarray(request["label"], dtype=np.int64), (n,))
        condition = torch.from_numpy(labels.copy())
    return sample_data(model, spec, n, seed=int(request.get("seed", 0)), condition=condition)
