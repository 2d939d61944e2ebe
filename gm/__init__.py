"""gm: deep generative models trained, tuned, evaluated and registered as one pipeline."""

__version__ = "0.1.0"
