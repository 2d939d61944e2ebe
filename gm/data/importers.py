"""Readers for raw dataset files: IDX (MNIST-style), possibly gzipped files, image folders.

Every problem with a file is a one-line error naming the file and what was expected:
`FileNotFoundError` when it is absent, `ValueError` when it is there but unreadable.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
class ImageFolder:
    """Images loaded from a folder: x is uint8 (N, C, H, W); y and class_names are None if unlabelled."""

    x: np.ndarray
    y: np.ndarray | None
    class_names: tuple[str, ...] | None
    files: tuple[Path, ...]  # relative to the folder, in the order of x


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def load_image_folder(folder: str | Path, grayscale: bool = True, size: int | None = None) -> ImageFolder:
    """Load `folder/<class>/*.png|jpg` (labelled, classes sorted by name) or `folder/*.png|jpg` (unlabelled).

    Without `size` every image must have the size of the first one; with it all are resized.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found; expected a folder of PNG/JPEG images, "
                                "one subfolder per class")
    loose = sorted(p for p in folder.iterdir() if _is_image(p))
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_dirs = [d for d in class_dirs if any(_is_image(p) for p in d.iterdir())]
    if loose and class_dirs:
        raise ValueError(f"{folder}: has both images and class subfolders with images; expected one "
                         "or the other (subfolders = labelled, loose images = unlabelled)")
    if class_dirs:
        files = [(p, label) for label, d in enumerate(class_dirs) for p in sorted(d.iterdir()) if _is_image(p)]
    else:
        files = [(p, -1) for p in loose]
    if not files:
        raise ValueError(f"{folder}: no PNG/JPEG images found; expected images in the folder or in "
                         "one subfolder per class")

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
    labelled = bool(class_dirs)
    return ImageFolder(
        x=np.ascontiguousarray(x),
        y=np.array([label for _, label in files], dtype=np.int64) if labelled else None,
        class_names=tuple(d.name for d in class_dirs) if labelled else None,
        files=tuple(p.relative_to(folder) for p, _ in files),
    )
