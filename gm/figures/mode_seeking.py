"""Mode covering vs mode seeking: one Gaussian fitted by f-GAN to two, under KL(P‖Q) and KL(Q‖P).

The target P is ½N(−2, ½²) + ½N(2, ½²); the model Q = N(μ, σ²) has a learnable mean and
log-std (reparameterised: x = μ + σε). Minimising the forward KL(P‖Q) punishes Q for
missing mass anywhere P has it, so Q spreads over both modes (μ ≈ 0, σ ≈ 2: moment
matching); the reverse KL(Q‖P) punishes Q for mass where P has none, so Q settles on one
mode (μ ≈ ±2, σ ≈ ½). Both are fitted the f-GAN way — a small MLP critic V maximising
F = E_P[g_f(V)] − E_Q[f*(g_f(V))] from the divergence table, the generator minimising it —
and compared with the exact optima, found by minimising D_f by quadrature over (μ, σ).

Drawn by the `figures` stage (python -m pipelines.figures) into reports/figures/.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from scipy import integrate, optimize
from torch import nn

from gm.models.fgan import DIVERGENCES, Divergence, generator_loss, variational_objective
from gm.nn.mlp import mlp
from gm.core.numerics import normal_log_prob, randn
from gm.figures import axes, save

MEANS = (-2.0, 2.0)  # the target's two modes, equally weighted
STD = 0.5
DIVERGENCE_NAMES = ("kl", "reverse_kl")
# (μ, σ) at the start, inside the right-hand mode's basin of KL(Q‖P). The reverse KL also has a
# wide local minimum straddling both modes, (0, 1.74) with D = 1.87 against log 2 at a mode; a
# start such as (0.5, 1.0) slides into it. The forward KL is unimodal over (μ, σ).
INIT = (1.0, 0.5)
X_GRID = np.linspace(-10.0, 10.0, 4001)  # quadrature nodes: ±10 holds every candidate's mass


def target_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log p(x) of the two-mode mixture, elementwise."""
    comps = torch.stack([normal_log_prob(x, m, math.log(STD)) for m in MEANS])  # (2, ...)
    return torch.logsumexp(comps, 0) - math.log(len(MEANS))


