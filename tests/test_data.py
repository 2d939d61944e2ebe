"""Data sources, importers, Parquet splits and the prepare stage (fast; everything under tmp_path)."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gm.core.config import ConfigError
from gm.data.bootstrap import materialise_default_data, sklearn_digits_file
from gm.data.importers import read_idx, write_idx
from gm.data.io import arrow_to_numpy, data_spec, read_meta, read_split, split_schema, write_splits
from gm.data.sources import DIGITS_PATH, SOURCES, build_source
from gm.stages import prepare as stage
from pipelines import prepare as prepare_stage

REPO = Path(__file__).resolve().parents[1]




def src(cfg: dict):
    return build_source("ds", cfg, "data.datasets.ds")


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def nearest(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centre, displacement from it) per point."""
    d = np.linalg.norm(x[:, None, :] - centers[None], axis=2)
    k = d.argmin(axis=1)
    return k, x - centers[k]


@pytest.fixture(scope="module")
def digits_prepared(digits_root, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared")
    meta = stage.prepare("digits", src({"source": "digits"}), digits_root, out, 0, 0.1, 0.2)
    return out / "digits", meta


# ----------------------------------------------------------------------------------- toys


@pytest.mark.parametrize("name, centers, std", [
    ("ring8", [[math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)] for k in range(8)], 0.01),
    ("grid25", [[i, j] for i in (-4, -2, 0, 2, 4) for j in (-4, -2, 0, 2, 4)], 0.05),
])
def test_gaussian_mixtures(name, centers, std):
    cfg = src({"source": name})
    x, y, info = cfg.load(Path("."), seed=3)
    assert x.shape == (cfg.n, 2) and x.dtype == np.float32 and y is None
    assert info["kind"] == "toy" and info["shape"] == [2] and info["source_files"] == []
    got = np.array(info["modes"]["centers"])
    assert info["modes"]["std"] == std
    assert np.allclose(got, centers, atol=1e-12) and len(got) == len(centers)

    k, disp = nearest(x.astype(np.float64), got)
    # each coordinate of the displacement from the nearest centre is N(0, std^2)
    assert np.std(disp) == pytest.approx(std, rel=0.05)
    assert np.linalg.norm(disp, axis=1).mean() == pytest.approx(std * math.sqrt(math.pi / 2), rel=0.05)
    counts = np.bincount(k, minlength=len(centers))
    assert counts.min() > 0.5 * cfg.n / len(centers)  # every mode populated, roughly equally

    x2, _, _ = cfg.load(Path("."), seed=3)
    x3, _, _ = cfg.load(Path("."), seed=4)
    assert np.array_equal(x, x2)
    assert not np.allclose(x, x3)


def test_ring8_radius_and_std_are_configurable():
    cfg = src({"source": "ring8", "radius": 2.0, "std": 0.1, "n": 4000})
    x, _, info = cfg.load(Path("."), seed=0)
    assert np.allclose(np.linalg.norm(info["modes"]["centers"], axis=1), 2.0)
    _, disp = nearest(x.astype(np.float64), np.array(info["modes"]["centers"]))
    assert np.std(disp) == pytest.approx(0.1, rel=0.08)


def test_swissroll_matches_wgan_gp_definition():
    from sklearn.datasets import make_swiss_roll

    cfg = src({"source": "swissroll", "n": 5000})
    x, y, info = cfg.load(Path("."), seed=0)
    assert x.shape == (5000, 2) and y is None and "modes" not in info
    ref, _ = make_swiss_roll(200_000, noise=0.25, random_state=0)
    ref = ref[:, [0, 2]] / 7.5
    # same columns and scale: the ranges agree with sklearn's (y column 1 would span 0..21/7.5)
    assert np.allclose(x.min(0), ref.min(0), atol=0.15) and np.allclose(x.max(0), ref.max(0), atol=0.15)
    assert np.abs(x).max() < 2.2
    assert not np.array_equal(x, cfg.load(Path("."), seed=1)[0])


def test_moons_shape():
    x, y, info = src({"source": "moons", "n": 300, "noise": 0.0}).load(Path("."), seed=0)
    assert x.shape == (300, 2) and y is None and info["kind"] == "toy"
    assert x[:, 0].min() == pytest.approx(-1, abs=1e-6) and x[:, 0].max() == pytest.approx(2, abs=1e-6)


