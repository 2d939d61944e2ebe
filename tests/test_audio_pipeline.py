"""The audio modality end to end: one `gm repro` of a tiny audio profile (the generated notes, a WaveNet
on them, no sweep) in a copy of the repo, then the prepared clips, the featurizer, the likelihood in bits
per sample beside the baselines, the WAV players in the report and the registered sampler from a fresh
process. The real DVC, Ray Train, MLflow and registry, as `make run` uses them."""

from __future__ import annotations

import base64
import io
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from gm.core.layout import Layout, baseline_label
from gm.data.audio import mu_law_decode
from tests.helpers import copy_repo, tiny_params
from tests.test_pipeline import Repro, repro_in, run

LAYOUT = Layout(Path())  # paths relative to a pipeline root
RATE, T = 8000, 400  # 0.05 s clips: seconds of training, a few of sampling

# the second modality end to end (a DVC pipeline of its own, minutes): the slower tier, make test-chaos
pytestmark = [pytest.mark.integration, pytest.mark.journey]


def audio_params() -> dict:
    return tiny_params(
        data={"seed": 0, "val_fraction": 0.1, "test_fraction": 0.2,
              "datasets": {"notes": {"source": "notes", "n": 300, "sample_rate": RATE, "duration": T / RATE}}},
        featurize={"epochs": 15, "lr": 0.003, "channels": [16, 32], "feature_dim": 32},
        train={"steps": 40, "batch_size": 16, "eval_every": 20, "val_samples": 60, "seeds": 1,
               "scaling": {"num_workers": 1}},
        experiments={"wavenet-notes": {"family": "wavenet", "dataset": "notes",
                                       "model": {"residual_channels": 8, "dilation_channels": 8, "skip_channels": 16,
                                                 "layers_per_stack": 5, "stacks": 1}}},
        tune={"sweeps": {}},  # none: the report must still run
        evaluate={"n_samples": 60, "iwae_k": 4, "baseline_seeds": 1, "kid_subsets": 5, "kid_subset_size": 30},
    )


@pytest.fixture(scope="module")
def repro(tmp_path_factory) -> Repro:
    return repro_in(copy_repo(tmp_path_factory.mktemp("audio") / "repo"), audio_params())


def test_the_notes_are_prepared_as_audio(repro):
    meta = repro.json(LAYOUT.prepared("notes") / "meta.json")
    assert meta["kind"] == "audio" and meta["shape"] == [1, T] and meta["levels"] == 256
    assert meta["sample_rate"] == RATE and meta["num_classes"] == 5


def test_the_featurizer_tells_the_timbres_apart(repro):
    got = repro.json(LAYOUT.featurizer_metrics("notes"))
    assert got["test_accuracy"] > 0.6, got  # chance: 0.2


def test_wavenet_is_scored_in_bits_per_sample_beside_the_baselines(repro):
    wavenet = repro.json(LAYOUT.eval("wavenet-notes").metrics)
    assert 0 < wavenet["test_bits_per_dim"] < 8.0, wavenet  # 8 bits: the uniform over 256 levels
    for key in ("fd", "kid", "precision", "recall", "samples_per_s"):
        assert np.isfinite(wavenet[key]), key
    gmm = repro.json(LAYOUT.eval(baseline_label("gmm", "notes")).metrics)
    assert np.isfinite(gmm["test_bits_per_dim"]) and np.isfinite(gmm["fd"])


def test_the_report_plays_samples_and_test_clips(repro):
    clips = sorted(repro.path(LAYOUT.eval("wavenet-notes").audio).glob("*.wav"))
    assert {c.stem.split("-")[0] for c in clips} == {"sample", "test"}
    with wave.open(str(clips[0])) as w:
        assert w.getframerate() == RATE and w.getnframes() == T and w.getsampwidth() == 2
    page = repro.path(LAYOUT.reports.index).read_text()
    players = page.count('<audio controls')
    assert players >= len(clips)
    start = page.index("data:audio/wav;base64,") + len("data:audio/wav;base64,")
    wav = base64.b64decode(page[start:page.index('"', start)])
    with wave.open(io.BytesIO(wav)) as w:
        assert w.getframerate() == RATE and w.getnframes() == T
    assert "notes" in repro.path(LAYOUT.reports.leaderboard).read_text()


def test_the_registered_wavenet_samples_clips_from_a_fresh_process(repro, tmp_path):
    if repro.failure:
        pytest.fail(f"not checked: {repro.failure}", pytrace=False)
    out = tmp_path / "clips.npy"
    run([sys.executable, "-m", "gm.cli", "--root", str(repro.root), "sample", "models:/gm-wavenet-notes@champion",
         "-n", "3", "--seed", "1", "--out", str(out)], repro.root)
    x = np.load(out)
    assert x.shape == (3, 1, T) and set(np.unique(x)) <= set(range(256))
    assert np.abs(mu_law_decode(x)).max() <= 1.0