def sample_target(n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws from the mixture, shape (n, 1)."""
    modes = torch.randint(0, len(MEANS), (n, 1), generator=generator)
    return torch.tensor(MEANS)[modes] + STD * torch.randn((n, 1), generator=generator)


class Gaussian(nn.Module):
    """Q = N(μ, σ²) with learnable μ and log σ; samples are reparameterised."""

    def __init__(self, mu: float, sigma: float):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(mu))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))

    def forward(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.mu + self.log_sigma.exp() * randn((n, 1), generator)  # (n, 1)

    def params(self) -> tuple[float, float]:
        return self.mu.item(), self.log_sigma.exp().item()


def divergence_value(div: Divergence, mu: float, sigma: float) -> float:
    """D_f(P‖Q) = ∫ q f(p/q) dx by Simpson's rule on X_GRID, with the table's f."""
    x = torch.from_numpy(X_GRID)
    log_p, log_q = target_log_prob(x), normal_log_prob(x, mu, math.log(sigma))
    # Clamped so that exp() stays finite; where it bites, q (or p) is below e⁻⁷⁰⁰ and the
    # integrand's contribution is negligible.
    ratio = torch.exp((log_p - log_q).clamp(-700.0, 700.0))
    integrand = torch.exp(log_q) * div.f(ratio)
    return float(integrate.simpson(integrand.numpy(), x=X_GRID))


def exact_optimum(div: Divergence) -> tuple[float, float, float]:
    """argmin over (μ, σ) of D_f(P‖Q), from several starts (the reverse KL has a local
    minimum at μ = 0 besides one per mode). Returns (μ, σ, D) with μ ≥ 0: P is symmetric,
    so (−μ, σ) is as good."""
    def objective(theta: np.ndarray) -> float:
        return divergence_value(div, abs(float(theta[0])), math.exp(float(theta[1])))

    best = None
    for mu0 in (0.0, 1.0, 2.0):
        for sigma0 in (0.5, 2.0):
            res = optimize.minimize(objective, np.array([mu0, math.log(sigma0)]), method="Nelder-Mead",
                                    options={"xatol": 1e-6, "fatol": 1e-10, "maxiter": 2000})
            if best is None or res.fun < best.fun:
                best = res
    return abs(float(best.x[0])), math.exp(float(best.x[1])), float(best.fun)


def fit(div: Divergence, seed: int = 0, steps: int = 1000, n_critic: int = 3, batch: int = 256,
        lr_gen: float = 2e-2, lr_critic: float = 3e-3, hidden: int = 32) -> dict:
    """f-GAN training of Q = N(μ, σ²) against P under `div`, with the minimax generator loss
    (the exact gradient of the variational estimate, so Q follows the divergence itself).

    The generator's learning rate decays linearly to 0, so the last iterate settles instead
    of jittering around the optimum at the scale of the sampling noise.
    """
    torch.manual_seed(seed)  # the critic's initial weights
    gen = torch.Generator().manual_seed(seed)
    model = Gaussian(*INIT)
    critic = mlp(1, 1, hidden, 2, "tanh")
    opt_g = torch.optim.Adam(model.parameters(), lr=lr_gen, betas=(0.5, 0.999))
    opt_c = torch.optim.Adam(critic.parameters(), lr=lr_critic, betas=(0.5, 0.999))
    decay = torch.optim.lr_scheduler.LambdaLR(opt_g, lambda step: 1 - step / steps)
    trace = []
    for step in range(steps):
        for _ in range(n_critic):
            real, fake = sample_target(batch, gen), model(batch, gen).detach()  # (B, 1) each
            estimate = variational_objective(div, critic(real), critic(fake))
            opt_c.zero_grad()
            (-estimate).backward()
            opt_c.step()
        loss = generator_loss(div, critic(model(batch, gen)), "minimax")
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        decay.step()
        if step % 50 == 0 or step == steps - 1:
            trace.append((step, *model.params(), estimate.item()))
    mu, sigma = model.params()
    return {"mu": mu, "sigma": sigma, "estimate": trace[-1][-1], "trace": trace}


def run(seed: int = 0, steps: int = 1000) -> dict:
    """Fit and solve exactly for each of the forward and the reverse KL.

    Returns {name: {"fitted": (μ, σ), "exact": (μ, σ), "divergence_fitted", "divergence_exact",
    "estimate" (the critic's F at the end), "trace": [(step, μ, σ, F), ...]}}; the exact μ
    takes the sign of the fitted one (both signs are optimal by symmetry).
    """
    out = {}
    for name in DIVERGENCE_NAMES:
        div = DIVERGENCES[name]
        fitted = fit(div, seed=seed, steps=steps)
        mu, sigma, value = exact_optimum(div)
        mu = math.copysign(mu, fitted["mu"])
        out[name] = {
            "fitted": (fitted["mu"], fitted["sigma"]),
            "exact": (mu, sigma),
            "divergence_fitted": divergence_value(div, fitted["mu"], fitted["sigma"]),
            "divergence_exact": value,
            "estimate": fitted["estimate"],
            "trace": fitted["trace"],
        }
    return out


def plot(result: dict, path: str | Path) -> Path:
    """The target density, each divergence's fitted Gaussian (solid) and exact optimum (dashed), as a PNG."""
    fig, ax = axes(path, (7, 4))
    x = torch.linspace(-6, 6, 1201, dtype=torch.float64)
    ax.fill_between(x.numpy(), target_log_prob(x).exp().numpy(), color="0.85", label="target P")
    colours = {"kl": "tab:blue", "reverse_kl": "tab:red"}
    labels = {"kl": "KL(P‖Q)", "reverse_kl": "KL(Q‖P)"}
    for name, r in result.items():
        for (mu, sigma), style, what in ((r["fitted"], "-", "f-GAN"), (r["exact"], "--", "exact")):
            density = normal_log_prob(x, mu, math.log(sigma)).exp()
            ax.plot(x.numpy(), density.numpy(), style, color=colours.get(name),
                    label=f"{labels.get(name, name)}, {what}: μ={mu:.2f}, σ={sigma:.2f}")
    return save(fig, ax, path, xlabel="x", ylabel="density",
                title="One Gaussian fitted to two: forward KL covers, reverse KL seeks", dpi=120)
