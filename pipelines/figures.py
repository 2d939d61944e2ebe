"""DVC stage `figures` (the work is gm.stages.figures): mode seeking and WGAN-GP gradient norms.

Usage: python -m pipelines.figures   (from the repository root)
"""

from __future__ import annotations

import argparse

from gm import stage
from gm.stages.figures import figures


@stage.entry
def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    print(f"figures -> {figures(stage.root())}")


if __name__ == "__main__":
    main()
