"""The audio modality: the generated `notes` set, the `wav_folder` importer, the 1-D featurizer, the
feature-space metrics on audio, the spectrogram and the report's audio players."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gm.core.config import ConfigError
from gm.core.layout import Layout
from gm.data import audio
from gm.data.audio import mu_law_decode, mu_law_encode
from gm.data.dataspec import DataSpec
from gm.data.importers import read_wav
from gm.data.io import read_meta, read_split, write_splits
from gm.data.sources import build_source, source_hash
from gm.evaluation import (EvaluateParams, FeatureSpace, compute_metrics, evaluation_inputs,
                           plot_samples, write_audio_clips)
from gm.featurizer import (DB_CENTRE, DB_SCALE, FeatureNet, FeaturizerConfig, featurizer_hash, features,
                           load_featurizer, log_spectrogram, predict, save_featurizer, train_featurizer)
from gm.metrics.images import fd
from gm.models.base import Capabilities
from gm.report import build_report
from gm.training.validate import validation_metric

torch.set_num_threads(1)

RATE = 8000
T = 2000
NOTES = DataSpec(shape=(1, T), kind="audio", num_classes=5, levels=256)


def src(cfg: dict):
    return build_source("ds", cfg)


def notes(n: int, seed: int, **cfg):
    return src({"source": "notes", "n": n, **cfg}).load(Path("."), seed)


def power_spectrum(wave_: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(freqs, |rfft|²) of a Hann-windowed waveform."""
    p = np.abs(np.fft.rfft(wave_ * np.hanning(len(wave_)))) ** 2
    return np.fft.rfftfreq(len(wave_), 1 / rate), p


def centroid(wave_: np.ndarray, rate: int) -> float:
    f, p = power_spectrum(wave_, rate)
    return float((f * p).sum() / p.sum())


def band_power(wave_: np.ndarray, rate: int, hz: float, width: float = 5.0) -> float:
    f, p = power_spectrum(wave_, rate)
    return float(p[np.abs(f - hz) <= width].sum())


# ------------------------------------------------------------------------------ the notes set


@pytest.fixture(scope="module")
def small():
    """300 clips (60 per timbre) at the defaults, seed 0, with their generating details."""
    x, y, details = audio.generate_notes(300, RATE, 0.25, np.random.default_rng(0))
    return x, y, details


def test_notes_are_deterministic_labelled_levels_of_the_right_shape():
    x, y, info = notes(40, 3)
    x2, y2, _ = notes(40, 3)
    x3, _, _ = notes(40, 4)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(x, x3)
    assert x.shape == (40, 1, T) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.round(x))
    assert np.bincount(y).tolist() == [8] * 5  # balanced over the five timbres
    assert info["kind"] == "audio" and info["shape"] == [1, T] and info["levels"] == 256
    assert info["num_classes"] == 5 and info["class_names"] == list(audio.TIMBRES)
    assert info["sample_rate"] == RATE and info["source_files"] == []
    # a note is audible: its peak is well above the noise floor (μ-law level 128 is silence)
    assert (np.abs(x - 127.5).max(axis=(1, 2)) > 60).all()


def test_sample_rate_and_duration_set_T():
    x, _, info = notes(5, 0, sample_rate=16000, duration=0.1)
    assert x.shape == (5, 1, 1600) and info["shape"] == [1, 1600] and info["sample_rate"] == 16000


@pytest.mark.parametrize("cfg, field", [
    ({"duration": 0.3333}, "duration"),  # 2666.4 samples
    ({"duration": 0}, "duration"),
    ({"sample_rate": 7999}, "sample_rate"),
    ({"sample_rate": 22050}, "sample_rate"),
    ({"n": 0}, "n"),
    ({"noise": -0.1}, "noise"),
    ({"timbres": 3}, "timbres"),
])
def test_bad_notes_config_names_the_field(cfg, field):
    with pytest.raises(ConfigError, match=rf"^data\.datasets\.ds\.{field}: "):
        src({"source": "notes", **cfg})


@pytest.mark.parametrize("cfg, field", [
    ({"crop": "end"}, "crop"),
    ({"duration": 0.00001}, "duration"),
    ({"sample_rate": 0}, "sample_rate"),
])
def test_bad_wav_folder_config_names_the_field(cfg, field):
    with pytest.raises(ConfigError, match=rf"^data\.datasets\.ds\.{field}: "):
        src({"source": "wav_folder", "path": "w", **cfg})


