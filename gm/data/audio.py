"""Audio in gm: μ-law companding (van den Oord et al. 2016, "WaveNet", §2.2) and the shape of audio data.

Audio data is kind "audio", shape (1, T): one channel of T samples. It is stored, like images, as
discrete levels in data space: the waveform in [-1, 1] companded by μ-law and quantized to
`MU_LAW_LEVELS` = 256 levels, so every likelihood family reads it as a discrete sequence and its
bits/dim are bits per sample. Listening goes back through `mu_law_decode`.

Also here: the `notes` dataset's synthesis (`generate_notes`: five instrument-like timbres, the label),
and the log-power spectrogram that plots, the audio featurizer and the audio validation score share.

    f(x) = sign(x) · ln(1 + μ|x|) / ln(1 + μ),   μ = 255                    (WaveNet, Eq. 2)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.signal import lfilter

MU = 255
MU_LAW_LEVELS = MU + 1


def mu_law_compand(x):
    """f(x) on a waveform in [-1, 1] (array or tensor); the result is in [-1, 1]."""
    if isinstance(x, torch.Tensor):
        x = x.clamp(-1.0, 1.0)
        return torch.sign(x) * torch.log1p(MU * x.abs()) / math.log1p(MU)
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    return np.sign(x) * np.log1p(MU * np.abs(x)) / math.log1p(MU)


def mu_law_expand(y):
    """f⁻¹(y) = sign(y) · ((1 + μ)^|y| − 1) / μ, the inverse of `mu_law_compand`."""
    if isinstance(y, torch.Tensor):
        y = y.clamp(-1.0, 1.0)
        return torch.sign(y) * torch.expm1(y.abs() * math.log1p(MU)) / MU
    y = np.clip(np.asarray(y, dtype=np.float64), -1.0, 1.0)
    return np.sign(y) * np.expm1(np.abs(y) * math.log1p(MU)) / MU


def mu_law_encode(x):
    """Waveform in [-1, 1] -> levels 0..255 (int64): companded, then rounded onto 256 even steps."""
    y = mu_law_compand(x)
    if isinstance(y, torch.Tensor):
        return torch.round((y + 1) / 2 * MU).long()
    return np.round((y + 1) / 2 * MU).astype(np.int64)


def mu_law_decode(levels):
    """Levels 0..255 -> waveform in [-1, 1]: each level's companded value 2v/μ − 1, expanded."""
    if isinstance(levels, torch.Tensor):
        return mu_law_expand(levels.double() * 2 / MU - 1).float()
    return mu_law_expand(np.asarray(levels, dtype=np.float64) * 2 / MU - 1).astype(np.float32)


# ----------------------------------------------------------------------------- the `notes` dataset
#
# Short notes of five instrument-like timbres, synthesised by code (nothing is downloaded), each a
# classic method of computer music: the label is the timbre. Every note has a pitch drawn from a
# musical scale, an ADSR envelope, a random peak amplitude and onset, and a little white noise, and
# is μ-law encoded like any audio in gm. Additive partials above 0.45·sample_rate are left out, so
# nothing aliases.

TIMBRES = ("flute", "string", "clarinet", "bell", "brass")
DEFAULT_SAMPLE_RATE = 8000
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 16000
MAJOR_STEPS = (0, 2, 4, 5, 7, 9, 11)  # semitones of the major scale above its tonic
SCALE_MIDI = tuple(48 + 12 * octave + s for octave in range(2) for s in MAJOR_STEPS) + (72,)  # C3..C5, C major
BAND_LIMIT = 0.45  # of the sample rate: the highest partial kept (Nyquist is 0.5)
NOISE_STD = 0.002  # of full scale: about -54 dBFS of white noise under every note
PEAK_RANGE = (0.25, 0.9)  # a note's peak amplitude, uniform
ONSET_MAX_S = 0.02  # a note starts up to 20 ms into its clip
RELEASE_AT = 0.8  # of the clip: where the release of the ADSR envelope begins

