"""Virtual batch normalisation (Salimans et al. 2016, "Improved Techniques for Training GANs", §3.4).

Batch norm makes a generated example depend on the other examples of its batch. Virtual batch
norm normalises every example with the statistics of a *reference batch* chosen once at the
start and fixed for the whole of training. The paper normalises each example x with the
statistics of the reference batch together with x itself (x ∪ reference); gm implements the
reference-batch version: the mean and variance are the reference batch's alone, so an
example's output depends on itself and the reference batch only, never on the rest of its
batch (and is the same in training and evaluation).

How it runs: the generator's input is the fixed reference input (latent codes, with labels for
a conditional generator, drawn once with a seeded torch.Generator and stored as a buffer, so
it is saved and loaded with the model) stacked before the batch; each `VirtualBatchNorm`
layer takes its statistics from the first `reference_size` rows, which are the reference
batch's activations at that layer; `ReferenceBatch` drops those rows from the output.
Gradients flow through the reference statistics too, as in the paper's code.
"""

from __future__ import annotations

import torch
from torch import nn

from gm.nn.mlp import Activation, make_activation

VBN_SEED = 0  # the seed of the reference batch's draw


class VirtualBatchNorm(nn.Module):
    """Normalise (N, C, ...) activations per channel with the statistics of the first `reference_size`
    rows (the reference batch), then scale and shift (learned γ, β, as batch norm)."""

    def __init__(self, num_features: int, reference_size: int, eps: float = 1e-5):
        super().__init__()
        self.reference_size, self.eps = reference_size, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = self.reference_size
        if h.shape[0] < r:
            raise ValueError(f"VirtualBatchNorm: expected the {r} reference rows first, got {h.shape[0]} rows")
        ref = h[:r]
        dims = [0] + list(range(2, h.dim()))  # every axis but the channels
        mean = ref.mean(dims, keepdim=True)
        var = ref.var(dims, unbiased=False, keepdim=True)
        shape = [1, -1] + [1] * (h.dim() - 2)
        return (h - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


class ReferenceBatch(nn.Module):
    """net(z) with the fixed reference input stacked first: net(cat[reference, z])[R:]; the
    reference (R, in_dim) is a buffer (saved with the model)."""

    def __init__(self, net: nn.Module, reference: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("reference", reference)

    @property
    def reference_size(self) -> int:
        return self.reference.shape[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        r = self.reference_size
        return self.net(torch.cat([self.reference.to(z.dtype), z]))[r:]


def reference_input(size: int, z_dim: int, num_labels: int = 0, seed: int = VBN_SEED) -> torch.Tensor:
    """The reference batch's generator input, drawn once: z ~ N(0, I) (size, z_dim), beside one-hot
    labels drawn uniformly when the generator is conditional -> (size, z_dim + num_labels)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((size, z_dim), generator=g)
    if not num_labels:
        return z
    y = torch.randint(0, num_labels, (size,), generator=g)
    return torch.cat([z, nn.functional.one_hot(y, num_labels).float()], dim=1)


def vbn_mlp(in_dim: int, out_dim: int, hidden: int, depth: int, reference_size: int,
            activation: Activation = "relu", out_activation: Activation | None = None) -> nn.Sequential:
    """gm.nn.mlp.mlp with virtual batch norm after every hidden linear layer (before its activation)."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), VirtualBatchNorm(hidden, reference_size), make_activation(activation)]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    if out_activation is not None:
        layers.append(make_activation(out_activation))
    return nn.Sequential(*layers)