def test_source_hash_follows_the_params_and_the_seed():
    cfg = src({"source": "notes", "n": 10})
    _, _, info = cfg.load(Path("."), 0)
    h = source_hash(cfg, info, Path("."), 0)
    assert h == source_hash(cfg, info, Path("."), 0)
    assert h != source_hash(cfg, info, Path("."), 1)
    assert h != source_hash(src({"source": "notes", "n": 11}), info, Path("."), 0)


def test_a_prepared_notes_set_round_trips(tmp_path):
    x, y, info = notes(50, 0)
    meta = write_splits(tmp_path / "notes", x, y, info, 0, 0.2, 0.2, "h")
    assert meta["kind"] == "audio" and meta["shape"] == [1, T] and meta["class_names"] == list(audio.TIMBRES)
    back = np.concatenate([read_split(tmp_path / "notes", s)[0] for s in ("train", "val", "test")])
    assert back.shape == (50, 1, T)
    np.testing.assert_array_equal(np.sort(back.reshape(50, -1), axis=0), np.sort(x.reshape(50, -1), axis=0))
    assert read_meta(tmp_path / "notes")["levels"] == 256


# ------------------------------------------------------------------------------ the timbres


def one(timbre: str, f0: float, seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    return audio.synthesize(timbre, f0, int(seconds * rate), rate, np.random.default_rng(0), release_at=10.0)


def test_karplus_strong_is_tuned_by_its_fractional_delay():
    # 8000 / 440 = 18.18 samples per period: an integer delay line alone would play 8000/18.5 = 432 Hz
    for f0 in (440.0, 523.25, 261.63):
        f, p = power_spectrum(one("string", f0), RATE)
        peak = f[np.argmax(p * (f < 1.5 * f0))]
        assert abs(peak - f0) < 0.005 * f0, (f0, peak)


def test_string_loses_its_high_harmonics_first():
    w = one("string", 220.0)
    early, late = w[: RATE // 10], w[RATE // 2: RATE // 2 + RATE // 10]
    assert centroid(early, RATE) > 1.3 * centroid(late, RATE)
    assert np.abs(late).max() < np.abs(early).max()


def test_clarinet_has_odd_harmonics_only():
    w = one("clarinet", 250.0)
    odd = [band_power(w, RATE, k * 250.0) for k in (1, 3, 5)]
    even = [band_power(w, RATE, k * 250.0) for k in (2, 4, 6)]
    assert min(odd) > 1e4 * max(even)
    # square wave: harmonic k at 1/k, so power ratio 9 between the 1st and the 3rd
    assert odd[0] / odd[1] == pytest.approx(9.0, rel=0.05)


def test_bell_partials_are_inharmonic():
    f0 = 300.0
    w = one("bell", f0)
    f, p = power_spectrum(w, RATE)
    peak = f[np.argmax(p)] / f0
    assert min(abs(peak - r) for r, *_ in audio.BELL_PARTIALS) < 0.01
    assert abs(peak - round(peak)) > 0.05  # not a harmonic
    assert band_power(w, RATE, f0) < 1e-3 * band_power(w, RATE, 1.19 * f0)  # nothing at the nominal pitch


def test_brass_brightens_as_it_gets_louder():
    w = audio.synthesize("brass", 200.0, RATE, RATE, np.random.default_rng(0), release_at=10.0)
    attack = audio.ADSR["brass"][0] * 0.7  # the shortest attack the ±30 % draw allows
    start = w[: int(attack * RATE / 2)]  # the first half of the attack: quiet
    held = w[int(0.2 * RATE): int(0.3 * RATE)]
    assert centroid(start, RATE) < 0.85 * centroid(held, RATE)


def test_timbres_differ_in_spectral_centroid(small):
    x, y, details = small
    wave_ = mu_law_decode(x[:, 0])
    ratio = np.array([centroid(w, RATE) for w in wave_]) / details["f0"]  # centroid in harmonics of the pitch
    mean = {name: ratio[y == k].mean() for k, name in enumerate(audio.TIMBRES)}
    assert mean["flute"] < 1.1  # a sine: all its power at the pitch
    for bright in ("clarinet", "brass", "string"):
        assert mean[bright] > mean["flute"] + 0.2, mean


# ------------------------------------------------------------------------------ wav_folder


def write_wav16(path: Path, frames: np.ndarray, rate: int = RATE) -> np.ndarray:
    """frames (n,) or (n, channels) in [-1, 1] -> a 16-bit WAV written by the standard library;
    returns the waveform the file holds (the int16 values / 32768)."""
    frames = np.asarray(frames, dtype=np.float64)
    frames = frames[:, None] if frames.ndim == 1 else frames
    pcm = np.round(frames * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return pcm.astype(np.float64) / 32768


def riff(fmt_tag: int, bits: int, channels: int, rate: int, payload: bytes, extensible: bool = False) -> bytes:
    """A WAV file built by hand (the `wave` module writes integer PCM only)."""
    block = channels * bits // 8
    fmt = (fmt_tag if not extensible else 0xFFFE).to_bytes(2, "little") + channels.to_bytes(2, "little") \
        + rate.to_bytes(4, "little") + (rate * block).to_bytes(4, "little") + block.to_bytes(2, "little") \
        + bits.to_bytes(2, "little")
    if extensible:
        fmt += (22).to_bytes(2, "little") + bits.to_bytes(2, "little") + (0).to_bytes(4, "little") \
            + fmt_tag.to_bytes(2, "little") + bytes(14)
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + len(payload).to_bytes(4, "little") \
        + payload + (b"\0" if len(payload) % 2 else b"")
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def test_a_labelled_wav_folder_round_trips_to_mu_law(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(3000) / RATE
    held = {}
    held["hum/a.wav"] = write_wav16(tmp_path / "w/hum/a.wav", 0.5 * np.sin(2 * math.pi * 220 * t))[:, 0]
    stereo = write_wav16(tmp_path / "w/hum/b.wav", np.stack([0.3 * np.sin(2 * math.pi * 330 * t),
                                                            0.1 * rng.standard_normal(3000)], 1))
    held["hum/b.wav"] = stereo.mean(1)
    held["zap/c.wav"] = write_wav16(tmp_path / "w/zap/c.wav", 0.8 * rng.uniform(-1, 1, 1500))[:, 0]  # short: padded
    (tmp_path / "w/zap/notes.txt").write_text("not audio")  # ignored: not .wav
    x, y, info = src({"source": "wav_folder", "path": "w"}).load(tmp_path, 0)
    assert x.shape == (3, 1, T) and y.tolist() == [0, 0, 1]
    assert info["kind"] == "audio" and info["class_names"] == ["hum", "zap"] and info["num_classes"] == 2
    assert info["source_files"] == ["w/hum/a.wav", "w/hum/b.wav", "w/zap/c.wav"]
    for row, name in zip(x, ("hum/a.wav", "hum/b.wav", "zap/c.wav")):
        want = mu_law_encode(np.concatenate([held[name], np.zeros(T)])[:T])
        assert np.abs(row[0] - want).max() <= 1, name
    assert (x[2, 0, 1500:] == mu_law_encode(0.0)).all()  # the padding is silence
    # crop: center keeps the middle T of the 3000 samples
    xc, _, _ = src({"source": "wav_folder", "path": "w", "crop": "center"}).load(tmp_path, 0)
    assert np.abs(xc[0, 0] - mu_law_encode(held["hum/a.wav"][500:2500])).max() <= 1


def test_an_unlabelled_wav_folder(tmp_path):
    write_wav16(tmp_path / "w/one.wav", np.zeros(2000))
    x, y, info = src({"source": "wav_folder", "path": "w"}).load(tmp_path, 0)
    assert y is None and x.shape == (1, 1, T) and "class_names" not in info and info["num_classes"] is None


@pytest.mark.parametrize("tag, bits, extensible", [(1, 8, False), (1, 24, False), (1, 32, False), (3, 32, False),
                                                   (3, 64, False), (1, 24, True), (3, 32, True)])
def test_wav_sample_formats(tmp_path, tag, bits, extensible):
    values = np.array([0.0, 0.5, -0.5, 0.25, -1.0])
    if tag == 3:
        payload = values.astype("<f4" if bits == 32 else "<f8").tobytes()
    elif bits == 8:
        payload = np.round(values * 128 + 128).clip(0, 255).astype(np.uint8).tobytes()
    else:
        ints = np.round(values * 2.0 ** (bits - 1)).astype(np.int64)
        payload = b"".join(int(v).to_bytes(bits // 8, "little", signed=True) for v in ints)
    (tmp_path / "a.wav").write_bytes(riff(tag, bits, 1, 16000, payload, extensible))
    got = read_wav(tmp_path / "a.wav")
    assert got.sample_rate == 16000 and got.bits == bits and got.channels == 1
    np.testing.assert_allclose(got.waveform, values, atol=1e-12)


def test_wav_folder_refusals_name_the_file(tmp_path):
    write_wav16(tmp_path / "rate/a.wav", np.zeros(100), rate=16000)
    with pytest.raises(ValueError, match=r"rate/a\.wav: sample rate 16000 Hz; expected 8000 Hz"):
        src({"source": "wav_folder", "path": "rate"}).load(tmp_path, 0)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/x.wav").write_bytes(b"\x89PNG\r\n\x1a\n not a wav at all")
    with pytest.raises(ValueError, match=r"bad/x\.wav: not a WAV file"):
        src({"source": "wav_folder", "path": "bad"}).load(tmp_path, 0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.txt").write_text("nothing here")
    with pytest.raises(ValueError, match=r"empty: no WAV files found"):
        src({"source": "wav_folder", "path": "empty"}).load(tmp_path, 0)
    with pytest.raises(FileNotFoundError, match=r"nowhere: folder not found"):
        src({"source": "wav_folder", "path": "nowhere"}).check(tmp_path)
    (tmp_path / "alaw").mkdir()
    (tmp_path / "alaw/a.wav").write_bytes(riff(6, 8, 1, 8000, bytes(10)))  # A-law: not supported
    with pytest.raises(ValueError, match=r"alaw/a\.wav: format tag 0x0006 with 8 bits"):
        src({"source": "wav_folder", "path": "alaw"}).load(tmp_path, 0)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut/a.wav").write_bytes(riff(1, 16, 1, 8000, bytes(10))[:30])  # cut inside 'fmt '
    with pytest.raises(ValueError, match=r"cut/a\.wav: truncated 'fmt ' chunk"):
        src({"source": "wav_folder", "path": "cut"}).load(tmp_path, 0)


# ------------------------------------------------------------------------------ spectrogram


def test_the_spectrogram_of_a_sine_peaks_at_its_bin_with_the_closed_form_power():
    n_fft, a = audio.STFT_SIZE, 0.5
    f = 32 * RATE / n_fft  # 1000 Hz: bin 32 exactly
    freqs, times, db = audio.spectrogram(a * np.sin(2 * math.pi * f * np.arange(T) / RATE), RATE)
    assert db.shape == (n_fft // 2 + 1, len(times)) and freqs[32] == f
    assert (db.argmax(axis=0) == 32).all()
    np.testing.assert_allclose(db[32], 10 * np.log10(a * a * n_fft / 6), atol=1e-6)  # (a·N/4)² / (3N/8)
    # and at another rate, the peak moves to that rate's bin of the same frequency
    freqs16, _, db16 = audio.spectrogram(a * np.sin(2 * math.pi * f * np.arange(4000) / 16000), 16000)
    assert freqs16[db16.mean(axis=1).argmax()] == f


def test_the_featurizer_hears_the_spectrogram_of_the_decoded_levels(small):
    x, _, _ = small
    net = FeatureNet(NOTES, 5, FeaturizerConfig())
    wave_ = torch.from_numpy(mu_law_decode(x[:4, 0])).double()
    ours = log_spectrogram(wave_).numpy() * DB_SCALE + DB_CENTRE
    _, _, db = audio.spectrogram(wave_.numpy(), RATE)
    np.testing.assert_allclose(ours, db, atol=1e-6)
    # the net's input mapping: levels -> [-1, 1] (companded) -> waveform, without noise
    y = net.normalise(torch.from_numpy(x[:4]))
    np.testing.assert_allclose(y.numpy(), x[:4] / 255 * 2 - 1, atol=1e-6)


# ------------------------------------------------------------------------------ featurizer and metrics


@pytest.fixture(scope="module")
def featurized():
    """A featurizer trained on 500 notes (validated on 100), and 400 held-out test clips."""
    x, y, _ = audio.generate_notes(1000, RATE, 0.25, np.random.default_rng(11))
    cfg = FeaturizerConfig(channels=(16, 32), feature_dim=32, epochs=6, lr=3e-3)
    net, fit = train_featurizer(x[:500], y[:500], x[500:600], y[500:600], NOTES, 5, cfg)
    return net, fit, x[600:], y[600:]


def test_the_featurizer_classifies_held_out_notes(featurized):
    net, fit, x, y = featurized
    accuracy = (predict(net, x) == y).mean()
    assert accuracy > 0.85, accuracy  # chance is 0.2; about 0.97 measured
    assert features(net, x[:7]).shape == (7, 32)


def test_an_audio_featurizer_saves_loads_and_hashes_its_kind(featurized, tmp_path):
    net, _, x, _ = featurized
    digest = save_featurizer(net, tmp_path / "model", {"test_accuracy": 0.9})
    loaded, h = load_featurizer(tmp_path / "model")
    assert h == digest == featurizer_hash(net)
    np.testing.assert_array_equal(features(loaded, x[:20]), features(net, x[:20]))
    assert json.loads((tmp_path / "model/config.json").read_text())["data"]["kind"] == "audio"
    with pytest.raises(ValueError, match="audio featurizer"):
        FeatureNet(NOTES, 5, FeaturizerConfig(), channelwise=True)


def test_fd_is_zero_against_itself_and_large_against_time_shuffled_clips(featurized):
    net, _, x, _ = featurized
    half = len(x) // 2
    f = features(net, x)
    shuffled = x[:, :, np.random.default_rng(0).permutation(T)]  # same sample values, no waveform left
    floor = fd(f[:half], f[half:])["fd"]  # two halves of the same distribution: sampling noise alone
    assert abs(fd(f, f)["fd"]) < 1e-3 * floor  # 0 up to sqrtm's rounding (dead ReLU features: singular)
    assert fd(f, features(net, shuffled))["fd"] > 20 * floor


def test_feature_metrics_apply_to_audio(featurized):
    net, _, x, _ = featurized
    space = FeatureSpace(hash="h" * 64, net=net)
    sampler = SimpleNamespace(spec=NOTES, capabilities=Capabilities())
    params = EvaluateParams(kid_subsets=5, kid_subset_size=100)
    real = compute_metrics("audio", evaluation_inputs(sampler, x[:200], x[200:], None, params, space, 0))
    noise = np.random.default_rng(1).integers(0, 256, size=(200, 1, T)).astype(np.float32)
    fake = compute_metrics("audio", evaluation_inputs(sampler, noise, x[200:], None, params, space, 0))
    assert {"fd", "kid", "precision", "recall", "density", "coverage", "class_coverage", "class_entropy",
            "modes_covered", "mode_kl", "classifier_score", "classifier_score_test"} <= set(real)
    assert "on_grid" not in real and "modes_covered_test" not in real  # shapes32's and stacked digits' own
    assert real["class_coverage"] == 1.0 and real["mode_kl"] < 0.05  # 200 clips of five balanced classes
    # held-out clips score as the test clips do; noise far below
    assert real["classifier_score"] == pytest.approx(real["classifier_score_test"], rel=0.1)
    assert fake["classifier_score"] < 0.8 * real["classifier_score"]
    assert real["fd"] < 0.1 * fake["fd"] and real["kid"] < 0.1 * fake["kid"]
    # noise lands in one small region (inside some real balls: precision says little here), so it covers
    # almost none of the real clips, where held-out clips cover most
    assert real["recall"] > 0.7 > 0.1 > fake["recall"] and real["coverage"] > 0.7 > 0.1 > fake["coverage"]


def test_sampling_only_families_validate_audio_on_spectra():
    assert validation_metric(SimpleNamespace(likelihood=None), NOTES) == "val_fd_spectrum"
    assert validation_metric(SimpleNamespace(likelihood="exact"), NOTES) == "val_bpd"


def test_spectrum_features_tell_timbres_apart(small):
    x, y, _ = small
    feats = audio.spectrum_features(x)
    assert feats.shape == (300, audio.STFT_SIZE // 2 + 1)
    flute, flute2, clarinet = feats[y == 0][:30], feats[y == 0][30:], feats[y == 2][:30]
    assert fd(flute, clarinet)["fd"] > 3 * fd(flute, flute2)["fd"]


# ------------------------------------------------------------------------------ report


def test_the_report_plays_the_clips_it_was_given(tmp_path, small):
    x, _, _ = small
    layout = Layout(tmp_path)
    out = layout.eval("wavenet-notes")
    out.dir.mkdir(parents=True)
    out.metrics.write_text(json.dumps({"experiment": "wavenet-notes", "family": "wavenet", "dataset": "notes",
                                       "featurizer": None, "test_bits_per_dim": 4.5}))
    meta = {"kind": "audio", "sample_rate": RATE, "levels": 256}
    assert plot_samples(out.samples, x[:8], x[8:16], meta, "wavenet").stat().st_size > 0
    folder = write_audio_clips(out.audio, x[:3], x[3:5], RATE)
    assert sorted(p.name for p in folder.glob("*.wav")) == ["sample-00.wav", "sample-01.wav", "sample-02.wav",
                                                             "test-00.wav", "test-01.wav"]
    build_report(tmp_path, layout.reports.dir)
    page = layout.reports.index.read_text()
    clips = re.findall(r'<audio controls preload="none" src="data:audio/wav;base64,([^"]+)"></audio>', page)
    assert len(clips) == 5
    with wave.open(io.BytesIO(base64.b64decode(clips[0]))) as w:  # sample-00, the first in the page
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, RATE, T)
        pcm = np.frombuffer(w.readframes(T), dtype="<i2").astype(np.float64)
    np.testing.assert_allclose(pcm / 32767, mu_law_decode(x[0, 0]), atol=0.5 / 32767 + 1e-7)
    np.testing.assert_array_equal(mu_law_encode(pcm / 32767), x[0, 0])  # the same levels back


# ------------------------------------------------------------------------------ the stages' view


@pytest.fixture(scope="module")
def prepared_notes(tmp_path_factory):
    """A root with 600 notes and an unlabelled WAV folder prepared as the prepare stage writes them."""
    from gm.stages.prepare import prepare

    root = tmp_path_factory.mktemp("audio-stages")
    rng = np.random.default_rng(0)
    for i in range(20):
        write_wav16(root / f"clips/{i:02d}.wav", 0.3 * rng.standard_normal(T).clip(-3, 3) / 3)
    for name, cfg in {"notes": {"source": "notes", "n": 600}, "clips": {"source": "wav_folder", "path": "clips"}}.items():
        prepare(name, build_source(name, cfg), root, Layout(root).prepared_root, 0, 0.1, 0.2)
    return root


def test_the_featurize_stage_trains_on_labelled_audio_and_evaluation_uses_it(prepared_notes):
    from gm.evaluation import evaluate, load_feature_space
    from gm.stages.featurize import featurize

    root, layout = prepared_notes, Layout(prepared_notes)
    cfg = FeaturizerConfig(channels=(16, 32), feature_dim=32, epochs=6, lr=3e-3)
    summary = featurize("notes", root, cfg)
    assert summary["test_accuracy"] > 0.85  # 120 test clips, chance 0.2
    space = load_feature_space(layout.featurizer("notes"))
    assert space.hash == summary["hash"] and space.net is not None
    data_dir = layout.prepared("notes")
    test_x, _ = read_split(data_dir, "test")
    val_x, _ = read_split(data_dir, "val")

    class Replay:  # a "model" whose samples are held-out clips of the data itself
        spec = NOTES
        capabilities = Capabilities()

        def sample(self, n, seed):
            return val_x[:n]

    metrics, samples = evaluate(Replay(), data_dir, EvaluateParams(n_samples=60, kid_subsets=5, kid_subset_size=50),
                                space)
    assert samples.shape == (60, 1, T)
    assert {"fd", "kid", "precision", "coverage", "class_coverage", "classifier_score"} <= set(metrics)
    assert metrics["class_coverage"] == 1.0


def test_unlabelled_audio_is_compared_sample_by_sample(prepared_notes):
    from gm.evaluation import load_feature_space
    from gm.stages.featurize import featurize

    assert featurize("clips", prepared_notes, FeaturizerConfig()) == {"space": "pixels"}
    out = Layout(prepared_notes).featurizer("clips")
    assert "unlabelled audio" in json.loads((out / "space.json").read_text())["reason"]
    assert load_feature_space(out).net is None
