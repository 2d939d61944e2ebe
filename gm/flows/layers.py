"""Normalizing-flow layers on vectors: planar and radial (Rezende & Mohamed 2015), MADE
(Germain et al. 2015), IAF (Kingma et al. 2016) and MAF (Papamakarios et al. 2017) steps.

Convention: every `Flow` maps in the *sampling* direction, z -> f(z), and returns
log|det ∂f/∂z| per row, so a density pushed through a stack of flows is scored as

    log q_K(z_K) = log q_0(z_0) - Σ_k log|det ∂f_k/∂z_{k-1}|      (Rezende & Mohamed 2015, Eq. 13)

`inverse(x)` (where it is cheap, or at least exact) returns f⁻¹(x) and log|det ∂f⁻¹/∂x|.

Two optional inputs, both broadcast against z's leading dims:
- `context` (..., C): a conditioning vector shared by a stack (IAF's h from the encoder);
  only layers built with `context_dim > 0` take it, the others refuse one.
- `params` (..., P): per-row parameters emitted by an inference network (amortised flows,
  Rezende & Mohamed 2015 §4.2); `param_dim` says how many a layer reads from a stack's
  `params` (0 for layers that use their own weights).

Shapes: z (..., D), typically (B, D) or (k, B, D); log-dets (...,).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gm.nn.mlp import Activation, make_activation
from gm.nn.precision import fp32

__all__ = [
    "Flow", "FlowSequence", "PlanarFlow", "RadialFlow", "MaskedLinear", "MADE", "IAFLayer", "MAFLayer",
    "planar_flows", "radial_flows", "iaf_flows", "maf_flows",
]

# Bisection steps of the planar inverse: the bracket has width 2|wᵀû| <= 2·(1 + |wᵀu|), so 60
# halvings reach below float64 resolution.
PLANAR_BISECTION_STEPS = 60


class Flow(nn.Module):
    """One invertible map z -> f(z) with a tractable log|det ∂f/∂z|."""

    param_dim: int = 0  # amortised parameters per row this layer reads from a stack's `params`
    context_dim: int = 0  # size of the context vector it is conditioned on (0: none)

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None,
                params: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """z (..., D) -> f(z) (..., D), log|det ∂f/∂z| (...,)."""
        raise NotImplementedError

    def inverse(self, x: torch.Tensor, context: torch.Tensor | None = None,
                params: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., D) -> f⁻¹(x) (..., D), log|det ∂f⁻¹/∂x| (...,)."""
        raise NotImplementedError(f"{type(self).__name__} has no inverse")

    def _refuse_context(self, context: torch.Tensor | None) -> None:
        if context is not None:
            raise ValueError(f"{type(self).__name__} takes no context; got one")


# --------------------------------------------------------------------------- planar / radial


