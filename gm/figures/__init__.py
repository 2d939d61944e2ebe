"""The experiments the literature argues with, reproduced as figures: each module a pure `run` and a
`plot`; the `figures` stage draws them."""

from __future__ import annotations

from pathlib import Path


def axes(path: str | Path, figsize: tuple[float, float]):
    """(fig, ax) of a fresh matplotlib figure (headless backend), with path's folder made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return plt.subplots(figsize=figsize)


def save(fig, ax, path: str | Path, *, xlabel: str, ylabel: str, title: str, dpi: int) -> Path:
    """Label, lay out and write the figure, then free it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)
