"""StyleGAN's style mixing (Karras et al. 2019, Fig. 3) and the truncation trick (StyleGAN Fig. 8, BigGAN
Fig. 2a) as figures of the evaluation: the evaluate stage writes style_mixing.png and truncation.png beside
samples.png, and the report shows every PNG there.

- Style mixing: n "source A" and n "source B" latents; each cell takes A's styles and B's at some layers:
  from a crossover layer k on (the mixing regularisation's cut, §3.1), or, as the paper's figure, one band
  of layers per row of B (coarse, middle, fine). The noise inputs are fixed (`StyleGAN.synthesize`), so a
  cell is a function of its styles alone: B's styles at every layer give B's image, at none A's.
- Truncation: the same latents at each ψ, one row per ψ. StyleGAN: w̄ + ψ (w - w̄) with fixed noise, so the
  row ψ = 0 is w̄'s image n times; BigGAN: z truncated to [-t, t], entries beyond t drawn again (a latent
  keeps its entries inside every threshold; the others change from row to row).

Images are in data space (`DataSpec.to_data`), drawn as samples.png draws them.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from gm.data.dataspec import DataSpec
from gm.evaluation import show_image
from gm.inference import sample_data
from gm.models.base import GenerativeModel
from gm.models.stylegan import StyleGAN
from gm.nn.scaled import truncate_w

PSIS = (1.0, 0.7, 0.5, 0.0)  # StyleGAN's ψ (Fig. 8 shows 1, 0.7, 0.5, 0, -0.5, -1)
THRESHOLDS = (2.0, 1.0, 0.5, 0.04)  # BigGAN's truncation thresholds, Fig. 2(a)
BANDS = ("coarse", "middle", "fine")
CELL_IN = 0.6  # inches per image, as samples.png
LABEL_IN = 0.9  # the left margin for row labels
TITLE_IN = 0.3
DPI = 110  # as samples.png


def supports_truncation(model: GenerativeModel) -> bool:
    """Whether the family's `sample` takes `truncation` (the test gm.inference.sample_data makes)."""
    return "truncation" in inspect.signature(model.sample).parameters


def default_truncations(model: GenerativeModel) -> tuple[float, ...]:
    """The sweep of the family's paper: StyleGAN's ψ, else BigGAN's thresholds on |z|."""
    return PSIS if isinstance(model, StyleGAN) else THRESHOLDS


def style_bands(num_ws: int) -> list[range]:
    """The style layers in three near-equal bands from the lowest resolution up (coarse, middle, fine); the
    paper's 1024² generator splits its 18 layers at 4²-8², 16²-32², 64²-1024²."""
    return [range(int(a[0]), int(a[-1]) + 1) if len(a) else range(0) for a in np.array_split(np.arange(num_ws), 3)]


def _span(layers: range) -> str:
    return f"{layers.start}-{layers.stop - 1}" if len(layers) > 1 else f"{layers.start}"


def _labels(model: GenerativeModel, n: int) -> torch.Tensor | None:
    """Every class in turn for a conditional model (as sample_data), None otherwise."""
    return torch.arange(n, device=model.device) % model.data.num_classes if model.capabilities.conditional else None


@torch.no_grad()
def style_mixing(model: StyleGAN, n: int = 5, seed: int = 0, crossover: int | None = None, bands: bool = False,
                 noise_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[range]]:
    """(a (n, *shape), b (n, *shape), grid (n, n, *shape), layers) in model space: grid[i, j] has A_i's styles
    except at layers[j], where it has B_j's. layers[j] is range(crossover, num_ws) (default num_ws // 2), or
    with `bands` the band of row j (rows split in order over coarse, middle, fine, as the paper's Fig. 3).
    A's latents are drawn from `seed`, then B's; noise from `noise_seed`, the same for every image."""
    num_ws = model.gen.num_ws
    g = torch.Generator().manual_seed(seed)
    y = _labels(model, n)
    with torch.no_grad(), model.ema_weights():  # the mapping network the model samples with
        ws_a = model.styles(n, y, g, mixing=False)  # (n, num_ws, W)
        ws_b = model.styles(n, y, g, mixing=False)
    if bands:
        per_band = style_bands(num_ws)
        layers = [per_band[k] for k, rows in enumerate(np.array_split(np.arange(n), 3)) for _ in rows]
    else:
        k = num_ws // 2 if crossover is None else crossover
        if not 0 <= k <= num_ws:
            raise ValueError(f"crossover: expected a layer in 0..{num_ws}, got {k}")
        layers = [range(k, num_ws)] * n
    idx = torch.arange(num_ws, device=ws_a.device).view(1, num_ws, 1)
    # (n, num_ws, W) per B_j: every A_i with B_j's styles at layers[j]
    cells = [torch.where((idx >= band.start) & (idx < band.stop), ws_b[j:j + 1], ws_a) for j, band in enumerate(layers)]
    ws = torch.stack(cells, 1).flatten(0, 1)  # (n·n, num_ws, W), A-major
    grid = model.synthesize(ws, noise_seed).view(n, n, *model.data.shape)
    return model.synthesize(ws_a, noise_seed), model.synthesize(ws_b, noise_seed), grid, layers


