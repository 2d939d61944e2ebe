"""DVC stage entry points: `python -m pipelines.<stage>` from the repository root."""