class PlanarFlow(Flow):
    """f(z) = z + û·tanh(wᵀz + b) (Rezende & Mohamed 2015, Eq. 10), log|det| = log|1 + ûᵀψ(z)|
    with ψ(z) = tanh'(wᵀz + b)·w (Eqs. 11-12).

    û = u + (m(wᵀu) - wᵀu)·w/‖w‖², m(a) = -1 + softplus(a) (App. A.1), so wᵀû > -1 and f is
    invertible for any (u, w, b). With `amortized`, the layer has no weights of its own and
    (u, w, b) come per row from `params` (..., 2D + 1); otherwise `params`, if given, override
    the layer's own.
    """

    def __init__(self, dim: int, amortized: bool = False):
        super().__init__()
        self.dim = dim
        self.amortized = amortized
        self.param_dim = 2 * dim + 1 if amortized else 0
        if not amortized:
            # Small random u, w: w = 0 would leave û undefined and the layer without gradient.
            self.u = nn.Parameter(0.01 * torch.randn(dim))  # (D,)
            self.w = nn.Parameter(0.01 * torch.randn(dim))  # (D,)
            self.b = nn.Parameter(torch.zeros(1))  # (1,)

    def parts(self, params: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(û, w, b): (..., D), (..., D), (..., 1), from `params` or the layer's own weights."""
        if params is None:
            if self.amortized:
                raise ValueError(f"an amortised PlanarFlow needs params (..., {2 * self.dim + 1})")
            u, w, b = self.u, self.w, self.b
        else:
            u, w, b = fp32(params).split([self.dim, self.dim, 1], dim=-1)  # fp32 under autocast
        wu = (w * u).sum(-1, keepdim=True)  # (..., 1)
        w_sq = w.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)
        u_hat = u + (F.softplus(wu) - 1 - wu) * w / w_sq  # wᵀû = softplus(wᵀu) - 1 > -1
        return u_hat, w, b

    def forward(self, z, context=None, params=None):
        self._refuse_context(context)
        u_hat, w, b = self.parts(params)
        t = torch.tanh((w * z).sum(-1, keepdim=True) + b)  # (..., 1)
        w_u_hat = (w * u_hat).sum(-1, keepdim=True)  # (..., 1), > -1
        log_det = torch.log1p((1 - t.pow(2)) * w_u_hat).squeeze(-1)  # ûᵀψ = tanh'·wᵀû > -1
        return z + u_hat * t, log_det

    def inverse(self, x, context=None, params=None):
        """Exact inverse: α = wᵀz solves wᵀx = α + wᵀû·tanh(α + b), monotone in α since wᵀû > -1.

        The root is bracketed in [wᵀx - |wᵀû|, wᵀx + |wᵀû|] and found by bisection without
        gradient; one Newton step from it restores the implicit-function gradient.
        """
        self._refuse_context(context)
        u_hat, w, b = self.parts(params)
        w_u_hat = (w * u_hat).sum(-1, keepdim=True)  # (..., 1)
        target = (w * x).sum(-1, keepdim=True)  # (..., 1)
        with torch.no_grad():
            lo, hi = target - w_u_hat.abs(), target + w_u_hat.abs()
            for _ in range(PLANAR_BISECTION_STEPS):
                mid = 0.5 * (lo + hi)
                above = mid + w_u_hat * torch.tanh(mid + b) > target
                lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
            root = 0.5 * (lo + hi)
        t0 = torch.tanh(root + b)
        alpha = root - (root + w_u_hat * t0 - target) / (1 + w_u_hat * (1 - t0.pow(2)))  # Newton
        t = torch.tanh(alpha + b)
        log_det = -torch.log1p((1 - t.pow(2)) * w_u_hat).squeeze(-1)
        return x - u_hat * t, log_det


class RadialFlow(Flow):
    """f(z) = z + β·h(α, r)·(z - z₀), h = 1/(α + r), r = ‖z - z₀‖ (Rezende & Mohamed 2015, Eq. 14);
    log|det| = (D - 1)·log(1 + βh) + log(1 + βh + βh'r) = (D - 1)·log(1 + βh) + log(1 + βαh²).

    α = softplus(α̂) > 0 and β = -α + softplus(β̂) >= -α keep f invertible (App. A.2). Forward
    only. `params` (..., D + 2) = (z₀, α̂, β̂) per row when amortised, or override the weights.
    """

    def __init__(self, dim: int, amortized: bool = False):
        super().__init__()
        self.dim = dim
        self.amortized = amortized
        self.param_dim = dim + 2 if amortized else 0
        if not amortized:
            self.z0 = nn.Parameter(0.01 * torch.randn(dim))  # (D,)
            self.alpha_raw = nn.Parameter(torch.zeros(1))
            self.beta_raw = nn.Parameter(torch.zeros(1))  # β = 0 at the start: the identity

    def parts(self, params: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z₀, α, β): (..., D), (..., 1), (..., 1)."""
        if params is None:
            if self.amortized:
                raise ValueError(f"an amortised RadialFlow needs params (..., {self.dim + 2})")
            z0, a_raw, b_raw = self.z0, self.alpha_raw, self.beta_raw
        else:
            z0, a_raw, b_raw = fp32(params).split([self.dim, 1, 1], dim=-1)  # fp32 under autocast
        alpha = F.softplus(a_raw)
        return z0, alpha, F.softplus(b_raw) - alpha

    def forward(self, z, context=None, params=None):
        self._refuse_context(context)
        z0, alpha, beta = self.parts(params)
        diff = z - z0  # (..., D)
        r = diff.norm(dim=-1, keepdim=True)  # (..., 1)
        h = 1 / (alpha + r)
        log_det = (self.dim - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h.pow(2))
        return z + beta * h * diff, log_det.squeeze(-1)


# --------------------------------------------------------------------------- MADE


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed binary mask (out, in)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        # Rebuilt from the layer sizes and ordering on construction, so not saved.
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015, §4).

    x (..., D) -> `n_out` tensors (..., D), e.g. (μ, log-scale); output d depends only on the
    inputs j with order[j] < order[d], so ∂out_d/∂x is strictly triangular in the ordering.
    `order` is a permutation of 0..D-1 giving each dimension's rank (None: 0, 1, ..., D-1).
    Degrees: input d has order[d] + 1; hidden units cycle through 1..D-1; a unit sees units of
    lower or equal degree and an output sees hidden units of strictly lower degree (Eqs. 12-13).
    A context (..., C) enters the first hidden layer and the outputs unmasked: it does not
    break the autoregressive structure, and reaches even the first dimension's outputs.
    """

    def __init__(self, dim: int, hidden: Sequence[int], n_out: int = 2, order: Sequence[int] | None = None,
                 context_dim: int = 0, activation: Activation = "relu"):
        super().__init__()
        order_t = torch.arange(dim) if order is None else torch.as_tensor(list(order), dtype=torch.long)
        if sorted(order_t.tolist()) != list(range(dim)):
            raise ValueError(f"order must be a permutation of 0..{dim - 1}, got {order_t.tolist()}")
        self.dim, self.n_out, self.context_dim = dim, n_out, context_dim
        self.register_buffer("order", order_t, persistent=False)
        prev = order_t + 1  # (D,) input degrees 1..D
        layers: list[nn.Module] = []
        for width in hidden:
            deg = torch.arange(width) % max(1, dim - 1) + 1  # (H,) in 1..D-1
            layers += [MaskedLinear(prev.numel(), width, deg[:, None] >= prev[None, :]), make_activation(activation)]
            prev = deg
        out_deg = (order_t + 1).repeat(n_out)  # (n_out·D,): output p·D + d has the degree of d
        self.hidden = nn.ModuleList(layers)
        self.output = MaskedLinear(prev.numel(), n_out * dim, out_deg[:, None] > prev[None, :])
        self.context_in = nn.Linear(context_dim, hidden[0], bias=False) if context_dim and len(hidden) else None
        self.context_out = nn.Linear(context_dim, n_out * dim, bias=False) if context_dim else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if (context is None) != (self.context_dim == 0):
            raise ValueError(f"MADE built with context_dim={self.context_dim} got context={context is not None}")
        h = x
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and self.context_in is not None:
                h = h + self.context_in(context)  # pre-activation of the first hidden layer
        out = self.output(h)  # (..., n_out·D)
        if self.context_out is not None:
            out = out + self.context_out(context)
        return out.unflatten(-1, (self.n_out, self.dim)).unbind(-2)

    def zero_output_(self, bias: Sequence[float] | None = None) -> None:
        """Zero the output weights (the context's too) and set each output's bias (default 0):
        a flow step built on it then starts at a fixed affine map, the identity for MAF."""
        with torch.no_grad():
            self.output.weight.zero_()
            for p, value in enumerate(bias or [0.0] * self.n_out):
                self.output.bias[p * self.dim:(p + 1) * self.dim] = value
            if self.context_out is not None:
                self.context_out.weight.zero_()