def test_toy_meta_carries_modes(tmp_path):
    meta = stage.prepare("ring", src({"source": "ring8", "n": 800}), tmp_path, tmp_path, 0, 0.1, 0.2)
    on_disk = read_meta(tmp_path / "ring")
    assert on_disk == meta
    assert len(meta["modes"]["centers"]) == 8 and meta["modes"]["std"] == 0.01
    assert meta["n"] == {"train": 560, "val": 80, "test": 160}
    assert meta["classes"] is None and meta["schema"] == {"x": "fixed_size_list<item: float>[2]"}
    x, y = read_split(tmp_path / "ring", "test")
    assert x.shape == (160, 2) and y is None
    # the toy's hash covers its generator params and the seed
    other = stage.prepare("ring", src({"source": "ring8", "n": 800}), tmp_path, tmp_path / "b", 1, 0.1, 0.2)
    assert other["source_hash"] != meta["source_hash"]


# --------------------------------------------------------------------------------- digits


def test_bootstrap_copies_sklearn_digits_byte_for_byte(tmp_path):
    written = materialise_default_data(tmp_path)
    dest = tmp_path / DIGITS_PATH
    assert written == [dest]
    assert md5(dest) == md5(sklearn_digits_file())
    assert materialise_default_data(tmp_path) == []  # present: left alone
    dest.write_bytes(b"mine")
    assert materialise_default_data(tmp_path) == [] and dest.read_bytes() == b"mine"


def test_digits_load(digits_root):
    x, y, info = src({"source": "digits"}).load(digits_root, seed=0)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert x.min() == 0 and x.max() == 16 and np.array_equal(x, np.round(x))
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    assert info == {"kind": "image", "shape": [1, 8, 8], "levels": 17, "num_classes": 10,
                    "source_files": [DIGITS_PATH]}
    from sklearn.datasets import load_digits

    ref = load_digits()
    assert np.array_equal(x.reshape(1797, 64), ref.data) and np.array_equal(y, ref.target)


def test_digits_splits_sizes_and_stratification(digits_prepared):
    out, meta = digits_prepared
    assert meta["n"]["test"] == 360 and meta["n"]["train"] + meta["n"]["val"] == 1437
    assert meta["n"] == {"train": 1257, "val": 180, "test": 360}
    ys = {s: read_split(out, s)[1] for s in ("train", "val", "test")}
    all_y = np.concatenate(list(ys.values()))
    overall = np.bincount(all_y, minlength=10)
    for split, y in ys.items():
        expected = overall * len(y) / len(all_y)
        assert np.abs(np.bincount(y, minlength=10) - expected).max() < 1.0, split


def test_digits_parquet_round_trip_equals_input(digits_root, digits_prepared):
    out, _ = digits_prepared
    x, y, _ = src({"source": "digits"}).load(digits_root, seed=0)
    parts = [read_split(out, s) for s in ("train", "val", "test")]
    got_x = np.concatenate([p[0] for p in parts])
    got_y = np.concatenate([p[1] for p in parts])
    assert got_x.shape == (1797, 1, 8, 8) and got_x.dtype == np.float32
    # same multiset of (image, label) rows: sort both by their bytes
    key = lambda a, b: sorted(zip(map(bytes, a.reshape(len(a), -1)), b.tolist()))  # noqa: E731
    assert key(got_x, got_y) == key(x, y)


def test_digits_meta_and_schema(digits_prepared):
    out, meta = digits_prepared
    assert read_meta(out) == meta
    text = (out / "meta.json").read_text()
    assert text == json.dumps(meta, sort_keys=True, indent=2) + "\n"
    assert meta["name"] == "digits" and meta["kind"] == "image" and meta["shape"] == [1, 8, 8]
    assert meta["levels"] == 17 and meta["num_classes"] == 10 and meta["classes"] == list(range(10))
    assert meta["range"] == [0.0, 16.0] and meta["seed"] == 0 and meta["modes"] is None
    assert meta["val_fraction"] == 0.1 and meta["test_fraction"] == 0.2
    hasher = hashlib.md5(DIGITS_PATH.encode() + b"\0")
    hasher.update(sklearn_digits_file().read_bytes())
    assert meta["source_hash"] == hasher.hexdigest()
    assert meta["schema"] == {"x": "fixed_size_list<item: float>[64]", "y": "int64"}
    schema = pq.read_schema(out / "train.parquet")
    assert schema.field("x").type == pa.list_(pa.float32(), 64)
    assert schema.field("y").type == pa.int64() and schema.names == ["x", "y"]
    spec = data_spec(out)
    assert spec.shape == (1, 8, 8) and spec.kind == "image" and spec.levels == 17 and spec.num_classes == 10


