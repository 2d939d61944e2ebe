"""WaveNet (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio", §2.1-2.5), and its
fast generator with queues (Paine et al. 2016, "Fast Wavenet Generation Algorithm").

A sequence of symbols s_0 .. s_{T-1} in {0..K-1} is modelled as p(s) = Π_t p(s_t | s_<t, h)
(Eq. 1; Eq. 3 with a global condition h). Layers, all 1-D over time:

- causal input conv (§2.1, Fig. 2): the one-hot of each symbol (the paper's input is the 256-way
  μ-law one-hot, §2.2; here K = channels × levels symbols), shifted one step right with a zero
  column at t = 0 (no sample yet), then a kernel-k conv padded k-1 steps on the left; its output
  at t sees s_{t-k} .. s_{t-1}, never s_t (the role of PixelCNN's mask A);
- `stacks` × `layers_per_stack` residual layers with dilations 1, 2, 4, .., 2^(n-1) repeated
  (§2.1, Fig. 3), each (§2.3-2.5, Fig. 4):
      pre  = W * x (dilated causal conv, kernel k, residual -> 2·dilation channels) + V^T h
      z    = tanh(pre_f) ⊙ σ(pre_g)                                   (Eq. 2; Eq. 3 with V^T h)
      x'   = x + W_res z (1×1),   skip = W_skip z (1×1)
  the last layer has no residual 1×1 (nothing reads its x');
- head (§2.4, Fig. 4): Σ skips -> ReLU -> 1×1 -> ReLU -> 1×1 -> `levels` logits per step (softmax, §2.2).

Receptive field: logits_t depend on s_{t-R} .. s_{t-1} exactly, with

    R = k + (k - 1) · stacks · (2^layers_per_stack - 1)

(k from the input conv, (k-1)·d from each dilated layer); k = 2, 10 layers, 3 stacks gives the
paper's 1..512 ×3: R = 3071.

Generation. `forward` scores a whole sequence in one pass (training, likelihood). Drawing a sample
needs T steps. The naive way (`sample(cached=False)`) runs the net at each step on what was drawn
so far, cropped to the last R symbols (cropping changes no logit: they see R symbols back), so a
step costs a pass over R positions. `FastGenerator` is Paine et al.'s algorithm: every layer keeps
a queue of its own past inputs, (k-1)·d columns for dilation d (a ring buffer), so a step computes
one new column per layer, O(layers) work, and gives the same logits as the full pass.

Shapes: symbols (B, T) int64, or a one-hot/soft float input (B, K, T) (for gradient probes);
logits (B, levels, T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def receptive_field(kernel_size: int, layers_per_stack: int, stacks: int) -> int:
    """R: how many past symbols logits_t see (s_{t-R} .. s_{t-1})."""
    return kernel_size + (kernel_size - 1) * stacks * (2 ** layers_per_stack - 1)


class CausalInput(nn.Module):
    """The first causal conv on the one-hot symbols, shifted one step: output t sees s_{t-k}..s_{t-1}.

    The weights are those of a Conv1d over the K one-hot channels; an int64 input reads them as k
    embedding tables (a one-hot times a matrix is a row lookup), with an extra zero row for the
    empty positions before the sequence (padding and the one-step shift).
    """

    def __init__(self, n_symbols: int, channels: int, kernel_size: int):
        super().__init__()
        self.n_symbols, self.kernel_size = n_symbols, kernel_size
        self.conv = nn.Conv1d(n_symbols, channels, kernel_size)

    def tables(self) -> torch.Tensor:
        """(k, K + 1, C): tap i's input weights per symbol, row K (no symbol) zero."""
        w = self.conv.weight.permute(2, 1, 0)  # (k, K, C)
        return F.pad(w, (0, 0, 0, 1))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        k, t = self.kernel_size, s.shape[-1]
        if s.dtype in (torch.int64, torch.int32):  # (B, T) symbols
            u = F.pad(s.long(), (k, 0), value=self.n_symbols)[:, :t + k - 1]  # (B, T+k-1): k empties, then s_0..s_{T-2}
            tables = self.tables()
            out = sum(F.embedding(u[:, i:i + t], tables[i]) for i in range(k))  # (B, T, C)
            return out.transpose(1, 2) + self.conv.bias[:, None]  # (B, C, T)
        if s.dim() != 3 or s.shape[1] != self.n_symbols:
            raise ValueError(f"a float input must be one-hot/soft symbols (B, {self.n_symbols}, T), got {tuple(s.shape)}")
        return self.conv(F.pad(s, (k, 0))[..., :t + k - 1])  # shift by one, pad k-1: (B, C, T)


