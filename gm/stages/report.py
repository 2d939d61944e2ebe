"""Stage `report`: reports/{leaderboard.md, index.html, metrics.json, *.png}, logged to MLflow."""

from __future__ import annotations

from pathlib import Path

from gm import cards, stage, tracking
from gm.core.layout import Layout
from gm.report import build_report


def report(root: Path) -> dict:
    """Build the reports from every stage's outputs and log them to MLflow; returns the evaluated models."""
    params = stage.params(root)
    out = Layout(root).reports.dir
    flat = build_report(root, out)
    tracking.setup(params.mlflow, root)
    with tracking.run("report", tracking.stage_tags("report", "report", root)):
        tracking.log_artifacts(out, "reports")
    # every registered version's card again, now that baselines and champions have settled
    cards.write_cards(tracking.registered_name(e.family, e.dataset) for e in params.experiments.values())
    return flat