# --------------------------------------------------------------------------- autoregressive steps


class IAFLayer(Flow):
    """Inverse autoregressive flow step (Kingma et al. 2016, §4, the LSTM-type update):
    [m, s] = MADE(z, h), σ = sigmoid(s), f(z) = σ ⊙ z + (1 - σ) ⊙ m, log|det| = Σ log σ.

    Sampling and scoring its own samples are one parallel pass; the inverse is sequential
    (D MADE passes). `gate_bias` starts σ near 1, i.e. close to the identity (the paper
    advises initialising s at a positive value such as +1 or +2).
    """

    def __init__(self, dim: int, hidden: Sequence[int], order: Sequence[int] | None = None,
                 context_dim: int = 0, activation: Activation = "relu", gate_bias: float = 2.0):
        super().__init__()
        self.dim, self.context_dim = dim, context_dim
        self.made = MADE(dim, hidden, 2, order, context_dim, activation)
        self.made.zero_output_([0.0, gate_bias])

    def forward(self, z, context=None, params=None):
        if params is not None:
            raise ValueError("IAFLayer is not amortised through params; condition it with a context")
        m, s = (fp32(t) for t in self.made(z, context))  # (..., D) each; fp32 under autocast
        sigma = torch.sigmoid(s)
        return sigma * z + (1 - sigma) * m, F.logsigmoid(s).sum(-1)

    def inverse(self, x, context=None, params=None):
        """z = (x - (1 - σ(z))·m(z)) / σ(z), solved in D sweeps: after sweep t the first t
        dimensions in the ordering are exact, since their (m, s) depend on earlier ones only."""
        if params is not None:
            raise ValueError("IAFLayer is not amortised through params; condition it with a context")
        z = x
        s = None
        for _ in range(self.dim):
            m, s = self.made(z, context)
            sigma = torch.sigmoid(s)
            z = (x - (1 - sigma) * m) / sigma
        return z, -F.logsigmoid(s).sum(-1)


