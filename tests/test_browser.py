"""The UI in a real browser (gm.browser): headless Chromium on `make ui`'s server and on reports/index.html.

The walk over a real pipeline's store and report is tests/test_pipeline.py's
test_the_ui_and_the_report_show_what_a_person_looks_for (it reuses that module's repro, through
assert_browser_sees below). Here: the checks themselves, on a scratch store and a hand-made page, where
each one must find exactly what was left out.
"""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import pytest
from PIL import Image

from gm.browser import CARD_HEADING, CARD_SAMPLES, SHOTS, check_all, check_report, check_ui, chromium, mlflow_ui

pytestmark = pytest.mark.integration

WAIT_S = 60.0  # per page: the scratch store's pages render in seconds once the UI's bundle is loaded


def assert_screenshot(path: Path) -> None:
    """A PNG a person could read: window-sized and not one flat colour (a blank page would be)."""
    assert path.is_file(), f"{path}: no screenshot"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 800 and img.height >= 600, (path, img.format, img.size)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 16, f"{path}: {len(colours)} colours, a blank page"


def assert_browser_sees(root: Path) -> list[Path]:
    """`make ui-check` on a pipeline root: no findings, and every page's screenshot under reports/ui/."""
    result = check_all(root)
    assert not result.findings, "\n".join(result.findings)
    names = {p.name for p in result.screenshots}
    assert {"report-index.png", "models.png"} <= names, names
    assert any(n.startswith("version-") for n in names) and any(n.startswith("samples-") for n in names), names
    for path in result.screenshots:
        assert path.parent == root.resolve() / SHOTS
        assert_screenshot(path)
    return result.screenshots


# ------------------------------------------------------------------------------ reports/index.html


def write_wav(path: Path, seconds: float = 0.2, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 5))) for i in range(int(seconds * rate))))


def test_the_report_check_names_each_broken_part_and_passes_the_rest(tmp_path):
    page = tmp_path / "reports" / "index.html"
    page.parent.mkdir()
    Image.radial_gradient("L").save(page.parent / "curves.png")
    write_wav(page.parent / "clip.wav")
    page.write_text("""<!doctype html><html><body>
        <h2>digits</h2><table><tr><th>model</th></tr><tr><td>vae-digits</td></tr></table>
        <h2>ring8</h2><table><tr><th>model</th></tr></table>
        <img alt="curves" src="curves.png"> <img alt="lost figure" src="figures/lost.png">
        <audio controls preload="none" src="clip.wav"></audio>
        <audio controls preload="none"><source src="gone.wav"></audio>
        <a href="curves.png#top">curves</a> <a href="leaderboard.md">leaderboard</a>
        <a href="https://example.org/paper">paper</a> <a href="#digits">up</a>
        </body></html>""")
    shots = tmp_path / "shots"
    with chromium(WAIT_S) as driver:
        result = check_report(driver, page, shots, WAIT_S)
    text = "\n".join(result.findings)
    # what is broken, each named
    assert "table 2 (ring8) has no rows" in text, text
    assert "image 2 (lost figure) did not load" in text, text
    assert "'figures/lost.png'" in text and "'leaderboard.md'" in text and "'gone.wav'" in text, text
    assert "audio clip 2 (gone.wav) does not play" in text, text
    # and nothing else: the good table, image, clip and links, the external link and the anchor pass
    assert len(result.findings) == 6, text
    for fine in ("table 1", "image 1", "audio clip 1", "curves.png'", "example.org", "#digits"):
        assert fine not in text, (fine, text)
    assert [p.name for p in result.screenshots] == ["report-index.png"]
    assert_screenshot(result.screenshots[0])


def test_a_missing_report_is_a_finding(tmp_path):
    with chromium(WAIT_S) as driver:
        result = check_report(driver, tmp_path / "reports" / "index.html", tmp_path, WAIT_S)
    assert len(result.findings) == 1 and "no report here" in result.findings[0]


# ------------------------------------------------------------------------------ the MLflow UI


def scratch_store(root: Path) -> None:
    """Two registered models as gm's stages leave them (a champion version from a run, artifacts next to
    mlflow.db): gm-vae-digits with its card and card/samples.png, gm-wgan_gp-ring8 with neither."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("gm", artifact_location=(root / "mlartifacts").as_uri())
    figure = root / "samples.png"
    Image.effect_mandelbrot((96, 64), (-2, -1, 1, 1), 50).save(figure)
    for family, dataset, card in (("vae", "digits", True), ("wgan_gp", "ring8", False)):
        name = f"gm-{family}-{dataset}"
        run = client.create_run(exp, run_name=f"train/{family}-{dataset}")
        if card:
            client.log_artifact(run.info.run_id, str(figure), "card")
        client.log_text(run.info.run_id, "flavors: {}", "model/MLmodel")
        client.set_terminated(run.info.run_id)
        client.create_registered_model(name)
        v = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                        tags={"gm.family": family, "gm.dataset": dataset})
        if card:
            client.update_model_version(name, v.version, description=(
                f"# {CARD_HEADING}: {name} v{v.version}\n\n**{family}** on **{dataset}**: a paper\n"))
        client.set_registered_model_alias(name, "champion", v.version)


@pytest.mark.journey  # minutes: the slower tier; make test looks at the pipeline's own UI (tests/test_pipeline.py)
def test_the_ui_walk_passes_a_carded_champion_and_names_what_another_lacks(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    scratch_store(root)
    shots = root / SHOTS
    with mlflow_ui(root) as ui, chromium(WAIT_S) as driver:
        assert ui.url.startswith("http://127.0.0.1:")
        result = check_ui(driver, ui.url, root, shots, WAIT_S)
        pid = ui.process.pid
    assert ui.process.poll() is not None, f"mlflow ui (pid {pid}) still running after the block"
    text = "\n".join(result.findings)
    # the model without a card: its card and its samples are missing, each said once
    assert len(result.findings) == 2, text
    card, samples = result.findings
    assert "gm-wgan_gp-ring8/versions/1" in card and f'no "{CARD_HEADING}" heading' in card, card
    assert "never written" in card, card  # the store has none either: the card was not written
    assert CARD_SAMPLES in samples and "gm-wgan_gp-ring8" in samples and "in the store either" in samples, samples
    assert "gm-vae-digits" not in text, text  # the good one passes: listed, champion shown, card, image
    names = [p.name for p in result.screenshots]
    assert names == ["models.png",
                     "model-gm-vae-digits.png", "version-gm-vae-digits-v1.png", "run-gm-vae-digits.png",
                     "samples-gm-vae-digits.png",
                     "model-gm-wgan_gp-ring8.png", "version-gm-wgan_gp-ring8-v1.png", "run-gm-wgan_gp-ring8.png",
                     "samples-gm-wgan_gp-ring8.png"], names
    for path in result.screenshots:
        assert_screenshot(path)


def test_check_all_on_a_root_without_a_store_says_so(tmp_path):
    result = check_all(tmp_path, wait_s=WAIT_S)
    text = "\n".join(result.findings)
    assert "no report here" in text and "no MLflow store here" in text, text