@torch.no_grad()
def truncation_rows(model: GenerativeModel, psis: Sequence[float], n: int = 8, seed: int = 0,
                    noise_seed: int = 0) -> np.ndarray:
    """(len(psis), n, *shape) in data space: the same latents from `seed` at each truncation. StyleGAN: its
    ws pulled towards w̄ with fixed noise (`noise_seed`); other families: `sample(..., truncation=t)`."""
    if not supports_truncation(model):
        raise ValueError(f"{type(model).__name__} has no truncation trick")
    if isinstance(model, StyleGAN):
        with torch.no_grad(), model.ema_weights():
            ws = model.styles(n, _labels(model, n), torch.Generator().manual_seed(seed), mixing=False)
        w_avg = model.w_avg.to(ws.dtype)
        rows = [model.data.to_data(model.synthesize(truncate_w(ws, w_avg, float(psi)), noise_seed)).cpu().numpy()
                for psi in psis]
    else:
        rows = [sample_data(model, model.data, n, seed=seed, truncation=psi) for psi in psis]
    return np.stack(rows).astype(np.float32)


def image_grid(path: str | Path, cells: list[list[np.ndarray | None]], spec: DataSpec, title: str,
               row_labels: Sequence[str] = ()) -> Path:
    """A rows × cols figure of data-space images (None: an empty cell), CELL_IN inches each, a left margin
    for row labels and a title strip: (LABEL_IN + cols·CELL_IN) × (TITLE_IN + rows·CELL_IN) inches at DPI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(cells), len(cells[0])
    width, height = LABEL_IN + cols * CELL_IN, TITLE_IN + rows * CELL_IN
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=LABEL_IN / width, right=1.0, bottom=0.0, top=1.0 - TITLE_IN / height,
                        wspace=0.05, hspace=0.05)
    for r, row in enumerate(cells):
        for c, img in enumerate(row):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if img is not None:
                show_image(ax, img, spec.levels)
        if r < len(row_labels):
            axes[r, 0].set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=8, y=1.0 - 0.05 * TITLE_IN / height)
    fig.savefig(path, dpi=DPI)  # no tight bbox: the size is the one documented above
    plt.close(fig)
    return path


def style_mixing_grid(model: StyleGAN, data_spec: DataSpec, path: str | Path, n: int = 5, seed: int = 0,
                      crossover: int | None = None, bands: bool = False, title: str = "style mixing") -> Path:
    """Karras et al. 2019, Fig. 3: the sources A along the top, the sources B down the left, and at row j,
    column i the image with A_i's styles and B_j's at the mixed layers (see `style_mixing`)."""
    a, b, grid, layers = style_mixing(model, n, seed, crossover, bands)
    to_np = lambda x: data_spec.to_data(x).cpu().numpy()  # noqa: E731
    a, b, grid = to_np(a), to_np(b), to_np(grid)
    num_ws = model.gen.num_ws
    names = dict(zip(style_bands(num_ws), BANDS)) if bands else {}
    labels = ["A", *(f"B {names.get(r, 'layers')} {_span(r)}" if len(r) else "B none" for r in layers)]
    cells = [[None, *a]] + [[b[j], *(grid[i, j] for i in range(n))] for j in range(n)]
    return image_grid(path, cells, data_spec, f"{title} (layers of {num_ws} taken from B)", labels)


def truncation_sweep(model: GenerativeModel, data_spec: DataSpec, path: str | Path,
                     psis: Sequence[float] | None = None, n: int = 8, seed: int = 0,
                     title: str = "truncation") -> Path:
    """One row per truncation (default: the family's paper's sweep), the same n latents in every row."""
    psis = default_truncations(model) if psis is None else tuple(psis)
    rows = truncation_rows(model, psis, n, seed)
    name = "ψ =" if isinstance(model, StyleGAN) else "|z| ≤"
    return image_grid(path, [list(r) for r in rows], data_spec, title, [f"{name} {p:g}" for p in psis])


def evaluation_figures(model: GenerativeModel, folder: str | Path, label: str, seed: int = 0) -> list[Path]:
    """The evaluate stage's figures of one model in `folder`: style_mixing.png for StyleGAN (the paper's
    bands), truncation.png for every family whose `sample` takes `truncation` (StyleGAN, BigGAN)."""
    folder = Path(folder)
    out = []
    if isinstance(model, StyleGAN):
        out.append(style_mixing_grid(model, model.data, folder / "style_mixing.png", seed=seed, bands=True,
                                     title=f"{label}: style mixing"))
    if supports_truncation(model):
        out.append(truncation_sweep(model, model.data, folder / "truncation.png", seed=seed,
                                    title=f"{label}: truncation"))
    return out
