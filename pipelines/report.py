"""DVC stage `report`: reports/{leaderboard.md, index.html, metrics.json, *.png}, logged to MLflow.

Usage: python -m pipelines.report   (from the repository root)
"""

from __future__ import annotations

import argparse

from gm import stage, tracking
from gm.report import build_report


@stage.entry
def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    root = stage.root()
    params = stage.params(root)
    flat = build_report(root, root / "reports")
    tracking.setup(params.mlflow, root)
    with tracking.run("report", tracking.stage_tags("report", "report", root)):
        tracking.log_artifacts(root / "reports", "reports")
    print(f"report: {len(flat)} evaluated models -> reports/leaderboard.md, reports/index.html")


if __name__ == "__main__":
    main()
