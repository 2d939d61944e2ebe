"""DVC stage `report` (the work is gm.stages.report): reports/{leaderboard.md, index.html, metrics.json, *.png},
logged to MLflow.

Usage: python -m pipelines.report   (from the repository root)
"""

from __future__ import annotations

import argparse

from gm import stage
from gm.stages.report import report


@stage.entry
def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    flat = report(stage.root())
    print(f"report: {len(flat)} evaluated models -> reports/leaderboard.md, reports/index.html")


if __name__ == "__main__":
    main()
