"""The per-dataset feature space of image and audio metrics: a small CNN classifier in place of Inception.

Fréchet distance, KID and precision/recall need a feature space; Inception cannot be
downloaded here, so each labelled image dataset gets its own small classifier, trained
by the DVC stage `featurize@<dataset>` with a fixed seed. Its penultimate-layer
activations are the features, its test accuracy says how good a feature space it is,
and its hash (weights + config) travels with every number computed in its space, so
that numbers from different featurizers are never put side by side
(`check_same_featurizer`).

The net takes DATA-space images and maps them itself: discrete data goes to
``x / (levels - 1) * 2 - 1`` without dequantization noise (a real and a generated
integer image must map identically), continuous data is standardised with the
training split's per-channel mean and std.

Audio (kind "audio", (1, T) μ-law levels) maps its levels to [-1, 1] as an image's do, expands them
to the waveform (μ-law's inverse), takes its log-power spectrogram (a fixed STFT, the same as
gm.data.audio.spectrogram), and runs 1-D conv stages over time with the frequency bins as channels,
as Dieleman & Schrauwen (2014, "End-to-end learning for music audio", ICASSP) do on spectrograms:
their 1-D convolutions over time did better on spectrograms than on raw audio. So here: on 540 notes
and 10 epochs a strided raw-waveform stack (conv 16 taps / stride 4, then 9-tap stages) reached 0.63
held-out accuracy where this net reaches 0.99; the raw stack needed 1,350 notes, 20 epochs and lr 3e-3
for 0.99 (a filter must resolve harmonics 130 Hz apart, at every pitch, to tell the timbres apart).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gm.core.config import ConfigError, build, bounded, to_dict
from gm.data.audio import LOG_FLOOR, MU_LAW_LEVELS, STFT_HOP, STFT_SIZE, mu_law_expand
from gm.data.dataspec import DataSpec
from gm.core.files import atomic_write

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
ID_FILE = "featurizer.json"
FORMAT = 1  # bump when the architecture or the hash changes meaning


@dataclass(frozen=True)
class FeaturizerConfig:
    channels: tuple[int, ...] = bounded((32, 64), gt=0)  # one stride-2 stage each: 8x8 -> 4 -> 2, 28x28 -> 14 -> 7
    feature_dim: int = bounded(128, gt=0)  # width of the feature layer (the metrics' space)
    epochs: int = bounded(30, gt=0)  # digits has ~1.3k training images: epochs are cheap
    batch_size: int = bounded(64, gt=0)
    lr: float = bounded(1e-3, gt=0)  # Adam's default
    weight_decay: float = bounded(1e-4, ge=0)  # L2 in Adam: small data overfits
    dropout: float = bounded(0.2, ge=0, lt=1)  # before the classifier only; features are taken before it
    augment_shift: int = bounded(1, ge=0)  # random translation by up to this many pixels (0: none); small images overfit fast
    seed: int = 0  # initialisation, shuffling, augmentation and dropout: the hash is a function of it
    threads: int = bounded(1, gt=0)  # torch threads while training: reductions split differently per thread count

    def validate(self):
        if not self.channels:
            raise ConfigError("channels: expected at least one stage, got []")


def _norm(channels: int) -> nn.Module:
    # GroupNorm, not BatchNorm: no running statistics, so train and eval mode agree and a
    # feature never depends on what else is in the batch
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def _conv(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), _norm(c_out), nn.ReLU()]


AUDIO_SHIFT = 8  # samples per unit of augment_shift for audio: a 1-sample shift would teach nothing
DB_CENTRE, DB_SCALE = -50.0, 30.0  # log power (dB, floor -100) -> (dB - centre) / scale: roughly [-1.7, 2]


def _conv1d(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
    return [nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False), _norm(c_out), nn.ReLU()]


def _is_audio(data: DataSpec) -> bool:
    return data.kind == "audio"


def log_spectrogram(wave: torch.Tensor) -> torch.Tensor:
    """Waveforms (N, T) -> standardised log power (N, STFT_SIZE/2 + 1, frames): periodic Hann windows of
    STFT_SIZE samples every STFT_HOP, no centring (clips shorter than a window are zero-padded to one),
    power over the window's energy in dB floored at -100, as gm.data.audio.spectrogram; then
    (dB - DB_CENTRE) / DB_SCALE."""
    if wave.shape[-1] < STFT_SIZE:
        wave = F.pad(wave, (0, STFT_SIZE - wave.shape[-1]))
    window = torch.hann_window(STFT_SIZE, periodic=True, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(wave, STFT_SIZE, STFT_HOP, window=window, center=False, return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2
    db = 10 * torch.log10((power / window.pow(2).sum()).clamp_min(LOG_FLOOR))
    return (db - DB_CENTRE) / DB_SCALE


class FeatureNet(nn.Module):
    """Conv stages (3x3 conv, 3x3 stride-2 conv; GroupNorm, ReLU) -> global average pool ->
    `feature_dim` linear + ReLU (the features) -> dropout -> linear classifier.

    Inputs are data-space images (N, C, H, W) of any size (stride-2 stages pad, so even
    a 1x1 map halves to 1x1); `normalise` maps them to the net's input space.

    Audio (N, 1, T) of μ-law levels: the log-power spectrogram of the waveform (`log_spectrogram`:
    n_fft/2 + 1 = 129 bins as channels, a frame every 64 samples), then per stage a 3-tap conv and a
    3-tap stride-2 conv over time (GroupNorm, ReLU), global average pool over time -> the same feature
    layer and classifier: T = 2000 is 28 frames, then 14, then 7 with the default two stages.

    `channelwise`: the image's channels are independent images of `num_classes` classes each (stacked
    digits: a digit per channel, as VEEGAN and PacGAN count modes). One net then reads every channel
    alone; an image's features are its channels' side by side (C · feature_dim), and its class is its
    channels' classes read as the digits of a base-`num_classes` number, with log-probability the sum of
    theirs (`classes` = num_classes ** C of them). A classifier of C·K classes learns what K-way
    channel classifiers learn from C times the examples.
    """

    def __init__(self, data: DataSpec, num_classes: int, cfg: FeaturizerConfig,
                 mean: list[float] | None = None, std: list[float] | None = None, channelwise: bool = False):
        super().__init__()
        self.channelwise = channelwise
        audio = _is_audio(data)
        if audio and (len(data.shape) != 2 or data.shape[0] != 1 or data.levels != MU_LAW_LEVELS or channelwise):
            raise ValueError(f"an audio featurizer needs (1, T) μ-law audio of {MU_LAW_LEVELS} levels, not "
                             f"channel-wise; got shape {data.shape}, levels {data.levels}")
        if not audio and (data.kind != "image" or len(data.shape) != 3):
            raise ValueError(f"a featurizer needs (C, H, W) images or (1, T) audio; got kind {data.kind!r}, "
                             f"shape {data.shape}")
        if num_classes < 2:
            raise ValueError(f"a featurizer needs at least 2 classes; got {num_classes}")
        self.data, self.num_classes, self.cfg = data, num_classes, cfg
        c = data.shape[0]
        if data.levels:
            # (x - m) / m with m = (levels - 1) / 2 is x / (levels - 1) * 2 - 1: levels map onto [-1, 1]
            mean = std = [(data.levels - 1) / 2] * c
        elif mean is None or std is None:
            raise ValueError("continuous images need the training mean and std (one per channel)")
        if len(mean) != c or len(std) != c or min(std) <= 0:
            raise ValueError(f"mean and std must have {c} values (one per channel), std > 0; got {mean}, {std}")
        spatial = (1,) * (len(data.shape) - 1)  # (c, 1, 1) for images, (c, 1) for audio
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(c, *spatial))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(c, *spatial))
        layers: list[nn.Module] = []
        if channelwise:
            c = 1
        if audio:
            c = STFT_SIZE // 2 + 1  # the spectrogram's frequency bins are the channels
        for width in cfg.channels:
            if audio:
                layers += _conv1d(c, width, 3, 1) + _conv1d(width, width, 3, 2)
            else:
                layers += _conv(c, width, 1) + _conv(width, width, 2)
            c = width
        self.conv = nn.Sequential(*layers)
        self.feature = nn.Sequential(nn.Linear(c, cfg.feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.feature_dim, num_classes)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Data space -> the net's input space; deterministic (no dequantization noise)."""
        if x.dim() == 2 and x.shape[1] == self.data.dim:  # flattened samples
            x = x.view(len(x), *self.data.shape)
        if tuple(x.shape[1:]) != self.data.shape:
            raise ValueError(f"images have shape {tuple(x.shape[1:])}; this featurizer expects {self.data.shape}")
        return (x.float() - self.mean) / self.std

    @property
    def classes(self) -> int:
        """How many classes an image has: num_classes, or num_classes ** C channel-wise."""
        return self.num_classes ** self.data.shape[0] if self.channelwise else self.num_classes

    @property
    def embed_dim(self) -> int:
        return self.cfg.feature_dim * (self.data.shape[0] if self.channelwise else 1)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) normalised -> (N, feature_dim), or (N·C, feature_dim) channel-wise."""
        if self.channelwise:
            x = x.reshape(-1, 1, *x.shape[2:])  # every channel an image of its own
        if _is_audio(self.data):
            x = log_spectrogram(mu_law_expand(x[:, 0]))  # (N, F, frames)
        h = self.conv(x)  # (N, C', H', W'), or (N, C', T') for audio
        return self.feature(h.mean(dim=tuple(range(2, h.dim()))))  # global average pool

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Data-space images (N, C, H, W) -> features (N, embed_dim)."""
        return self._features(self.normalise(x)).reshape(len(x), self.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Data-space images -> class logits (N, classes); channel-wise, the joint log-probabilities."""
        logits = self.classifier(self.dropout(self._features(self.normalise(x))))
        if not self.channelwise:
            return logits
        per_channel = F.log_softmax(logits, dim=1).reshape(len(x), -1, self.num_classes)  # (N, C, K)
        joint = per_channel[:, 0]
        for c in range(1, per_channel.shape[1]):  # log p(d_1, ..., d_c) = Σ log p(d_i), flattened in C order
            joint = (joint[:, :, None] + per_channel[:, c, None, :]).reshape(len(x), -1)
        return joint

    def normalisation(self) -> dict:
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def config_dict(self) -> dict:
        """Everything needed to rebuild the net (config.json; part of the hash)."""
        out = {"format": FORMAT, "featurizer": to_dict(self.cfg), "data": self.data.to_dict(),
               "num_classes": self.num_classes, "normalisation": self.normalisation()}
        if self.channelwise:  # only then: every earlier featurizer keeps its config and hash
            out["channelwise"] = True
        return out


# --------------------------------------------------------------------------- training


def _shift(x: torch.Tensor, max_shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Translate each image by its own (dy, dx) in [-max_shift, max_shift]², edges replicated."""
    n, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), mode="replicate")  # (N, C, H+2s, W+2s)
    dy, dx = (torch.from_numpy(rng.integers(-s, s + 1, size=n)) for _ in range(2))
    rows = torch.arange(h)[None, :] + s + dy[:, None]  # (N, H)
    cols = torch.arange(w)[None, :] + s + dx[:, None]  # (N, W)
    out = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _shift_time(x: torch.Tensor, max_shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Delay or advance each clip (N, C, T) by its own d in [-max_shift, max_shift] samples, edges replicated."""
    n, _, t = x.shape
    s = max_shift
    padded = F.pad(x, (s, s), mode="replicate")  # (N, C, T+2s)
    d = torch.from_numpy(rng.integers(-s, s + 1, size=n))
    idx = torch.arange(t)[None, :] + s + d[:, None]  # (N, T)
    return torch.gather(padded, 2, idx[:, None, :].expand(-1, x.shape[1], -1))


def _check_split(x: np.ndarray, y: np.ndarray, data: DataSpec, num_classes: int, name: str) -> None:
    if x.shape[1:] != data.shape or y.shape != (len(x),) or len(x) == 0:
        raise ValueError(f"{name} split: x {x.shape}, y {y.shape}; expected (N, {', '.join(map(str, data.shape))}) "
                         f"and (N,) with N > 0")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"{name} split: labels span {y.min()}..{y.max()}; expected 0..{num_classes - 1}")


@torch.no_grad()
def _evaluate(net: FeatureNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) in eval mode."""
    net.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = net(x[i:i + batch_size])
        correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
        loss += float(F.cross_entropy(logits, y[i:i + batch_size], reduction="sum"))
    return correct / len(x), loss / len(x)


def train_featurizer(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                     spec: DataSpec, num_classes: int, cfg: FeaturizerConfig,
                     channelwise: bool = False) -> tuple[FeatureNet, dict]:
    """Train a FeatureNet on data-space images; keep the epoch with the best validation accuracy.

    Bit-for-bit deterministic given `cfg` on one machine and torch build: seeded (torch's
    global RNG is forked and restored, numpy uses its own generator), deterministic
    algorithms and `cfg.threads` threads, all restored afterwards. Trains on the CPU.
    Returns (net in eval mode, {"train_accuracy", "val_accuracy", "best_epoch", "epochs", "seconds"}).
    """
    train_x, val_x = np.asarray(train_x, np.float32), np.asarray(val_x, np.float32)
    train_y, val_y = np.asarray(train_y, np.int64), np.asarray(val_y, np.int64)
    classes = num_classes ** spec.shape[0] if channelwise else num_classes  # an image's labels span these
    _check_split(train_x, train_y, spec, classes, "train")
    _check_split(val_x, val_y, spec, classes, "val")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.set_num_threads(cfg.threads)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net, metrics = _fit(train_x, train_y, val_x, val_y, spec, num_classes, cfg, channelwise)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    metrics["seconds"] = time.perf_counter() - started
    return net, metrics


def _fit(train_x, train_y, val_x, val_y, data: DataSpec, num_classes: int, cfg: FeaturizerConfig,
         channelwise: bool = False):
    mean = std = None
    if not data.levels:
        axes = (0, *range(2, train_x.ndim))  # every axis but the channels'
        mean = train_x.mean(axis=axes, dtype=np.float64).tolist()
        std = [s if s > 0 else 1.0 for s in train_x.std(axis=axes, dtype=np.float64).tolist()]  # constant channel
    # channel-wise, the cross-entropy of the joint log-probabilities is the sum of the channels' own
    net = FeatureNet(data, num_classes, cfg, mean, std, channelwise)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xt, yt = torch.from_numpy(train_x), torch.from_numpy(train_y)
    xv, yv = torch.from_numpy(val_x), torch.from_numpy(val_y)
    best, best_key, best_epoch = None, None, 0
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        order = torch.from_numpy(rng.permutation(len(xt)))
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            xb = xt[idx]  # (B, C, H, W) or (B, C, T), data space
            if cfg.augment_shift and _is_audio(data):
                xb = _shift_time(xb, cfg.augment_shift * AUDIO_SHIFT, rng)
            elif cfg.augment_shift:
                xb = _shift(xb, cfg.augment_shift, rng)
            loss = F.cross_entropy(net(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc, val_loss = _evaluate(net, xv, yv)
        key = (acc, -val_loss)  # the val split is small: accuracy ties are broken by the loss
        if best_key is None or key > best_key:
            best, best_key, best_epoch = copy.deepcopy(net.state_dict()), key, epoch
    net.load_state_dict(best)
    net.eval()
    train_acc, _ = _evaluate(net, xt, yt)
    return net, {"train_accuracy": train_acc, "val_accuracy": best_key[0], "best_epoch": best_epoch,
                 "epochs": cfg.epochs}


# --------------------------------------------------------------------------- use


def _batches(net: FeatureNet, x_data: np.ndarray, batch_size: int, fn) -> list[torch.Tensor]:
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    x = torch.as_tensor(np.asarray(x_data, dtype=np.float32))
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out.append(fn(x[i:i + batch_size].to(device)).cpu())
    finally:
        net.train(was_training)
    return out


def features(net: FeatureNet, x_data: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Features (N, feature_dim) float64 of data-space images (N, C, H, W) or audio (N, 1, T), or flattened."""
    out = _batches(net, x_data, batch_size, net.embed)
    if not out:
        return np.zeros((0, net.embed_dim))
    return torch.cat(out).numpy().astype(np.float64)


def predict(net: FeatureNet, x_data: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Predicted classes (N,) int64 of data-space images."""
    out = _batches(net, x_data, batch_size, lambda x: net(x).argmax(1))
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, np.int64)


def predict_proba(net: FeatureNet, x_data: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities p(y|x) (N, num_classes) float64 of data-space images: the softmax of
    the classifier's logits (eval mode, so without dropout)."""
    out = _batches(net, x_data, batch_size, lambda x: F.softmax(net(x).double(), dim=1))
    return torch.cat(out).numpy() if out else np.zeros((0, net.classes))


# --------------------------------------------------------------------------- storage


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def featurizer_hash(net: FeatureNet) -> str:
    """sha256 (hex) over the canonical config JSON and every state_dict tensor (name, dtype,
    shape, raw bytes, in state_dict order); not over torch.save's file bytes."""
    h = hashlib.sha256()
    h.update(_canonical(net.config_dict()))
    for name, t in net.state_dict().items():
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"\n{name}|{a.dtype.str}|{list(a.shape)}|{a.nbytes}\n".encode())  # length-prefixed: unambiguous
        h.update(a.tobytes())
    return h.hexdigest()


def _rerun(directory: Path) -> str:
    directory = Path(directory)
    dataset = directory.parent.name if directory.name == "model" else directory.name
    return f"run the featurize stage (dvc repro featurize@{dataset})"


def save_featurizer(net: FeatureNet, directory: str | Path, extra: dict) -> str:
    """Write config.json, weights.pt and featurizer.json ({**extra, "hash", "short_hash"}); return the hash.

    featurizer.json is written last, so an interrupted save never loads. Keep `extra`
    deterministic (accuracies, not timings): the folder is a versioned DVC output.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ID_FILE).unlink(missing_ok=True)
    digest = featurizer_hash(net)
    text = json.dumps(net.config_dict(), sort_keys=True, indent=2) + "\n"
    atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(text))
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: torch.save(state, p))
    ident = json.dumps({**extra, "hash": digest, "short_hash": digest[:16]}, sort_keys=True, indent=2,
                       default=float) + "\n"
    atomic_write(directory / ID_FILE, lambda p: p.write_text(ident))
    return digest


def _read_json(path: Path, directory: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; {_rerun(directory)}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); {_rerun(directory)} again") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object; {_rerun(directory)} again")
    return obj


def load_featurizer(directory: str | Path) -> tuple[FeatureNet, str]:
    """(net in eval mode on the CPU, full hash) of a featurizer saved by `save_featurizer`.

    FileNotFoundError when it is missing; ValueError naming the file when it is unreadable
    or its weights do not match the recorded hash (corrupt or modified).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: featurizer not found; {_rerun(directory)}")
    cfg_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    conf = _read_json(cfg_path, directory)
    ident = _read_json(directory / ID_FILE, directory)
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: file not found; {_rerun(directory)}")
    try:
        if conf.get("format") != FORMAT:
            raise ValueError(f"format {conf.get('format')!r}; expected {FORMAT}")
        cfg = build(FeaturizerConfig, conf["featurizer"], "featurizer")
        net = FeatureNet(DataSpec.from_dict(conf["data"]), int(conf["num_classes"]), cfg,
                         conf["normalisation"]["mean"], conf["normalisation"]["std"], bool(conf.get("channelwise")))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path}: not a featurizer config ({e}); {_rerun(directory)} again") from None
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as e:  # torch raises many types for a bad file; all mean the same here
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{weights_path}: unreadable featurizer weights ({msg}); {_rerun(directory)} again") from None
    net.eval()
    digest = featurizer_hash(net)
    if digest != ident.get("hash"):
        raise ValueError(f"{weights_path}: weights and config hash to {digest[:16]}, but {ID_FILE} records "
                         f"{str(ident.get('hash'))[:16]}; the featurizer is corrupt or was modified; "
                         f"{_rerun(directory)} again")
    return net, digest


def check_same_featurizer(hashes: dict[str, str | None]) -> None:
    """Refuse to compare metrics computed in different feature spaces.

    `hashes` maps an experiment to the featurizer hash its metrics carry (None: none);
    raises ValueError (one line, listing which experiments used which hash) when they differ.
    """
    groups: dict[str | None, list[str]] = {}
    for name, h in hashes.items():
        groups.setdefault(h, []).append(name)
    if len(groups) > 1:
        parts = "; ".join(f"{h[:16] if h else 'none'}: {', '.join(sorted(names))}"
                          for h, names in sorted(groups.items(), key=lambda kv: str(kv[0])))
        raise ValueError(f"metrics come from different featurizers ({parts}); recompute them with one "
                         "featurizer before comparing")
