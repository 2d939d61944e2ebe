"""Metrics as pure functions returning flat {name: float}; importing this fills METRICS."""

from gm.metrics.images import class_metrics, fd, frechet_distance, kid
from gm.metrics.likelihood import bits_per_dim
from gm.metrics.prdc import prdc
from gm.metrics.toy import mode_metrics, toy_report, w1, w1_noise_floor

__all__ = [
    "bits_per_dim",
    "class_metrics",
    "fd",
    "frechet_distance",
    "kid",
    "mode_metrics",
    "prdc",
    "toy_report",
    "w1",
    "w1_noise_floor",
]
