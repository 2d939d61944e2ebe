"""Metrics as pure functions returning flat {name: float}, each registered with what it consumes
(gm.core.registry.Metric). Importing this package imports every module in it, so a new metric
is one new file here: gm.evaluation calls whatever is registered."""

import importlib
import pkgutil

from gm.metrics.autoencoding import codebook_perplexity, recon_mse
from gm.metrics.images import class_metrics, fd, frechet_distance, kid
from gm.metrics.likelihood import held_out_likelihood
from gm.metrics.prdc import prdc
from gm.metrics.toy import mode_metrics, w1, w1_noise_floor

# The modules above are the public API; this registers any other module too.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "class_metrics",
    "codebook_perplexity",
    "fd",
    "frechet_distance",
    "held_out_likelihood",
    "kid",
    "mode_metrics",
    "prdc",
    "recon_mse",
    "w1",
    "w1_noise_floor",
]