# (attack s, decay s, sustain level, release s) per timbre; each drawn within ±30 % of these
ADSR = {
    "flute": (0.05, 0.05, 0.8, 0.04),  # a breathy, slow onset
    "string": (0.002, 0.0, 1.0, 0.03),  # plucked: the string itself decays (Karplus-Strong)
    "clarinet": (0.02, 0.04, 0.85, 0.03),
    "bell": (0.001, 0.0, 1.0, 0.03),  # struck: each partial decays on its own (Risset)
    "brass": (0.06, 0.05, 0.75, 0.04),  # a slow attack, over which its brightness grows
}

# Risset's bell (J.-C. Risset, "An Introductory Catalogue of Computer Synthesized Sounds", Bell Labs 1969;
# the additive instrument as Dodge & Jerse's "Computer Music" reproduces it): partials' frequency as a
# ratio to the nominal pitch (+ a detuning in Hz: the beating pairs), amplitude, and duration as a
# fraction of the note's. Inharmonic: the ratios are not whole numbers.
BELL_PARTIALS = (  # (ratio, detune Hz, amplitude, relative duration)
    (0.56, 0.0, 1.0, 1.0), (0.56, 1.0, 0.67, 0.9), (0.92, 0.0, 1.0, 0.65), (0.92, 1.7, 1.8, 0.55),
    (1.19, 0.0, 2.67, 0.325), (1.7, 0.0, 1.67, 0.35), (2.0, 0.0, 1.46, 0.25), (2.74, 0.0, 1.33, 0.2),
    (3.0, 0.0, 1.33, 0.15), (3.76, 0.0, 1.0, 0.1), (4.07, 0.0, 1.33, 0.075),
)
BELL_SECONDS = 1.0  # the duration the relative durations scale: a bell rings past a short clip
VIBRATO_HZ = (4.5, 6.5)  # the flute's vibrato rate, uniform
VIBRATO_DEPTH = (0.004, 0.012)  # its depth, a fraction of the pitch (≈ 7-20 cents)
STRING_T60_S = (0.3, 1.0)  # the string's loss ρ per sample sets this -60 dB time (Jaffe & Smith 1983: decay shortening)
DC_BLOCK = 0.995  # pole of the DC blocker y[n] = x[n] - x[n-1] + R·y[n-1] after the string (J. O. Smith, "Introduction
# to Digital Filters", DC blocker): the loop keeps whatever mean its noise burst had
BRASS_BRIGHTNESS = 0.4  # harmonic k follows env^(1 + 0.4 (k - 1)): louder is brighter (Risset's trumpet)


