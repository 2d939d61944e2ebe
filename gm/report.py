"""The leaderboard: one table per dataset (experiments × metrics) beside published rows.

Builds reports/leaderboard.md, a self-contained reports/index.html (plots inlined; an audio
evaluation's WAV clips inlined as players) and reports/metrics.json from the evaluation, training
and tuning outputs.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from gm.core.files import write_json
from gm.core.layout import EvalPaths, Layout, ReportPaths
from gm.featurizer import check_same_featurizer

# Published numbers (../shared/BENCHMARKS.md), shown beside ours on the same definitions.
REFERENCE = {
    "ring8": [
        {"experiment": "GAN (PacGAN Table 1)", "modes": 6.3, "hq_pct": 98.2, "rkl": 0.45},
        {"experiment": "PacGAN4 (PacGAN Table 1)", "modes": 7.8, "hq_pct": 95.9, "rkl": 0.07},
        {"experiment": "Unrolled GAN (VEEGAN Table 1)", "modes": 7.6, "hq_pct": 35.6},
        {"experiment": "VEEGAN (VEEGAN Table 1)", "modes": 8, "hq_pct": 52.9},
    ],
    "grid25": [
        {"experiment": "GAN (PacGAN Table 1)", "modes": 17.3, "hq_pct": 94.8, "rkl": 0.70},
        {"experiment": "PacGAN4 (PacGAN Table 1)", "modes": 24.8, "hq_pct": 93.6, "rkl": 0.04},
        {"experiment": "Unrolled GAN (VEEGAN Table 1)", "modes": 23.6, "hq_pct": 16},
        {"experiment": "VEEGAN (VEEGAN Table 1)", "modes": 24.6, "hq_pct": 40},
    ],
    # VEEGAN's setting (discriminator a quarter of DCGAN's size), 26,000 samples. The authors' README
    # (github.com/fjxmlzn/PacGAN) names this table PacGAN's Table 2 (Table 3 is the unrolled-GAN setting);
    # its first four rows are VEEGAN's Table 2.
    "stacked": [
        {"experiment": "DCGAN (PacGAN Table 2)", "modes_covered": 99, "mode_kl": 3.40},
        {"experiment": "ALI (PacGAN Table 2)", "modes_covered": 16, "mode_kl": 5.40},
        {"experiment": "Unrolled GAN (PacGAN Table 2)", "modes_covered": 48.7, "mode_kl": 4.32},
        {"experiment": "VEEGAN (PacGAN Table 2)", "modes_covered": 150, "mode_kl": 2.95},
        {"experiment": "PacDCGAN2 (PacGAN Table 2)", "modes_covered": 1000, "mode_kl": 0.06},
    ],
    "digits": [
        {"experiment": "uniform (BENCHMARKS.md, sklearn)", "test_bits_per_dim": 4.09},
        {"experiment": "full Gaussian (BENCHMARKS.md, sklearn)", "test_bits_per_dim": 2.98},
        {"experiment": "GMM k=5 (BENCHMARKS.md, sklearn)", "test_bits_per_dim": 2.74},
        {"experiment": "GMM k=10 (BENCHMARKS.md, sklearn)", "test_bits_per_dim": 2.87},
        {"experiment": "KDE bw=1.5 (BENCHMARKS.md, sklearn)", "test_bits_per_dim": 3.22},
    ],
}

COLUMNS = {  # metric -> header
    "seeds": "seeds", "modes": "modes", "hq_pct": "HQ %", "rkl": "reverse KL", "w1": "W1",
    "w1_floor": "W1 floor", "fd": "FD", "kid": "KID", "precision": "precision", "recall": "recall",
    "density": "density", "coverage": "coverage", "class_coverage": "class coverage",
    "class_entropy_ratio": "class entropy ratio", "modes_covered": "modes covered", "mode_kl": "mode KL",
    "modes_covered_test": "modes (perfect sampler)", "mode_kl_test": "mode KL (perfect sampler)",
    "classifier_score": "classifier score", "classifier_score_test": "classifier score (test data)",
    "factor_coverage": "factor coverage", "factor_kl": "factor KL", "on_grid": "on grid",
    "test_bits_per_dim": "test bits/dim",
    "test_nll_nats": "test NLL (nats)", "codebook_perplexity": "codebook perplexity",
    "codebook_perplexity_top": "perplexity (top codes)", "codebook_perplexity_bottom": "perplexity (bottom codes)",
    "samples_per_s": "samples/s",
}


def collect(root: Path) -> list[dict]:
    rows = []
    for path in Layout(root).eval_metrics():
        row = json.loads(path.read_text())
        samples = EvalPaths(path.parent).samples
        # samples first, then the family's extra views (reconstructions, density heat maps)
        row["_figures"] = sorted(path.parent.glob("*.png"), key=lambda f: (f != samples, f.name))
        row["_audio"] = sorted(EvalPaths(path.parent).audio.glob("*.wav"))  # audio data: clips to listen to
        rows.append(row)
    return rows


def _fmt(row: dict, key: str) -> str:
    """`mean ± std` over seeds where the row has a spread, the value alone otherwise."""
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        std = row.get(f"{key}_std")
        return f"{v:.4g} ± {std:.2g}" if std is not None else f"{v:.4g}"
    return str(v)


def tables(rows: list[dict]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """dataset -> (header, rows): our experiments and baselines, then the published references.

    Image metrics of one table must come from one featurizer: mixed hashes are refused.
    """
    out = {}
    for dataset in sorted({r["dataset"] for r in rows}):
        ours = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: (r.get("source") == "baseline",
                                                                                  r["experiment"]))
        check_same_featurizer({r["experiment"]: r.get("featurizer") for r in ours})
        refs = REFERENCE.get(dataset, [])
        cols = [c for c in COLUMNS if any(c in r for r in ours) or any(c in r for r in refs)]
        header = ["experiment", "family", "source"] + [COLUMNS[c] for c in cols]
        body = [[r["experiment"], r["family"], r.get("source", "")] + [_fmt(r, c) for c in cols] for r in ours]
        body += [[ref["experiment"], "published", ""] + [_fmt(ref, c) for c in cols] for ref in refs]
        out[dataset] = (header, body)
    return out


def featurizer_notes(root: Path, rows: list[dict]) -> dict[str, str]:
    """dataset -> a line naming the feature space its image or audio metrics live in."""
    notes = {}
    for dataset in sorted({r["dataset"] for r in rows if r.get("featurizer")}):
        path = Layout(root).featurizer_metrics(dataset)
        info = json.loads(path.read_text()) if path.is_file() else {}
        if "hash" in info:
            notes[dataset] = (f"Feature-space metrics (FD, KID, precision/recall, classes) in the space of the "
                              f"{dataset} featurizer {info['hash'][:16]} (test accuracy {info['test_accuracy']:.4f}).")
    return notes


INTRO = ("Ours on the test split of each dataset (mean ± std over seeds), scikit-learn baselines fitted "
         "on the same splits, then the published rows of BENCHMARKS.md (same definitions). Lower is better "
         "for W1, FD, KID, reverse KL, mode and factor KL and bits/dim.")


def markdown(tabs, notes: dict[str, str]) -> str:
    lines = ["# gm leaderboard", "", INTRO, ""]
    for dataset, (header, body) in tabs.items():
        lines += [f"## {dataset}", ""] + ([notes[dataset], ""] if dataset in notes else [])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        lines.append("")
    return "\n".join(lines)


def curves_plot(root: Path, out: Path) -> list[Path]:
    """Validation curves of every training run and every tuning trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    layout, report = Layout(root), ReportPaths(out)
    runs = layout.train_histories()
    if runs:
        fig, ax = plt.subplots(figsize=(7, 4))
        for p in runs:
            h = [r for r in json.loads(p.read_text()) if math.isfinite(r.get("val_score", math.inf))]
            for seed in sorted({r.get("seed", 0) for r in h}):
                pts = [r for r in h if r.get("seed", 0) == seed]
                ax.plot([r["step"] for r in pts], [r["val_score"] for r in pts], marker=".",
                        label=f"{p.parent.name} (seed {seed})")
        ax.set_xlabel("step")
        ax.set_ylabel("validation score (lower is better)")
        ax.set_yscale("symlog")
        ax.legend(fontsize=7)
        ax.set_title("training curves")
        fig.tight_layout()
        fig.savefig(report.training_curves, dpi=110)
        plt.close(fig)
        made.append(report.training_curves)
    for p in layout.tune_curves():
        fig, ax = plt.subplots(figsize=(7, 4))
        for trial, curve in json.loads(p.read_text()).items():
            pts = [c for c in curve if c.get("val_score") is not None and math.isfinite(c["val_score"])]
            ax.plot([c["step"] for c in pts], [c["val_score"] for c in pts], marker=".", label=trial)
        ax.set_xlabel("step")
        ax.set_ylabel("validation score")
        ax.set_title(f"tuning curves: {p.parent.name} (stopped trials end early)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        path = report.tuning_curves(p.parent.name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def rate_distortion_plots(root: Path, out: Path) -> list[Path]:
    """For every sweep of a VAE-like family: each trial's validation rate (KL) against its
    distortion (-E log p(x|z)) at its last report, labelled by the swept knobs (β for a β sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    made = []
    for p in Layout(root).tune_trials():
        df = pd.read_parquet(p)
        if not {"val_rate", "val_distortion"} <= set(df.columns):
            continue
        df = df[df["status"] == "ok"].dropna(subset=["val_rate", "val_distortion"])
        if df.empty:
            continue
        knobs = [c for c in df.columns if c.startswith("config.")]
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.scatter(df["val_rate"], df["val_distortion"])
        for _, r in df.iterrows():
            label = ", ".join(f"{c.rsplit('.', 1)[-1]}={r[c]:.3g}" if isinstance(r[c], float) else
                              f"{c.rsplit('.', 1)[-1]}={r[c]}" for c in knobs)
            ax.annotate(label, (r["val_rate"], r["val_distortion"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel("rate: KL(q(z|x) || p(z)), nats")
        ax.set_ylabel("distortion: -E log p(x|z), nats")
        ax.set_title(f"rate-distortion: {p.parent.name} (validation, last report)")
        fig.tight_layout()
        path = ReportPaths(out).rate_distortion(p.parent.name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _audio(path: Path) -> str:
    """A WAV file as an inline player, captioned with its name (sample-00, test-00, ...)."""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure class="clip"><audio controls preload="none" src="data:audio/wav;base64,{data}"></audio>'
            f"<figcaption>{html.escape(path.stem)}</figcaption></figure>")


def html_page(tabs, notes: dict[str, str], rows: list[dict], plots: list[Path], figures: list[Path]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>gm leaderboard</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:360px;margin:4px}"
             "figure.clip{display:inline-block;margin:2px 6px;font-size:80%}</style>",
             f"</head><body><h1>gm leaderboard</h1><p>{html.escape(INTRO)}</p>"]
    for dataset, (header, body) in tabs.items():
        note = f"<p>{html.escape(notes[dataset])}</p>" if dataset in notes else ""
        parts.append(f"<h2>{html.escape(dataset)}</h2>{note}<table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body]
        parts.append("</table><div>")
        parts += [_img(f) for r in rows if r["dataset"] == dataset for f in r["_figures"]]
        parts.append("</div>")
        for r in rows:
            if r["dataset"] == dataset and r.get("_audio"):
                parts.append(f"<h3>{html.escape(r['experiment'])}: listen</h3><div>"
                             + "".join(_audio(f) for f in r["_audio"]) + "</div>")
    if plots:
        parts.append("<h2>training and tuning curves</h2>" + "".join(_img(p) for p in plots))
    if figures:
        parts.append("<h2>reproduced figures</h2>" + "".join(_img(p) for p in figures))
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(root: Path, out: Path) -> dict:
    """Leaderboard, page, numbers and plots in `out` from the stage outputs under `root`; returns the numbers."""
    out.mkdir(parents=True, exist_ok=True)
    report = ReportPaths(out)
    rows = collect(root)
    if not rows:
        raise FileNotFoundError(f"{Layout(root).eval_root}: no metrics.json; run the evaluate stages first")
    tabs = tables(rows)
    notes = featurizer_notes(root, rows)
    report.leaderboard.write_text(markdown(tabs, notes))
    plots = curves_plot(root, out) + rate_distortion_plots(root, out)
    figures = sorted(report.figures.glob("*.png"))  # the figures stage's reproductions
    report.index.write_text(html_page(tabs, notes, rows, plots, figures))
    flat = {r["experiment"]: {k: v for k, v in r.items() if k in COLUMNS or k.removesuffix("_std") in COLUMNS}
            for r in rows}
    write_json(report.metrics, flat)
    return flat
