"""Stage `figures`: the experiments the literature argues with, reproduced as figures.

- reports/figures/mode_seeking.{png,json}: forward vs reverse KL f-GANs fitting one Gaussian
  to a mixture of two (mode covering against mode seeking), beside the exact optima.
- reports/figures/grad_norms.{png,json}: WGAN-GP's Figure 1b, critic gradient norms through
  the layers with weight clipping at c ∈ {0.1, 0.01, 0.001} against the gradient penalty.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gm import stage, tracking
from gm.figures import grad_norms, mode_seeking
from gm.core.files import write_json
from gm.core.layout import Layout


def figures(root: Path) -> Path:
    """Run both experiments, write their figures and numbers, log them to MLflow; returns their folder."""
    params = stage.params(root)
    out = Layout(root).reports.figures
    torch.set_num_threads(1)  # small nets: threads only add overhead
    seeking = mode_seeking.run(seed=0)
    mode_seeking.plot(seeking, out / "mode_seeking.png")
    write_json(out / "mode_seeking.json", {k: {m: v for m, v in r.items() if m != "trace"} for k, r in seeking.items()})
    norms = grad_norms.run(seed=0)
    grad_norms.plot(norms, out / "grad_norms.png")
    write_json(out / "grad_norms.json", norms)
    tracking.setup(params.mlflow, root)
    with tracking.run("figures", tracking.stage_tags("figures", "figures", root)):
        tracking.log_artifacts(out, "figures")
    return out