def test_writing_twice_is_byte_identical(digits_root, tmp_path):
    cfg = src({"source": "digits"})
    stage.prepare("digits", cfg, digits_root, tmp_path / "a", 0, 0.1, 0.2)
    stage.prepare("digits", cfg, digits_root, tmp_path / "b", 0, 0.1, 0.2)
    for f in ("train.parquet", "val.parquet", "test.parquet", "meta.json"):
        assert (tmp_path / "a/digits" / f).read_bytes() == (tmp_path / "b/digits" / f).read_bytes(), f
    stage.prepare("digits", cfg, digits_root, tmp_path / "c", 1, 0.1, 0.2)
    assert (tmp_path / "c/digits/train.parquet").read_bytes() != (tmp_path / "a/digits/train.parquet").read_bytes()


def test_arrow_to_numpy_on_slices_and_chunks():
    x = np.arange(5 * 12, dtype=np.float32).reshape(5, 3, 2, 2)
    y = np.arange(5, dtype=np.int64)
    from gm.data.io import to_table

    table = to_table(x, y)
    gx, gy = arrow_to_numpy(table.slice(2, 2), (3, 2, 2))
    assert np.array_equal(gx, x[2:4]) and np.array_equal(gy, y[2:4]) and gx.flags.writeable
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2)])
    assert np.array_equal(arrow_to_numpy(chunked, [3, 2, 2])[0], x)
    batch = table.to_batches()[0].slice(1, 3)
    bx, by = arrow_to_numpy(batch, (3, 2, 2))
    assert np.array_equal(bx, x[1:4]) and np.array_equal(by, y[1:4])
    unlabelled = to_table(x, None)
    assert arrow_to_numpy(unlabelled, (3, 2, 2))[1] is None
    with pytest.raises(ValueError, match="expected"):
        arrow_to_numpy(table, (5,))