def midi_to_hz(note) -> np.ndarray:
    """Equal temperament, A4 = MIDI 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(note, dtype=np.float64) - 69) / 12)


def clip_samples(sample_rate: int, duration: float) -> int:
    """T = sample_rate · duration, which must be a whole number (ValueError otherwise)."""
    t = sample_rate * duration
    if abs(t - round(t)) > 1e-6 or round(t) < 1:
        raise ValueError(f"sample_rate · duration = {sample_rate} · {duration} = {t:g} samples; expected a "
                         "positive whole number")
    return int(round(t))


def adsr(t: np.ndarray, attack: float, decay: float, sustain: float, release: float,
         release_at: float) -> np.ndarray:
    """Piecewise-linear ADSR envelope at times t (s from the note's onset; before it, 0): 0 -> 1 over
    `attack`, down to `sustain` over `decay`, held, then to 0 over `release` from `release_at`."""
    env = np.where(t < attack, t / max(attack, 1e-9),
                   np.where(t < attack + decay, 1 - (1 - sustain) * (t - attack) / max(decay, 1e-9), sustain))
    env = env * np.clip(1 - (t - release_at) / max(release, 1e-9), 0.0, 1.0)
    return np.where(t < 0, 0.0, env)


def _harmonics(f0: float, ratios: np.ndarray, sample_rate: int) -> np.ndarray:
    """The partials f0 · ratios that lie below the band limit."""
    freqs = f0 * ratios
    return freqs[freqs < BAND_LIMIT * sample_rate]


def karplus_strong(f0: float, n: int, sample_rate: int, rng: np.random.Generator, rho: float) -> np.ndarray:
    """A plucked string (Karplus & Strong 1983, "Digital synthesis of plucked-string and drum timbres"): a
    delay line filled with noise, fed back through the two-point average y[n] = ρ·(r[n] + r[n-1])/2, whose
    half-sample delay puts the loop at P = N + f + 1/2 samples for the period P = rate/f0. Jaffe & Smith
    (1983, "Extensions of the Karplus-Strong plucked-string algorithm") tune the fractional part f with an
    allpass; here it is read by linear interpolation r[n] = (1-f)·y[n-N] + f·y[n-N-1] (a little extra
    damping of the top harmonics, none of the allpass's recursion), so every read lies a whole period N
    back or more and a block of N samples is computed at once. High harmonics die first: the averaging is
    a low-pass."""
    period = sample_rate / f0 - 0.5
    delay = int(math.floor(period))
    frac = period - delay
    y = np.zeros(n + delay + 2)
    y[: delay + 2] = rng.uniform(-1.0, 1.0, delay + 2)  # the pluck: a burst of white noise
    y[: delay + 2] -= y[: delay + 2].mean()
    for start in range(delay + 2, n + delay + 2, delay):
        i = np.arange(start, min(start + delay, n + delay + 2))
        r = (1 - frac) * y[i - delay] + frac * y[i - delay - 1]
        r_prev = (1 - frac) * y[i - delay - 1] + frac * y[i - delay - 2]
        y[i] = rho * 0.5 * (r + r_prev)
    return y[delay + 2:]


def synthesize(timbre: str, f0: float, n: int, sample_rate: int, rng: np.random.Generator,
               onset: float = 0.0, release_at: float | None = None) -> np.ndarray:
    """One note of `timbre` at pitch f0 (Hz), n samples long, its peak at 1 (before amplitude and noise);
    it starts at `onset` seconds and its envelope releases at `release_at` (default RELEASE_AT of the clip).
    The ADSR times are each drawn within ±30 % of the timbre's (`ADSR`)."""
    if timbre not in TIMBRES:
        raise ValueError(f"timbre {timbre!r}: expected one of {', '.join(TIMBRES)}")
    t = np.arange(n) / sample_rate - onset  # (n,) s since the onset
    release_at = RELEASE_AT * n / sample_rate - onset if release_at is None else release_at
    a, d, s, r = (v * rng.uniform(0.7, 1.3) for v in ADSR[timbre])
    env = adsr(t, a, d, min(s, 1.0), r, release_at)
    tp = np.maximum(t, 0.0)
    if timbre == "flute":  # a sine with vibrato: the phase integrates the wavering frequency
        rate, depth = rng.uniform(*VIBRATO_HZ), rng.uniform(*VIBRATO_DEPTH)
        freq = f0 * (1 + depth * np.sin(2 * math.pi * rate * tp + rng.uniform(0, 2 * math.pi)))
        wave = np.sin(2 * math.pi * np.cumsum(freq) / sample_rate)
    elif timbre == "string":
        wave = np.zeros(n)
        start = int(round(onset * sample_rate))
        rho = 10.0 ** (-3.0 / (rng.uniform(*STRING_T60_S) * sample_rate))  # ρ^(t60·rate) = 10^-3: -60 dB
        string = karplus_strong(f0, n - start, sample_rate, rng, rho)
        wave[start:] = lfilter([1.0, -1.0], [1.0, -DC_BLOCK], string)
    elif timbre == "clarinet":  # odd harmonics only, amplitude 1/k: a band-limited square wave
        freqs = _harmonics(f0, np.arange(1, 200, 2, dtype=np.float64), sample_rate)
        wave = (np.sin(2 * math.pi * freqs[:, None] * tp) / (freqs[:, None] / f0)).sum(0)
    elif timbre == "bell":  # inharmonic partials, each decaying exponentially over its own duration
        ratio, detune, amp, dur = (np.array(c) for c in zip(*BELL_PARTIALS))
        freqs = f0 * ratio + detune
        keep = freqs < BAND_LIMIT * sample_rate
        tau = dur[keep, None] * BELL_SECONDS / 4  # e^-4 ≈ -35 dB at the end of each partial's duration
        wave = (amp[keep, None] * np.exp(-tp / tau) * np.sin(2 * math.pi * freqs[keep, None] * tp)).sum(0)
    else:  # brass: every harmonic (a sawtooth's 1/k), each rising with a power of the envelope
        freqs = _harmonics(f0, np.arange(1, 200, dtype=np.float64), sample_rate)
        k = freqs / f0
        power = 1 + BRASS_BRIGHTNESS * (k[:, None] - 1)
        wave = (env[None] ** power / k[:, None] * np.sin(2 * math.pi * freqs[:, None] * tp)).sum(0)
        env = np.ones(n) * (t >= 0)  # the envelope is already in every harmonic
    out = wave * env
    peak = np.abs(out).max()
    return out / peak if peak > 0 else out


def generate_notes(n: int, sample_rate: int, duration: float, rng: np.random.Generator,
                   noise: float = NOISE_STD) -> tuple[np.ndarray, np.ndarray, dict]:
    """n labelled clips: (x μ-law levels as float32 (n, 1, T), y timbre index int64 (n,), details
    {"f0": Hz (n,), "peak": (n,), "onset": s (n,)}). Classes are balanced (n·k/K each, in a seeded
    order); everything is drawn from `rng`, so the seed decides the data."""
    samples = clip_samples(sample_rate, duration)
    y = rng.permutation(np.arange(n) % len(TIMBRES)).astype(np.int64)
    f0 = midi_to_hz(rng.choice(SCALE_MIDI, size=n))
    peak = rng.uniform(*PEAK_RANGE, size=n)
    onset = rng.uniform(0.0, min(ONSET_MAX_S, 0.1 * duration), size=n)
    x = np.empty((n, 1, samples), dtype=np.float32)
    for i in range(n):
        wave = peak[i] * synthesize(TIMBRES[y[i]], f0[i], samples, sample_rate, rng, onset[i])
        wave = wave + noise * rng.standard_normal(samples)
        x[i, 0] = mu_law_encode(np.clip(wave, -1.0, 1.0))
    return x, y, {"f0": f0, "peak": peak, "onset": onset}


# ----------------------------------------------------------------------------- looking at audio

STFT_SIZE, STFT_HOP = 256, 64  # 32 ms Hann windows every 8 ms at 8 kHz: 129 frequency bins
LOG_FLOOR = 1e-10  # power floor of the log spectrum (-100 dB)


def spectrogram(waveform, sample_rate: int, n_fft: int = STFT_SIZE, hop: int = STFT_HOP,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-power STFT of waveforms (..., T): (freqs Hz (F,), frame times s (M,), dB (..., F, M)), F = n_fft/2 + 1.

    Periodic Hann windows of n_fft samples every `hop` samples (a clip shorter than a window is
    zero-padded to one); power |X|² normalised by the window's energy, 10·log10 with a floor at
    LOG_FLOOR. A sine of amplitude a at a bin's centre frequency reads 10·log10(a²·n_fft/6) there:
    |X|² = (a/2 · Σw)² = (a·n_fft/4)², over Σw² = 3·n_fft/8."""
    x = np.asarray(waveform, dtype=np.float64)
    if x.shape[-1] < n_fft:
        x = np.concatenate([x, np.zeros((*x.shape[:-1], n_fft - x.shape[-1]))], axis=-1)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]  # (..., M, n_fft)
    window = 0.5 - 0.5 * np.cos(2 * math.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2 / (window ** 2).sum()
    db = 10 * np.log10(np.maximum(power, LOG_FLOOR))
    times = (np.arange(frames.shape[-2]) * hop + n_fft / 2) / sample_rate
    return np.fft.rfftfreq(n_fft, 1 / sample_rate), times, np.swapaxes(db, -1, -2)


def spectrum_features(levels, n_fft: int = STFT_SIZE, hop: int = STFT_HOP) -> np.ndarray:
    """μ-law levels (N, 1, T) or (N, T) -> each clip's log-power spectrum averaged over its frames
    (N, n_fft/2 + 1), in dB: a fixed, training-free description of timbre and pitch that ignores when
    things happen in the clip (the validation score of sampling-only families on audio)."""
    x = np.asarray(levels)
    wave = mu_law_decode(x.reshape(len(x), -1))
    _, _, db = spectrogram(wave, 1, n_fft, hop)  # the rate only labels the axes
    return db.mean(axis=-1)