class MAFLayer(Flow):
    """Masked autoregressive flow step (Papamakarios et al. 2017): sampling x = u ⊙ exp(a) + μ
    with (μ, a) = MADE(x), so x_d depends on x_{<d}; log|det ∂x/∂u| = Σ a.

    The density direction `inverse` is one parallel pass, u = (x - μ(x)) ⊙ exp(-a(x)); sampling
    (`forward`) takes D sequential MADE passes. a = bound·tanh(â/bound) keeps each scale within
    exp(±bound). Starts at the identity.
    """

    def __init__(self, dim: int, hidden: Sequence[int], order: Sequence[int] | None = None,
                 context_dim: int = 0, activation: Activation = "relu", log_scale_bound: float = 3.0):
        super().__init__()
        self.dim, self.context_dim = dim, context_dim
        self.bound = log_scale_bound
        self.made = MADE(dim, hidden, 2, order, context_dim, activation)
        self.made.zero_output_()

    def shift_log_scale(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = (fp32(t) for t in self.made(x, context))  # fp32 under autocast
        return mu, self.bound * torch.tanh(raw / self.bound)

    def forward(self, u, context=None, params=None):
        """Sampling u -> x: D sweeps of x = u·exp(a(x)) + μ(x), exact as in `IAFLayer.inverse`."""
        if params is not None:
            raise ValueError("MAFLayer is not amortised through params; condition it with a context")
        x = u
        a = None
        for _ in range(self.dim):
            mu, a = self.shift_log_scale(x, context)
            x = u * torch.exp(a) + mu
        return x, a.sum(-1)

    def inverse(self, x, context=None, params=None):
        if params is not None:
            raise ValueError("MAFLayer is not amortised through params; condition it with a context")
        mu, a = self.shift_log_scale(x, context)
        return (x - mu) * torch.exp(-a), -a.sum(-1)


# --------------------------------------------------------------------------- stacks


class FlowSequence(Flow):
    """f_K ∘ ... ∘ f_1 with the log-dets summed. `params` (..., Σ param_dim) is split among the
    amortised layers in order; `context` goes to the layers built with one. An empty sequence
    is the identity."""

    def __init__(self, layers: Sequence[Flow] = ()):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.param_dim = sum(layer.param_dim for layer in layers)
        self.context_dim = max((layer.context_dim for layer in layers), default=0)

    def _split(self, params: torch.Tensor | None) -> list[torch.Tensor | None]:
        if params is None:
            return [None] * len(self.layers)
        if params.shape[-1] != self.param_dim:
            raise ValueError(f"FlowSequence expects params (..., {self.param_dim}), got {tuple(params.shape)}")
        chunks = params.split([layer.param_dim for layer in self.layers], dim=-1)
        return [c if layer.param_dim else None for c, layer in zip(chunks, self.layers)]

    def forward(self, z, context=None, params=None):
        log_det = z.new_zeros(z.shape[:-1])  # (...,)
        for layer, p in zip(self.layers, self._split(params)):
            z, ld = layer(z, context if layer.context_dim else None, p)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, x, context=None, params=None):
        log_det = x.new_zeros(x.shape[:-1])
        for layer, p in reversed(list(zip(self.layers, self._split(params)))):
            x, ld = layer.inverse(x, context if layer.context_dim else None, p)
            log_det = log_det + ld
        return x, log_det


def alternating_orders(dim: int, n_layers: int) -> list[list[int]]:
    """Orders 0..D-1 and its reverse in turn: each autoregressive step sees the variables the
    previous one could not condition on (Kingma 2016 reverse the ordering between IAF steps)."""
    forward = list(range(dim))
    return [forward if i % 2 == 0 else forward[::-1] for i in range(n_layers)]


def planar_flows(dim: int, n_layers: int, amortized: bool = False) -> FlowSequence:
    return FlowSequence([PlanarFlow(dim, amortized) for _ in range(n_layers)])


def radial_flows(dim: int, n_layers: int, amortized: bool = False) -> FlowSequence:
    return FlowSequence([RadialFlow(dim, amortized) for _ in range(n_layers)])


def iaf_flows(dim: int, n_layers: int, hidden: Sequence[int], context_dim: int = 0,
              activation: Activation = "relu") -> FlowSequence:
    return FlowSequence([IAFLayer(dim, hidden, order, context_dim, activation)
                         for order in alternating_orders(dim, n_layers)])


def maf_flows(dim: int, n_layers: int, hidden: Sequence[int], context_dim: int = 0,
              activation: Activation = "relu") -> FlowSequence:
    return FlowSequence([MAFLayer(dim, hidden, order, context_dim, activation)
                         for order in alternating_orders(dim, n_layers)])
