"""Metrics of the code a model gives test data: reconstruction error and codebook usage."""

from __future__ import annotations

import numpy as np

from gm.core.registry import register_metric


@register_metric("recon_mse", consumes={"reconstructions": "test_reconstructions", "data": "test"},
                 kinds=("toy", "image", "audio"))
def recon_mse(reconstructions: np.ndarray, data: np.ndarray) -> dict[str, float]:
    """Mean squared error per dimension between data (N, ...) and its reconstructions, both in
    data space. Returns {"test_recon_mse": ...}."""
    n = len(data)
    return {"test_recon_mse": float(np.mean((reconstructions.reshape(n, -1) - data.reshape(n, -1)) ** 2))}


@register_metric("codebook_perplexity", consumes={"quantizer": "quantizer", "data": "test", "seed": "seed"},
                 kinds=("toy", "image", "audio"))
def codebook_perplexity(quantizer, data: np.ndarray, seed: int) -> dict[str, float]:
    """How many codebook entries the codes of data use: exp(entropy of their average usage),
    from 1 to the codebook size, by a sampler whose capabilities declare a codebook
    (`codebook_perplexity(x, seed)` in data space), and for a hierarchy of codebooks each level's
    (`level_perplexities(x, seed)`). Returns {"codebook_perplexity": ..., "codebook_perplexity_<level>": ...}."""
    levels = quantizer.level_perplexities(data, seed)
    return {"codebook_perplexity": float(quantizer.codebook_perplexity(data, seed)),
            **{f"codebook_perplexity_{level}": float(v) for level, v in levels.items()}}
