"""The style-mixing grid and the truncation sweep (gm/figures/stylegan.py): cells against their sources with
the noise fixed, ψ = 0 as w̄'s image, BigGAN's thresholds, and the PNGs' sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gm.core.config import build
from gm.core.registry import FAMILIES
from gm.data.dataspec import DataSpec
from gm.figures.stylegan import (
    CELL_IN,
    DPI,
    LABEL_IN,
    THRESHOLDS,
    TITLE_IN,
    evaluation_figures,
    style_bands,
    style_mixing,
    style_mixing_grid,
    truncation_rows,
    truncation_sweep,
)
from gm.models.base import build_model
from gm.nn.scaled import NoiseInjection
from tests.helpers import DIGITS, perturb, seeded

RGB16 = DataSpec(shape=(3, 16, 16), kind="image", levels=256)


def tiny(family: str, data: DataSpec = DIGITS, **overrides):
    return build_model(family, build(FAMILIES[family].config_cls, overrides, f"test.{family}"), data).eval()


def model(family: str = "stylegan", data: DataSpec = DIGITS, **overrides):
    """A tiny untrained model, eval mode; StyleGAN with non-zero noise strengths and w̄ away from 0, so fixed
    noise and the pull towards w̄ are both tested."""
    torch.manual_seed(0)
    small = {"stylegan": {"hidden": 8, "z_dim": 6, "w_dim": 5}, "biggan": {"hidden": 8}}[family]
    m = tiny(family, data, **small, **overrides)
    if family == "stylegan":
        perturb(m, 0.3, seed=1)
        with torch.no_grad():
            m.w_avg.copy_(torch.randn(m.config.w_dim, generator=seeded(2)))
        assert all(bool(x.weight.abs().sum() > 0) for x in m.modules() if isinstance(x, NoiseInjection))
    return m


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG"
        return im.size  # (width, height)


def expected_size(rows: int, cols: int) -> tuple[float, float]:
    return DPI * (LABEL_IN + cols * CELL_IN), DPI * (TITLE_IN + rows * CELL_IN)


@pytest.mark.parametrize("data", [DIGITS, RGB16], ids=["digits", "rgb16"])
def test_crossover_at_the_ends_gives_the_sources(data):
    m = model(data=data)
    num_ws = m.gen.num_ws
    a, b, all_b, _ = style_mixing(m, n=3, seed=4, crossover=0)
    a2, b2, all_a, _ = style_mixing(m, n=3, seed=4, crossover=num_ws)
    torch.testing.assert_close(a, a2, rtol=0, atol=0)  # deterministic from the seed
    torch.testing.assert_close(b, b2, rtol=0, atol=0)
    assert not torch.allclose(a, b)
    for i in range(3):
        for j in range(3):
            torch.testing.assert_close(all_b[i, j], b[j], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(all_a[i, j], a[i], rtol=1e-5, atol=1e-5)


def test_a_crossover_in_between_mixes_and_bands_cover_every_layer():
    m = model(data=RGB16)
    num_ws = m.gen.num_ws  # 6: 4², 8², 16², two layers each
    a, b, grid, layers = style_mixing(m, n=3, seed=4, crossover=2)
    assert layers == [range(2, num_ws)] * 3
    assert not torch.allclose(grid[0, 1], a[0]) and not torch.allclose(grid[0, 1], b[1])
    bands = style_bands(num_ws)
    assert [list(r) for r in bands] == [[0, 1], [2, 3], [4, 5]]
    _, _, _, layers = style_mixing(m, n=5, seed=4, bands=True)
    assert layers == [bands[0], bands[0], bands[1], bands[1], bands[2]]
    with pytest.raises(ValueError, match="crossover"):
        style_mixing(m, n=2, crossover=num_ws + 1)


def test_psi_zero_is_the_mean_image_for_every_latent():
    m = model()
    rows = truncation_rows(m, (1.0, 0.5, 0.0), n=6, seed=3)
    assert rows.shape == (3, 6, *DIGITS.shape)
    np.testing.assert_array_equal(rows[2], np.broadcast_to(rows[2, :1], rows[2].shape))
    w_bar = m.w_avg[None, None].expand(1, m.gen.num_ws, -1)
    np.testing.assert_array_equal(rows[2, 0], DIGITS.to_data(m.synthesize(w_bar)).numpy()[0])
    assert len({r.tobytes() for r in rows[0]}) > 1  # ψ = 1: the latents differ
    # ψ = 1 is the plain sample's styles under the fixed noise: the same latents as sample() draws
    with m.ema_weights():  # the styles of the G the model samples with (its EMA)
        ws = m.styles(6, None, seeded(3), mixing=False)
    np.testing.assert_array_equal(rows[0], DIGITS.to_data(m.synthesize(ws)).numpy())


def test_biggan_sweeps_its_thresholds():
    m = model("biggan")
    rows = truncation_rows(m, THRESHOLDS, n=4, seed=1)
    assert rows.shape == (len(THRESHOLDS), 4, *DIGITS.shape) and np.isfinite(rows).all()
    np.testing.assert_array_equal(rows, truncation_rows(m, THRESHOLDS, n=4, seed=1))


def test_a_family_without_truncation_is_refused():
    class NoTrick:  # the check reads `sample`'s signature only
        def sample(self, n, generator=None, condition=None):
            raise AssertionError("not called")

    with pytest.raises(ValueError, match="no truncation"):
        truncation_rows(NoTrick(), (1.0,))


def test_pngs_have_the_grid_size(tmp_path):
    m = model()
    mix = style_mixing_grid(m, DIGITS, tmp_path / "mix.png", n=3, crossover=1)
    assert png_size(mix) == pytest.approx(expected_size(4, 4), abs=1)
    trunc = truncation_sweep(m, DIGITS, tmp_path / "trunc.png", n=5)
    assert png_size(trunc) == pytest.approx(expected_size(4, 5), abs=1)


def test_evaluation_figures_pick_by_family(tmp_path):
    written = evaluation_figures(model(), tmp_path / "sg", "sg")
    assert [p.name for p in written] == ["style_mixing.png", "truncation.png"]
    assert png_size(written[0]) == pytest.approx(expected_size(6, 6), abs=1)  # n = 5: A row + 5 B rows
    written = evaluation_figures(model("biggan"), tmp_path / "bg", "bg")
    assert [p.name for p in written] == ["truncation.png"]
    assert evaluation_figures(tiny("vae"), tmp_path / "vae", "vae") == []


def test_colour_images_are_shown_at_their_levels_not_clipped():
    # samples.png once drew 0..255 colour as all-saturated: imshow ignores vmin/vmax for RGB and clips to [0, 1]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gm.evaluation import show_image

    img = np.stack([np.full((4, 4), 0.0), np.full((4, 4), 51.0), np.full((4, 4), 255.0)])
    fig, ax = plt.subplots()
    show_image(ax, img, 256)
    shown = np.asarray(ax.get_images()[0].get_array())
    plt.close(fig)
    assert shown.shape == (4, 4, 3) and np.allclose(shown[0, 0], [0.0, 0.2, 1.0])