def test_read_split_errors(digits_prepared, tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro prepare") as e:
        read_split(tmp_path, "train")
    assert str(tmp_path / "train.parquet") in str(e.value)
    # a parquet whose schema disagrees with meta.json
    out, _ = digits_prepared
    (tmp_path / "meta.json").write_bytes((out / "meta.json").read_bytes())
    pq.write_table(pa.table({"x": pa.array([1.0, 2.0])}), tmp_path / "train.parquet")
    with pytest.raises(ValueError, match="train.parquet.*schema"):
        read_split(tmp_path, "train")
    (tmp_path / "val.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="val.parquet"):
        read_split(tmp_path, "val")


def test_write_splits_deterministic_unlabelled(tmp_path):
    x = np.random.default_rng(0).normal(size=(101, 3)).astype(np.float32)
    info = {"kind": "toy", "shape": [3], "levels": None, "num_classes": None, "source_files": []}
    m1 = write_splits(tmp_path / "a", x, None, info, 5, 0.1, 0.2, "h")
    m2 = write_splits(tmp_path / "b", x, None, info, 5, 0.1, 0.2, "h")
    assert m1["n"] == {"train": 69, "val": 11, "test": 21}
    assert (tmp_path / "a/test.parquet").read_bytes() == (tmp_path / "b/test.parquet").read_bytes()
    parts = np.concatenate([read_split(tmp_path / "a", s)[0] for s in ("train", "val", "test")])
    assert sorted(map(bytes, parts)) == sorted(map(bytes, x))  # a partition: no row lost or repeated
    assert pq.read_schema(tmp_path / "a/train.parquet").equals(split_schema((3,), False))


# ------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    a = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype) if dtype != np.uint8 else \
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / name, a)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    got = read_idx(path)
    assert got.dtype == a.dtype and np.array_equal(got, a)


def test_idx_gzip_is_detected_by_magic_not_extension(tmp_path):
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    write_idx(tmp_path / "x.gz", a)
    (tmp_path / "x.gz").rename(tmp_path / "plain-name")
    assert np.array_equal(read_idx(tmp_path / "plain-name"), a)


def test_idx_header_is_mnist_format(tmp_path):
    path = write_idx(tmp_path / "t", np.zeros((3, 28, 28), np.uint8))
    raw = path.read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:16] == (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert len(raw) == 16 + 3 * 28 * 28


def test_idx_truncated_and_bad_magic(tmp_path):
    path = write_idx(tmp_path / "imgs", np.zeros((4, 5, 5), np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"imgs: truncated: expected 100 bytes of data, got 93"):
        read_idx(path)
    gz = tmp_path / "imgs.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(ValueError, match=r"imgs.gz: truncated"):
        read_idx(gz)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match=r"bad: bad IDX magic"):
        read_idx(bad)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


def test_idx_source(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(30, 6, 6), dtype=np.uint8)
    labels = np.tile(np.arange(3, dtype=np.uint8), 10)
    write_idx(tmp_path / "raw/images-idx3-ubyte.gz", imgs)
    write_idx(tmp_path / "raw/labels-idx1-ubyte", labels)
    cfg = src({"source": "idx", "images": "raw/images-idx3-ubyte.gz", "labels": "raw/labels-idx1-ubyte"})
    x, y, info = cfg.load(tmp_path, seed=0)
    assert x.shape == (30, 1, 6, 6) and np.array_equal(x[:, 0], imgs) and np.array_equal(y, labels)
    assert info["levels"] == 256 and info["num_classes"] == 3 and info["kind"] == "image"
    assert info["source_files"] == ["raw/images-idx3-ubyte.gz", "raw/labels-idx1-ubyte"]
    x, y, _ = src({"source": "idx", "images": "raw/images-idx3-ubyte.gz"}).load(tmp_path, 0)
    assert y is None
    with pytest.raises(ValueError, match=r"images-idx3-ubyte.gz: values must be integers in 0..15"):
        src({"source": "idx", "images": "raw/images-idx3-ubyte.gz", "levels": 16}).load(tmp_path, 0)
    write_idx(tmp_path / "raw/short-labels", labels[:5])
    with pytest.raises(ValueError, match=r"short-labels: labels have shape"):
        src({"source": "idx", "images": "raw/images-idx3-ubyte.gz", "labels": "raw/short-labels"}).load(tmp_path, 0)
    missing = src({"source": "idx", "images": "raw/images-idx3-ubyte.gz", "labels": "raw/none"})
    with pytest.raises(FileNotFoundError, match=r"raw/none: file not found"):
        missing.check(tmp_path)


# ------------------------------------------------------------------------ NPZ, image folder


def test_npz_source(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float64)
    y = np.arange(20) % 4
    np.savez(tmp_path / "lab.npz", x=x, y=y)
    np.savez(tmp_path / "unlab.npz", x=x)
    np.savez(tmp_path / "img.npz", pixels=np.full((10, 4, 4), 3, np.uint8))

    gx, gy, info = src({"source": "npz", "path": "lab.npz"}).load(tmp_path, 0)
    assert gx.dtype == np.float32 and np.allclose(gx, x) and np.array_equal(gy, y)
    assert info["kind"] == "toy" and info["shape"] == [3] and info["levels"] is None and info["num_classes"] == 4
    gx, gy, info = src({"source": "npz", "path": "unlab.npz"}).load(tmp_path, 0)
    assert gy is None and info["num_classes"] is None
    gx, gy, info = src({"source": "npz", "path": "img.npz", "x_key": "pixels", "levels": 4}).load(tmp_path, 0)
    assert gx.shape == (10, 1, 4, 4) and info["kind"] == "image" and info["levels"] == 4

    with pytest.raises(ValueError, match=r"unlab.npz: no array 'labels' \(y_key\)"):
        src({"source": "npz", "path": "unlab.npz", "y_key": "labels"}).load(tmp_path, 0)
    with pytest.raises(ValueError, match=r"lab.npz: no array 'data' \(x_key\); found: x, y"):
        src({"source": "npz", "path": "lab.npz", "x_key": "data"}).load(tmp_path, 0)
    with pytest.raises(ValueError, match=r"img.npz: values must be integers in 0..2"):
        src({"source": "npz", "path": "img.npz", "x_key": "pixels", "levels": 3}).load(tmp_path, 0)


def _png(path: Path, size: tuple[int, int], value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)


def test_image_folder_source(tmp_path):
    for i in range(3):
        _png(tmp_path / "imgs/cat" / f"{i}.png", (5, 4), 10 + i)
        _png(tmp_path / "imgs/dog" / f"{i}.png", (5, 4), 200 + i)
    x, y, info = src({"source": "image_folder", "path": "imgs"}).load(tmp_path, 0)
    assert x.shape == (6, 1, 4, 5) and x.dtype == np.float32
    assert y.tolist() == [0, 0, 0, 1, 1, 1] and x[:3].max() < 13 and x[3:].min() >= 200
    assert info["levels"] == 256 and info["num_classes"] == 2 and info["class_names"] == ["cat", "dog"]
    assert info["source_files"][0] == "imgs/cat/0.png"

    x, _, info = src({"source": "image_folder", "path": "imgs", "grayscale": False, "size": 3}).load(tmp_path, 0)
    assert x.shape == (6, 3, 3, 3) and info["shape"] == [3, 3, 3]

    _png(tmp_path / "flat/a.png", (4, 4), 1)
    x, y, info = src({"source": "image_folder", "path": "flat"}).load(tmp_path, 0)
    assert x.shape == (1, 1, 4, 4) and y is None and info["num_classes"] is None

    _png(tmp_path / "imgs/dog/9.png", (6, 6), 0)
    with pytest.raises(ValueError, match=r"dog/9.png: image is 6x6 but .*cat/0.png is 5x4"):
        src({"source": "image_folder", "path": "imgs"}).load(tmp_path, 0)
    (tmp_path / "imgs/dog/9.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"dog/9.png: unreadable image"):
        src({"source": "image_folder", "path": "imgs"}).load(tmp_path, 0)
    with pytest.raises(FileNotFoundError, match=r"nowhere: folder not found"):
        src({"source": "image_folder", "path": "nowhere"}).check(tmp_path)


# ------------------------------------------------------------------------------ bad input


def test_known_sources():
    assert set(SOURCES) == {"digits", "ring8", "grid25", "swissroll", "moons", "idx", "npz", "image_folder",
                            "stacked_digits", "shapes32", "notes", "wav_folder"}
    for name, cls in SOURCES.items():
        assert src({"source": name, **({"path": "p"} if name in ("npz", "image_folder", "wav_folder") else {}),
                    **({"images": "i"} if name == "idx" else {})}).source == name
        assert cls.__dataclass_params__.frozen


@pytest.mark.parametrize("cfg, match", [
    ({"source": "mnist"}, r"^data\.datasets\.ds\.source: unknown data source 'mnist'; expected one of: digits, "),
    ({"n": 5}, r"^data\.datasets\.ds\.source: missing; expected one of: .*ring8"),
    ({"source": "ring8", "n": -5}, r"^data\.datasets\.ds\.n: expected a value > 0, got -5$"),
    ({"source": "grid25", "std": 0}, r"^data\.datasets\.ds\.std: expected a value > 0"),
    ({"source": "moons", "colour": 1}, r"^data\.datasets\.ds\.colour: unknown key"),
    ({"source": "idx"}, r"^data\.datasets\.ds\.images: missing"),
    ({"source": "idx", "images": "a", "levels": 1}, r"^data\.datasets\.ds\.levels: expected a value >= 2"),
    ("ring8", r"^data\.datasets\.ds: expected a mapping"),
])
def test_bad_config(cfg, match):
    with pytest.raises(ConfigError, match=match):
        src(cfg)


def test_missing_digits_file(tmp_path):
    cfg = src({"source": "digits"})
    for call in (cfg.check, lambda root: cfg.load(root, 0)):
        with pytest.raises(FileNotFoundError) as e:
            call(tmp_path)
        assert DIGITS_PATH in str(e.value) and "gm data init" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("rows, match", [
    (["0," * 64 + "3", "0," * 63 + "3"], r"row 2 has 64 columns; expected 65"),
    (["0," * 64 + "x"], r"unreadable CSV value"),
    (["0," * 63 + "17,3"], r"values must be integers in 0..16"),
    (["0," * 64 + "10"], r"labels \(last column\) must be integers in 0..9"),
    ([], r"no rows"),
])
def test_corrupt_digits_csv(tmp_path, rows, match):
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    with pytest.raises(ValueError, match=match) as e:
        src({"source": "digits", "path": "bad.csv.gz"}).load(tmp_path, 0)
    assert str(path) in str(e.value)


def test_plain_csv_digits_are_read_too(tmp_path):
    (tmp_path / "d.csv").write_text("\n".join(["1," * 64 + str(k) for k in range(10)] * 3) + "\n")
    x, y, _ = src({"source": "digits", "path": "d.csv"}).load(tmp_path, 0)
    assert x.shape == (30, 1, 8, 8) and (x == 1).all() and y.tolist() == list(range(10)) * 3


def test_too_few_samples(tmp_path):
    with pytest.raises(ValueError, match="too few"):
        stage.prepare("m", src({"source": "moons", "n": 2}), tmp_path, tmp_path, 0, 0.4, 0.4)


def test_stage_main_reports_errors_without_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GM_ROOT", raising=False)
    with pytest.raises(SystemExit) as e:
        prepare_stage.main(["digits"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}/params.yaml: file not found") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
