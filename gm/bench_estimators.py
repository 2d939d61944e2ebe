"""The gradient estimators of the categorical VAE side by side on one batch (`make bench ARGS=estimators`).

    python -m gm.bench estimators [--steps 500] [--draws 300] [--batch 100] [--reference-draws 3000]

A CatVAE (20 ten-way latents, logistic decoder: the likelihood profile's) is trained on the prepared
digits for `--steps` with the Gumbel-softmax; then, on one fixed training batch and the same weights,
each estimator draws the encoder's gradient of −E_q[log p(x|z)] `--draws` times
(`gm.models.catvae.gradient_estimates`). Printed per estimator: the total variance (the trace of the
estimates' covariance, summed over the encoder's parameters), its ratio to the plain score function's,
and how far its mean lies from the true gradient, estimated by `--reference-draws` draws of the
unbiased score function with the learned baseline (relative error ‖mean − ref‖ / ‖ref‖ and cosine;
the score function's own figures are limited by the reference's noise, the relaxations' are their bias).
The control variates are set as training leaves them: the moving average at the mean of f over the
training split, the learned b_ψ(x) fitted by least squares with the rest of the model frozen.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gm import stage
from gm.core.config import build
from gm.data.io import data_spec, read_split
from gm.models.base import Batch
from gm.models.catvae import CatVAE, CatVAEConfig, gradient_estimates

VARIANTS = {  # label -> config overrides of the trained model
    "gumbel (tau 1.0)": {"estimator": "gumbel", "tau_start": 1.0, "tau_min": 1.0},
    "gumbel (tau 0.5)": {"estimator": "gumbel", "tau_start": 0.5, "tau_min": 0.5},
    "straight_through (tau 1.0)": {"estimator": "straight_through", "tau_start": 1.0, "tau_min": 1.0},
    "score_function, no baseline": {"estimator": "score_function", "baseline": "none"},
    "score_function, moving average": {"estimator": "score_function", "baseline": "moving_average"},
    "score_function, learned": {"estimator": "score_function", "baseline": "learned"},
}
BASE = {"n_latent": 20, "n_categories": 10, "decoder": "logistic"}


def variant(trained: CatVAE, overrides: dict, train_x: torch.Tensor, fit_steps: int) -> CatVAE:
    """The trained weights under another estimator, its control variate set as training leaves it."""
    model = CatVAE(build(CatVAEConfig, {**BASE, **overrides}, "bench"), trained.data)
    model.load_state_dict(trained.state_dict(), strict=False)  # the baseline's own parts are new
    if getattr(model, "baseline_mean", None) is None:
        return model.eval()
    with torch.no_grad():  # the moving average's fixed point: the mean of f over the training split
        f = torch.cat([model.log_px(x, model.posterior(x)[0]) for x in train_x.split(500)])
        model.baseline_mean.fill_(float(f.mean()) * (1 - model.config.baseline_decay))
        model.baseline_batches.fill_(10_000)  # the bias correction has long vanished
    if overrides.get("baseline") == "learned":
        opt = torch.optim.Adam(model.baseline_net.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        for _ in range(fit_steps):
            x = train_x[torch.randint(len(train_x), (128,), generator=g)]
            with torch.no_grad():
                f = model.log_px(x, model.posterior(x, None, g)[0])
            loss = (f - model.control_variate(x)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="gm.bench estimators", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--steps", type=int, default=500, help="Gumbel-softmax training steps before measuring")
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--reference-draws", type=int, default=3000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    root = stage.root()
    data_dir = stage.prepared_dir(args.dataset, root)
    spec = data_spec(data_dir)
    x, _ = read_split(Path(data_dir), "train")
    g = torch.Generator().manual_seed(args.seed)
    train_x = spec.to_model(torch.as_tensor(x), generator=g)
    torch.manual_seed(args.seed)
    model = CatVAE(build(CatVAEConfig, BASE, "bench"), spec)
    opt = torch.optim.Adam(model.parameters(), lr=model.config.lr)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        out = model.loss(Batch(train_x[torch.randint(len(train_x), (128,), generator=g)]), "vae")
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.after_step("vae")
    print(f"CatVAE {BASE} on {args.dataset}: {args.steps} Gumbel-softmax steps in {time.perf_counter() - t0:.0f} s, "
          f"relaxed ELBO {out.logs['relaxed_elbo']:.1f} nats")
    batch = train_x[torch.randperm(len(train_x), generator=g)[:args.batch]]
    models = {label: variant(model, o, train_x, 300) for label, o in VARIANTS.items()}
    ref = gradient_estimates(models["score_function, learned"], batch, args.reference_draws,
                             torch.Generator().manual_seed(args.seed + 1)).mean(0)
    print(f"encoder gradient of -E_q[log p(x|z)] on one batch of {args.batch}, {args.draws} draws each; "
          f"reference: {args.reference_draws} score-function draws (learned baseline)")
    print(f"  {'estimator':<32} {'total variance':>15} {'vs plain SF':>12} {'rel. error':>11} {'cosine':>7}")
    rows = {}
    for label, m in models.items():
        draws = gradient_estimates(m, batch, args.draws, torch.Generator().manual_seed(args.seed + 2))
        mean = draws.mean(0)
        rows[label] = (float(draws.var(0).sum()), float((mean - ref).norm() / ref.norm()),
                       float(torch.nn.functional.cosine_similarity(mean, ref, dim=0)))
    plain = rows["score_function, no baseline"][0]
    for label, (total, err, cos) in rows.items():
        print(f"  {label:<32} {total:>15.4g} {total / plain:>12.3g} {err:>11.3f} {cos:>7.3f}")


if __name__ == "__main__":
    main()