class ResidualLayer(nn.Module):
    """One gated residual layer (Fig. 4): dilated causal conv, tanh ⊙ σ gate with the label's V^T h
    inside (Eq. 2-3), a 1×1 back to the residual stream (skipped in the last layer) and a 1×1 skip."""

    def __init__(self, residual: int, dilation_channels: int, skip: int, kernel_size: int, dilation: int,
                 n_classes: int = 0, last: bool = False):
        super().__init__()
        self.kernel_size, self.dilation, self.pad = kernel_size, dilation, (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(residual, 2 * dilation_channels, kernel_size, dilation=dilation)  # [W_f; W_g]
        self.label = nn.Embedding(n_classes, 2 * dilation_channels) if n_classes else None  # [V_f; V_g]^T h, h one-hot
        self.res = None if last else nn.Conv1d(dilation_channels, residual, 1)
        self.skip = nn.Conv1d(dilation_channels, skip, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, R, T), cond (B, 2D, 1) or None -> (x' (B, R, T) or None in the last layer, skip (B, S, T))."""
        pre = self.conv(F.pad(x, (self.pad, 0)))  # (B, 2D, T): output t sees x_{t-(k-1)d} .. x_t
        if cond is not None:
            pre = pre + cond
        f, g = pre.chunk(2, dim=1)
        z = torch.tanh(f) * torch.sigmoid(g)  # (B, D, T), Eq. 2
        return (None if self.res is None else x + self.res(z)), self.skip(z)


class WaveNet(nn.Module):
    """p(s) = Π_t p(s_t | s_<t, y) over sequences of `n_symbols` symbols, `n_levels` logits per step.

    `n_classes` > 0: globally conditioned on a class label y (Eq. 3), labels int64 (B,)."""

    def __init__(self, n_symbols: int, n_levels: int, residual_channels: int = 32, dilation_channels: int = 32,
                 skip_channels: int = 64, layers_per_stack: int = 8, stacks: int = 2, kernel_size: int = 2,
                 n_classes: int = 0):
        super().__init__()
        if kernel_size < 2:
            raise ValueError(f"WaveNet: kernel_size must be at least 2, got {kernel_size}")
        self.n_symbols, self.n_levels, self.n_classes = n_symbols, n_levels, n_classes
        self.kernel_size = kernel_size
        self.dilations = [2 ** i for _ in range(stacks) for i in range(layers_per_stack)]  # Fig. 3, repeated
        self.receptive_field = receptive_field(kernel_size, layers_per_stack, stacks)
        self.input = CausalInput(n_symbols, residual_channels, kernel_size)
        self.layers = nn.ModuleList(
            ResidualLayer(residual_channels, dilation_channels, skip_channels, kernel_size, d, n_classes,
                          last=i == len(self.dilations) - 1)
            for i, d in enumerate(self.dilations))
        self.head1 = nn.Conv1d(skip_channels, skip_channels, 1)
        self.head2 = nn.Conv1d(skip_channels, n_levels, 1)

    def _check_labels(self, labels: torch.Tensor | None, batch: int) -> None:
        if not self.n_classes:
            if labels is not None:
                raise ValueError("WaveNet is unconditional (n_classes = 0); got labels")
        elif labels is None or labels.shape != (batch,):
            raise ValueError(f"WaveNet is class-conditional: labels must be int64 of shape ({batch},), "
                             f"got {None if labels is None else tuple(labels.shape)}")

    def forward(self, s: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Symbols (B, T) or one-hot (B, K, T) -> logits (B, levels, T); logits_t see s_{t-R}..s_{t-1}."""
        self._check_labels(labels, s.shape[0])
        x = self.input(s)  # (B, R, T)
        skips = 0
        for layer in self.layers:
            cond = layer.label(labels.long())[:, :, None] if layer.label is not None else None  # (B, 2D, 1)
            x, skip = layer(x, cond)
            skips = skips + skip  # (B, S, T)
        return self.head2(F.relu(self.head1(F.relu(skips))))

    def fast_generator(self, n: int, labels: torch.Tensor | None = None) -> "FastGenerator":
        self._check_labels(labels, n)
        return FastGenerator(self, n, labels)


class FastGenerator:
    """Paine et al. (2016)'s cached generation: `step(s_{t-1})` -> logits_t (n, levels), one column
    per layer. Layer l with dilation d keeps its last (k-1)·d input columns in a ring buffer (the
    paper's queue: the column pushed at t is popped at t + (k-1)·d); the input conv keeps the last k
    symbols. Before the sequence every queue holds zeros, which is the full pass's left padding.
    Use it under torch.no_grad(); it reads the net's weights as they are when it is built.
    """

    def __init__(self, net: WaveNet, n: int, labels: torch.Tensor | None):
        p = net.head1.weight
        self.net, self.n, self.t = net, n, 0
        self.tables = net.input.tables()  # (k, K+1, R)
        self.in_bias = net.input.conv.bias
        self.symbols = [torch.full((n,), net.n_symbols, dtype=torch.long, device=p.device)] * net.kernel_size
        self.layers = []
        for layer in net.layers:
            w = layer.conv.weight  # (2D, R, k): tap i reads x_{t-(k-1-i)d}
            bias = layer.conv.bias if layer.label is None else layer.conv.bias + layer.label(labels.long())  # + V^T h
            taps = [w[:, :, i].t().contiguous() for i in range(layer.kernel_size)]  # each (R, 2D)
            queue = torch.zeros((layer.kernel_size - 1) * layer.dilation, n, w.shape[1], dtype=p.dtype, device=p.device)
            outs = [layer.skip] if layer.res is None else [layer.res, layer.skip]  # one matrix: z -> [res; skip]
            w_out = torch.cat([m.weight[:, :, 0] for m in outs]).t().contiguous()  # (D, R + S) or (D, S)
            b_out = torch.cat([m.bias for m in outs])
            self.layers.append((layer.dilation, taps, bias, queue, w_out, b_out, layer.res is not None))
        self.residual = net.input.conv.out_channels
        self.head = (net.head1.weight[:, :, 0], net.head1.bias, net.head2.weight[:, :, 0], net.head2.bias)

    def step(self, previous: torch.Tensor | None) -> torch.Tensor:
        """previous: s_{t-1} (n,) int64 (None at t = 0) -> logits of s_t, (n, levels)."""
        t = self.t
        if (previous is None) != (t == 0):
            raise ValueError(f"step {t}: pass the previous symbol (and none at t = 0)")
        if previous is not None:
            self.symbols = self.symbols[1:] + [previous.long()]  # the shifted input z_t = s_{t-1}
        x = self.in_bias + sum(F.embedding(s, table) for s, table in zip(self.symbols, self.tables))  # (n, R)
        skips = 0
        for d, taps, bias, queue, w_out, b_out, has_res in self.layers:
            m, k = queue.shape[0], len(taps)
            pre = torch.addmm(bias, x, taps[-1])  # (n, 2D): the current column's tap
            for i in range(k - 1):
                pre.addmm_(queue[(t - (k - 1 - i) * d) % m], taps[i])  # x_{t-(k-1-i)d}, zeros before t = 0
            queue[t % m] = x  # push x_t; its slot held x_{t-(k-1)d}, read above for the last time
            f, g = pre.chunk(2, dim=1)
            z = torch.tanh(f) * torch.sigmoid(g)  # (n, D), Eq. 2-3
            out = torch.addmm(b_out, z, w_out)  # (n, R + S): residual and skip 1×1s at once
            if has_res:
                x = x + out[:, :self.residual]
                skips = skips + out[:, self.residual:]
            else:
                skips = skips + out
        w1, b1, w2, b2 = self.head
        self.t += 1
        return F.linear(F.relu(F.linear(F.relu(skips), w1, b1)), w2, b2)  # (n, levels)
