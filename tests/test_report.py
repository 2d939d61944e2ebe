"""The leaderboard: mean ± std, published rows beside ours, one featurizer per table."""

from __future__ import annotations

import json

import pytest

from gm.core.layout import Layout
from gm.evaluation import aggregate
from gm.report import build_report, markdown, tables


def row(name, dataset="digits", featurizer="f" * 64, **metrics):
    return {"experiment": name, "family": name.split("-")[0], "dataset": dataset, "source": "train",
            "featurizer": featurizer, **metrics}


def test_aggregate_gives_mean_and_sample_std_over_seeds():
    agg = aggregate({0: {"fd": 1.0, "w1": 3.0}, 1: {"fd": 3.0, "w1": 3.0}, 2: {"fd": 5.0}})
    assert agg["fd"] == 3.0 and agg["fd_std"] == pytest.approx(2.0)  # sample std of 1, 3, 5
    assert "w1" not in agg  # only metrics every seed has
    assert agg["seeds"] == 3 and agg["per_seed"]["2"] == {"fd": 5.0}


def test_tables_show_spread_and_published_rows():
    tabs = tables([row("vae-digits", test_bits_per_dim=2.5, test_bits_per_dim_std=0.05, seeds=2)])
    header, body = tabs["digits"]
    assert "test bits/dim" in header
    cells = dict(zip(header, body[0]))
    assert cells["test bits/dim"] == "2.5 ± 0.05"
    assert any("GMM k=5" in r[0] and "2.74" in r for r in body)  # BENCHMARKS.md beside ours
    assert "PacGAN" in markdown(tables([row("gan-ring8", dataset="ring8", featurizer=None, modes=8.0)]), {})


def test_numbers_from_different_featurizers_are_refused():
    with pytest.raises(ValueError, match="different featurizers"):
        tables([row("vae-digits", fd=1.0), row("gan-digits", featurizer="a" * 64, fd=2.0)])


def test_build_report_writes_markdown_html_and_metrics(tmp_path):
    for r in (row("vae-digits", fd=1.5, fd_std=0.1, seeds=2), row("gan-ring8", dataset="ring8", featurizer=None,
                                                                  modes=7.0, hq_pct=90.0, rkl=0.1)):
        out = Layout(tmp_path).eval(r["experiment"])
        out.dir.mkdir(parents=True)
        out.metrics.write_text(json.dumps(r))
    report = Layout(tmp_path).reports
    flat = build_report(tmp_path, report.dir)
    assert flat["vae-digits"] == {"fd": 1.5, "fd_std": 0.1, "seeds": 2}
    html = report.index.read_text()
    assert "<table>" in html and "1.5 ± 0.1" in html and "PacGAN" in html
    assert "## ring8" in report.leaderboard.read_text()


def test_rate_distortion_plot_for_sweeps_that_report_rate_and_distortion(tmp_path):
    import pandas as pd

    from gm.report import rate_distortion_plots

    beta, clip = Layout(tmp_path).tune("beta"), Layout(tmp_path).tune("clip")
    beta.dir.mkdir(parents=True)
    clip.dir.mkdir(parents=True)
    pd.DataFrame({"config.model.beta": [0.5, 1.0, 4.0], "status": ["ok", "ok", "error"],
                  "val_rate": [30.0, 20.0, None], "val_distortion": [50.0, 60.0, None]}
                 ).to_parquet(beta.trials)
    pd.DataFrame({"config.model.clip": [0.01], "status": ["ok"]}).to_parquet(clip.trials)
    made = rate_distortion_plots(tmp_path, tmp_path)
    assert [p.name for p in made] == ["rate_distortion_beta.png"]  # a GAN sweep has no rate
    assert made[0].stat().st_size > 1000
