"""Readers for raw dataset files: IDX (MNIST-style), possibly gzipped files, image folders, WAV folders.

Every problem with a file is a one-line error naming the file and what was expected:
`FileNotFoundError` when it is absent, `ValueError` when it is there but unreadable.
"""

from __future__ import annotations

import gzip
import io
import math
import wave
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gm.data.audio import mu_law_encode

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> numpy dtype (IDX data is big-endian).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_bytes(path: str | Path, expected: str = "a data file") -> bytes:
    """A file's bytes, gunzipped when it starts with the gzip magic (the extension is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; expected {expected}")
    raw = path.read_bytes()
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt gzip data ({e}); expected {expected}") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not) into a native-endian numpy array."""
    path = Path(path)
    data = read_bytes(path, "an IDX file (MNIST format)")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES or data[3] == 0:
        raise ValueError(
            f"{path}: bad IDX magic {data[:4].hex(' ') or '(empty)'}; expected 00 00 <type> <ndim> "
            f"with type one of {', '.join(f'{c:02x}' for c in IDX_DTYPES)}"
        )
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated: expected a {header}-byte header, got {len(data)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected, got = math.prod(dims) * dtype.itemsize, len(data) - header
    if got < expected:
        raise ValueError(f"{path}: truncated: expected {expected} bytes of data, got {got}")
    if got > expected:
        raise ValueError(f"{path}: trailing bytes: expected {expected} bytes of data, got {got}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write `array` as IDX; gzipped (with a fixed mtime, so bytes are reproducible) if path ends in .gz."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"{path}: IDX cannot store dtype {array.dtype}; expected one of "
                         f"{', '.join(str(d) for d in codes)}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"{path}: IDX needs 1..255 dimensions, got {array.ndim}")
    body = (bytes([0, 0, codes[native], array.ndim])
            + np.asarray(array.shape, dtype=">u4").tobytes()
            + np.ascontiguousarray(array, dtype=IDX_DTYPES[codes[native]]).tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
            gz.write(body)
        body = buf.getvalue()
    path.write_bytes(body)
    return path


@dataclass(frozen=True)
class FolderData:
    """Files loaded from a folder: x (N, *shape) (uint8 pixels or μ-law levels); y and class_names are None
    if unlabelled."""

    x: np.ndarray
    y: np.ndarray | None
    class_names: tuple[str, ...] | None
    files: tuple[Path, ...]  # relative to the folder, in the order of x


def folder_files(folder: Path, wanted, kind: str) -> tuple[list[tuple[Path, int]], list[Path]]:
    """The files of `folder` that `wanted(path)` accepts, with their labels: (file, class index) from one
    subfolder per class (sorted by name), or (file, -1) for loose files; and the class folders. `kind`
    names the files in errors ("PNG/JPEG images", "WAV files")."""
    loose = sorted(p for p in folder.iterdir() if wanted(p))
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_dirs = [d for d in class_dirs if any(wanted(p) for p in d.iterdir())]
    if loose and class_dirs:
        raise ValueError(f"{folder}: has both {kind} and class subfolders with {kind}; expected one "
                         f"or the other (subfolders = labelled, loose {kind} = unlabelled)")
    if class_dirs:
        files = [(p, label) for label, d in enumerate(class_dirs) for p in sorted(d.iterdir()) if wanted(p)]
    else:
        files = [(p, -1) for p in loose]
    if not files:
        raise ValueError(f"{folder}: no {kind} found; expected {kind} in the folder or in one subfolder per class")
    return files, class_dirs


def folder_data(x: np.ndarray, files: list[tuple[Path, int]], class_dirs: list[Path], folder: Path) -> FolderData:
    labelled = bool(class_dirs)
    return FolderData(
        x=x,
        y=np.array([label for _, label in files], dtype=np.int64) if labelled else None,
        class_names=tuple(d.name for d in class_dirs) if labelled else None,
        files=tuple(p.relative_to(folder) for p, _ in files),
    )


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def load_image_folder(folder: str | Path, grayscale: bool = True, size: int | None = None) -> FolderData:
    """Load `folder/<class>/*.png|jpg` (labelled, classes sorted by name) or `folder/*.png|jpg` (unlabelled).

    Without `size` every image must have the size of the first one; with it all are resized.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found; expected a folder of PNG/JPEG images, "
                                "one subfolder per class")
    files, class_dirs = folder_files(folder, _is_image, "PNG/JPEG images")

    mode = "L" if grayscale else "RGB"
    arrays, first = [], None
    for p, _ in files:
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                if size is not None:
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                elif first is None:
                    first = (p, im.size)
                elif im.size != first[1]:
                    w, h = im.size
                    raise ValueError(
                        f"{p}: image is {w}x{h} but {first[0]} is {first[1][0]}x{first[1][1]}; "
                        "expected all images the same size (or set size to resize them)"
                    )
                arrays.append(np.asarray(im, dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{p}: unreadable image ({type(e).__name__}); expected a PNG or JPEG") from None
    x = np.stack(arrays)
    x = x[:, None] if grayscale else x.transpose(0, 3, 1, 2)  # HWC -> CHW, as the models expect
    return folder_data(np.ascontiguousarray(x), files, class_dirs, folder)


# ----------------------------------------------------------------------------------------- audio

WAV_SUFFIXES = (".wav", ".wave")
WAV_PCM, WAV_FLOAT, WAV_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE  # RIFF WAVE format tags (Microsoft, mmreg.h)
WAV_EXPECTED = "a RIFF WAVE file of 8/16/24/32-bit PCM or 32/64-bit float samples"


@dataclass(frozen=True)
class Wav:
    """One WAV file's samples: waveform float64 (frames,) in [-1, 1], channels already averaged."""

    waveform: np.ndarray
    sample_rate: int
    channels: int
    bits: int
    encoding: str  # "pcm" or "float"


def _wav_chunks(data: bytes, path: Path) -> dict[bytes, bytes]:
    """The chunks of a RIFF WAVE file, by id (the first of each; a chunk of odd size is padded by a byte)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a WAV file (no RIFF/WAVE header); expected {WAV_EXPECTED}")
    chunks: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = data[pos + 8:pos + 8 + size]
        if len(body) < size:
            if cid != b"data":
                raise ValueError(f"{path}: truncated {cid.decode('latin-1')!r} chunk ({len(body)} of {size} "
                                 f"bytes); expected {WAV_EXPECTED}")
            body = body[: len(body) - len(body) % 8]  # a streamed file's data size may be unset: take what is there
        chunks.setdefault(cid, body)
        pos += 8 + size + (size & 1)
    return chunks


def read_wav(path: str | Path) -> Wav:
    """Parse a WAV file: PCM of 8 (unsigned), 16, 24 or 32 bits, or IEEE float of 32 or 64 bits,
    plain or WAVE_FORMAT_EXTENSIBLE, any number of channels (averaged to mono). Integer PCM of b
    bits maps to [-1, 1) by dividing by 2^(b-1) (8-bit is offset by 128 first); float is clipped to
    [-1, 1]. Read by hand (the standard `wave` module of Python 3.11 reads integer PCM only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; expected {WAV_EXPECTED}")
    chunks = _wav_chunks(path.read_bytes(), path)
    fmt, data = chunks.get(b"fmt "), chunks.get(b"data")
    if fmt is None or len(fmt) < 16:
        raise ValueError(f"{path}: no (or a short) 'fmt ' chunk; expected {WAV_EXPECTED}")
    if data is None:
        raise ValueError(f"{path}: no 'data' chunk; expected {WAV_EXPECTED}")
    tag, channels, rate = int.from_bytes(fmt[0:2], "little"), int.from_bytes(fmt[2:4], "little"), \
        int.from_bytes(fmt[4:8], "little")
    block, bits = int.from_bytes(fmt[12:14], "little"), int.from_bytes(fmt[14:16], "little")
    if tag == WAV_EXTENSIBLE and len(fmt) >= 26:
        tag = int.from_bytes(fmt[24:26], "little")  # the sub-format GUID starts with the plain tag
    width = bits // 8
    if tag == WAV_PCM and bits in (8, 16, 24, 32):
        encoding = "pcm"
    elif tag == WAV_FLOAT and bits in (32, 64):
        encoding = "float"
    else:
        raise ValueError(f"{path}: format tag 0x{tag:04x} with {bits} bits per sample is not supported; "
                         f"expected {WAV_EXPECTED}")
    if channels < 1 or rate < 1 or block != channels * width:
        raise ValueError(f"{path}: inconsistent 'fmt ' chunk ({channels} channels, {rate} Hz, block {block} "
                         f"bytes for {bits}-bit samples); expected {WAV_EXPECTED}")
    frames = len(data) // block
    raw = np.frombuffer(data, dtype=np.uint8, count=frames * block).reshape(frames * channels, width)
    if encoding == "float":
        values = raw.copy().view("<f4" if bits == 32 else "<f8")[:, 0].astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"{path}: float samples include NaN or infinity; expected finite samples")
        values = np.clip(values, -1.0, 1.0)
    elif bits == 8:
        values = (raw[:, 0].astype(np.float64) - 128) / 128  # 8-bit WAV is unsigned, silence at 128
    else:
        padded = np.zeros((len(raw), 4), dtype=np.uint8)  # little-endian: the value in the top bytes
        padded[:, 4 - width:] = raw
        values = padded.view("<i4")[:, 0].astype(np.float64) / 2.0 ** 31
    return Wav(values.reshape(frames, channels).mean(axis=1), rate, channels, bits, encoding)


def wav_bytes(waveform: np.ndarray, sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV file (bytes) of a waveform in [-1, 1] (clipped; rounded to 1/32767)."""
    pcm = np.round(np.clip(np.asarray(waveform, dtype=np.float64), -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def fit_length(waveform: np.ndarray, samples: int, crop: str) -> np.ndarray:
    """Exactly `samples` samples: cropped from the start or around the centre, or zero-padded at the end."""
    if len(waveform) >= samples:
        start = 0 if crop == "start" else (len(waveform) - samples) // 2
        return waveform[start:start + samples]
    return np.concatenate([waveform, np.zeros(samples - len(waveform))])


def _is_wav(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in WAV_SUFFIXES and not p.name.startswith(".")


def load_wav_folder(folder: str | Path, sample_rate: int, samples: int, crop: str = "start") -> FolderData:
    """Load `folder/<class>/*.wav` (labelled, classes sorted by name) or `folder/*.wav` (unlabelled):
    each file mono (channels averaged), at exactly `sample_rate` Hz (no resampling), cropped or
    zero-padded to `samples`, μ-law encoded (gm.data.audio)."""
    folder = Path(folder)
    expected = "a folder of WAV files, one subfolder per class"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found; expected {expected}")
    if crop not in ("start", "center"):
        raise ValueError(f"crop {crop!r}: expected 'start' or 'center'")
    files, class_dirs = folder_files(folder, _is_wav, "WAV files")
    x = np.empty((len(files), 1, samples), dtype=np.uint8)
    for i, (p, _) in enumerate(files):
        wav = read_wav(p)
        if wav.sample_rate != sample_rate:
            raise ValueError(f"{p}: sample rate {wav.sample_rate} Hz; expected {sample_rate} Hz (the dataset's "
                             "sample_rate; resample the file, gm does not)")
        if len(wav.waveform) == 0:
            raise ValueError(f"{p}: no samples; expected at least one frame of audio")
        x[i, 0] = mu_law_encode(fit_length(wav.waveform, samples, crop))
    return folder_data(x, files, class_dirs, folder)
