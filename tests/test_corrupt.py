"""A damaged Parquet split, meta.json, checkpoint or exported model folder is one line naming the file, what
is wrong and what to do (gm.core.files.CorruptFile), and loading never executes stored code: tensors load
with weights_only=True, and a pickled payload is refused before it can run."""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import gm.models  # noqa: F401  (fills the registry)
from gm import stage
from gm.core.config import build
from gm.core.files import CorruptFile, load_tensors, read_json
from gm.core.layout import Layout
from gm.core.registry import FAMILIES
from gm.data.io import check_split, data_spec, read_meta, read_split
from gm.models.base import build_model, load_model, save_model
from gm.training.driver import SNAPSHOT, check_buildable, corrupt_cause, start_or_resume
from gm.training.engine import Stepper
from gm.training.loop import load_checkpoint, read_checkpoint, write_checkpoint
from tests.helpers import REPO, TOY, tiny_params


def one_line(error: BaseException, path: Path) -> str:
    """The message of a CorruptFile about `path`: one line, the file first."""
    msg = str(error)
    assert isinstance(error, CorruptFile) and "\n" not in msg, msg
    assert msg.startswith(f"{path}: "), msg
    return msg


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble(path: Path, at: float = 0.5, n: int = 32) -> None:
    """n bytes from `at` (a fraction of the file) overwritten; the length stays."""
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + n] = bytes((i * 37 + 11) % 256 for i in range(n))[: len(data) - i]
    path.write_bytes(bytes(data))


class Payload:
    """Stands for any code in a pickle: unpickling it calls open(marker, "w"), creating the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


# ------------------------------------------------------------------------------- prepared data


@pytest.fixture
def ring8(prepared, tmp_path) -> Path:
    """A copy of the session's prepared ring8 (the tests damage it)."""
    return Path(shutil.copytree(Layout(prepared).prepared("ring8"), tmp_path / "ring8"))


def test_a_truncated_split_names_the_file_and_the_stage_that_rebuilds_it(ring8):
    path = ring8 / "train.parquet"
    truncate(path)
    for read in (lambda: read_split(ring8, "train"), lambda: check_split(ring8, "train")):
        with pytest.raises(CorruptFile) as e:
            read()
        msg = one_line(e.value, path)
        assert "not a readable Parquet file (truncated" in msg and "dvc repro -f prepare@ring8" in msg


def test_garbage_bytes_in_a_split_fail_its_recorded_sha256(ring8):
    meta = read_meta(ring8)
    assert set(meta["sha256"]) == {"train", "val", "test"}
    garble(ring8 / "val.parquet")  # the frame and footer intact: a reader could return wrong numbers
    for read in (lambda: read_split(ring8, "val"), lambda: check_split(ring8, "val")):
        with pytest.raises(CorruptFile) as e:
            read()
        assert "differ from the sha256 in meta.json" in one_line(e.value, ring8 / "val.parquet")
    read_split(ring8, "train")  # the others are untouched
    check_split(ring8, "test")


def test_a_split_prepared_before_hashes_were_recorded_is_decoded_instead(ring8):
    meta = read_meta(ring8)
    del meta["sha256"]
    (ring8 / "meta.json").write_text(json.dumps(meta))
    check_split(ring8, "train")
    garble(ring8 / "train.parquet", at=0.97, n=16)  # the footer
    with pytest.raises(CorruptFile) as e:
        check_split(ring8, "train")
    assert "not a readable Parquet file" in one_line(e.value, ring8 / "train.parquet")


def test_a_damaged_meta_json_is_one_line(ring8):
    path = ring8 / "meta.json"
    good = path.read_bytes()
    truncate(path)
    for read in (read_meta, data_spec):
        with pytest.raises(CorruptFile) as e:
            read(ring8)
        msg = one_line(e.value, path)
        assert "not valid JSON (truncated" in msg and "prepare@ring8" in msg
    for text, what in (("[1, 2]", "expected a JSON object"), ('{"kind": "toy"}', "no shape"),
                       ('{"kind": "toy", "shape": 7}', "not a valid data description")):
        path.write_text(text)
        with pytest.raises(CorruptFile, match=what) as e:
            data_spec(ring8)
        one_line(e.value, path)
    path.write_bytes(good)
    assert data_spec(ring8).shape == (2,)


@pytest.mark.parametrize("in_memory", [True, False])
def test_the_driver_vets_the_splits_before_ray_starts(ring8, in_memory):
    from gm.params import parse_params

    raw = tiny_params()
    raw["experiments"]["wgan_gp-ring8"]["train"] = {"data_in_memory": in_memory}
    exp = parse_params(raw).experiment("wgan_gp-ring8")
    check_buildable(exp, ring8)
    garble(ring8 / "train.parquet")
    with pytest.raises(CorruptFile) as e:
        check_buildable(exp, ring8)
    one_line(e.value, ring8 / "train.parquet")


def test_a_stage_prints_a_damaged_file_as_its_one_error_line(ring8, capsys):
    truncate(ring8 / "test.parquet")
    with pytest.raises(SystemExit) as e:
        stage.guarded(lambda: read_split(ring8, "test"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {ring8 / 'test.parquet'}: not a readable Parquet file")


# ------------------------------------------------------------------------------- models


def gan(hidden: int = 8):
    config = build(FAMILIES["gan"].config_cls, {"z_dim": 2, "hidden": hidden, "depth": 1}, "model")
    return build_model("gan", config, TOY)


@pytest.fixture
def exported(tmp_path) -> Path:
    """A model folder where the train stage exports one: artifacts/train/<experiment>/models/seed-0."""
    return save_model(gan(), Layout(tmp_path).train("gan-ring8").model(0))


def set_hidden(config: Path, hidden: int) -> None:
    meta = json.loads(config.read_text())
    meta["config"]["hidden"] = hidden
    config.write_text(json.dumps(meta))


DAMAGES = {  # what is done to an exported model folder -> (damaged file, what the message says)
    "truncated weights": (lambda d: truncate(d / "weights.pt"), "weights.pt", "truncated"),
    "garbage weights": (lambda d: (d / "weights.pt").write_bytes(b"\x00garbage" * 50), "weights.pt",
                        "not a torch file"),
    "a flipped byte in a tensor": (lambda d: garble(d / "weights.pt", at=0.6, n=1), "weights.pt",
                                   "differ from the sha256 in config.json"),
    "garbled config JSON": (lambda d: garble(d / "config.json", n=3), "config.json", "not valid JSON"),
    "truncated config JSON": (lambda d: truncate(d / "config.json"), "config.json", "not valid JSON (truncated"),
    "config without a family": (lambda d: (d / "config.json").write_text('{"config": {}}'), "config.json",
                                "not a gm model config (no 'family')"),
    "config of another size": (lambda d: set_hidden(d / "config.json", 16), "weights.pt",
                               "weights do not fit the config"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_exported_model_is_one_line_naming_the_file(exported, damage):
    assert load_model(exported).registry_name == "gan"
    do, name, what = DAMAGES[damage]
    do(exported)
    with pytest.raises(CorruptFile) as e:
        load_model(exported)
    msg = one_line(e.value, exported / name)
    assert what in msg and "dvc repro -f train@gan-ring8" in msg, msg


def test_a_missing_weights_file_is_not_found(exported):
    (exported / "weights.pt").unlink()
    with pytest.raises(FileNotFoundError, match="weights.pt: file not found; run `dvc repro -f train@gan-ring8`"):
        load_model(exported)


# ------------------------------------------------------------------------------- stored code


def plant(path: Path, marker: Path, **state) -> None:
    """A torch.save file at `path` holding `state` and a payload that creates `marker` when unpickled."""
    torch.save({**state, "payload": Payload(marker)}, path)


def test_the_payload_is_real(tmp_path):
    # the control: plain unpickling runs it (which is what weights_only=True prevents below)
    pickle.loads(pickle.dumps(Payload(tmp_path / "ran")))
    assert (tmp_path / "ran").exists()


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, exported):
    marker = tmp_path / "payload-ran"
    plant(tmp_path / "state.pt", marker, step=1, best=0.0)
    with pytest.raises(CorruptFile) as e:
        load_tensors(tmp_path / "state.pt", "remove it")
    msg = one_line(e.value, tmp_path / "state.pt")
    assert "refused: holds pickled objects other than tensors" in msg and "weights_only" in msg
    # the same payload as an exported model's weights
    plant(exported / "weights.pt", marker, **gan().state_dict())
    with pytest.raises(CorruptFile, match="refused: holds pickled objects other than tensors") as e:
        load_model(exported)
    one_line(e.value, exported / "weights.pt")
    assert not marker.exists()


def test_every_torch_load_in_gm_is_weights_only():
    calls = []
    for path in [*(REPO / "gm").rglob("*.py"), *(REPO / "tune").rglob("*.py"), *(REPO / "pipelines").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert calls and all(safe for _, safe in calls), [where for where, safe in calls if not safe]


# ------------------------------------------------------------------------------- checkpoints


def stepper_for(model) -> Stepper:
    return Stepper(model, TOY, torch.device("cpu"), torch.Generator().manual_seed(0), "constant", 100)


@pytest.fixture
def run(tmp_path) -> tuple[str, str, Path]:
    """(storage, run name, its latest checkpoint): an unfinished run of definition "d" as Ray Train leaves
    it (its checkpoint and the snapshot recording it)."""
    storage, name = str(tmp_path / "ray"), "train-gan-ring8-seed0"
    assert start_or_resume(storage, name, "d") is False
    folder = Path(storage) / name
    model = gan()
    ckpt = folder / "checkpoint_00000030"
    write_checkpoint(ckpt, model, stepper_for(model), 30, {"step": 30, "val_score": 1.0}, 1.0, [{"step": 30}])
    result = {"checkpoint_dir_name": ckpt.name, "metrics": {"step": 30}}
    (folder / SNAPSHOT).write_text(json.dumps({"checkpoint_results": [result], "latest_checkpoint_result": result}))
    return storage, name, ckpt


def test_a_checkpoint_round_trips(run):
    model = gan()
    assert read_checkpoint(run[2], model, stepper_for(model)) == (30, 1.0, [{"step": 30}])


CHECKPOINT_DAMAGES = {
    "truncated state": (lambda c: truncate(c / "state.pt"), "state.pt", "truncated"),
    "state of another kind": (lambda c: torch.save([1, 2], c / "state.pt"), "state.pt", "not a gm checkpoint's state"),
    "garbled curve": (lambda c: garble(c / "history.json", at=0.3, n=2), "history.json", "not valid JSON"),
    "truncated model weights": (lambda c: truncate(c / "model" / "weights.pt"), "model/weights.pt", "truncated"),
}


@pytest.mark.parametrize("damage", sorted(CHECKPOINT_DAMAGES))
def test_a_damaged_checkpoint_stops_the_resume_with_one_line(run, damage):
    storage, name, ckpt = run
    assert start_or_resume(storage, name, "d") is True
    do, file, what = CHECKPOINT_DAMAGES[damage]
    do(ckpt)
    for load in (lambda: load_checkpoint(ckpt), lambda: start_or_resume(storage, name, "d")):
        with pytest.raises(CorruptFile) as e:
            load()
        msg = one_line(e.value, ckpt / file)
        assert what in msg and "--fresh" in msg and f"remove {ckpt.parent}" in msg, msg
    assert ckpt.is_dir()  # not skipped silently, nor removed behind the user's back
    assert start_or_resume(storage, name, "d", fresh=True) is False and not ckpt.exists()  # --fresh: from step 0


def test_a_malicious_checkpoint_is_refused_before_the_resume(run, tmp_path):
    storage, name, ckpt = run
    marker = tmp_path / "payload-ran"
    plant(ckpt / "state.pt", marker, step=30, best=1.0, optimizers=[])
    with pytest.raises(CorruptFile) as e:
        start_or_resume(storage, name, "d")
    assert "refused: holds pickled objects other than tensors" in one_line(e.value, ckpt / "state.pt")
    assert not marker.exists()


def test_a_damaged_or_inconsistent_snapshot_stops_the_resume(run):
    storage, name, ckpt = run
    snapshot = ckpt.parent / SNAPSHOT
    good = snapshot.read_bytes()
    truncate(snapshot)
    with pytest.raises(CorruptFile) as e:
        start_or_resume(storage, name, "d")
    assert "not valid JSON" in one_line(e.value, snapshot)
    snapshot.write_bytes(good)
    shutil.rmtree(ckpt)  # Ray refuses a run whose recorded checkpoint is gone: say so before it starts
    with pytest.raises(FileNotFoundError, match=f"{ckpt}: checkpoint not found.*--fresh"):
        start_or_resume(storage, name, "d")


def test_a_corrupt_file_raised_in_a_worker_reaches_the_driver_as_its_one_line(tmp_path):
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    raised = CorruptFile(tmp_path / "state.pt", "truncated", "remove it")
    back = pickle.loads(pickle.dumps(raised))  # how it travels from a worker
    assert type(back) is CorruptFile and str(back) == str(raised) and back.path == raised.path
    wrapped = WorkerGroupError("rank 0 failed: Traceback ...", {0: back})
    assert corrupt_cause(pickle.loads(pickle.dumps(wrapped))) is not None
    assert str(corrupt_cause(wrapped)) == f"{tmp_path / 'state.pt'}: truncated; remove it"
    try:
        raise RuntimeError("trial failed") from ControllerError(wrapped)
    except RuntimeError as e:
        assert corrupt_cause(e) is back
    assert corrupt_cause(WorkerGroupError("boom", {0: ValueError("other")})) is None


def test_read_json_says_where_a_json_file_breaks(tmp_path):
    path = tmp_path / "history.json"
    path.write_text('[{"step": 50, "val_score": 1.5}, {"step": 100, "val')
    with pytest.raises(CorruptFile, match=r"not valid JSON \(truncated") as e:
        read_json(path, "rerun")
    assert str(e.value).endswith("; rerun")
    path.write_bytes(b'{"a": \xff\xfe}')
    with pytest.raises(CorruptFile, match="not UTF-8"):
        read_json(path)


@pytest.mark.integration
def test_a_worker_that_meets_a_damaged_checkpoint_fails_the_fit_with_its_one_line(prepared, local_ray, tmp_path,
                                                                                   monkeypatch):
    # the driver's own check passed over (a checkpoint handed to the run, as PBT and restored sweeps do):
    # Ray Train raises the worker's failure as a WorkerGroupError, and fit() raises the CorruptFile inside it
    import dataclasses

    import ray.train

    from gm.params import parse_params
    from gm.training import driver

    exp = parse_params(tiny_params()).experiment("wgan_gp-ring8")
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, max_failures=0))
    data_dir = Layout(prepared).prepared("ring8")
    model = build_model(exp.family, exp.model, data_spec(data_dir))
    ckpt = tmp_path / "handed" / "checkpoint_00000030"
    write_checkpoint(ckpt, model, stepper_for(model), 30, {}, 1.0, [])
    truncate(ckpt / "state.pt")
    make = driver.make_trainer
    monkeypatch.setattr(driver, "make_trainer", lambda *a, **k: make(
        *a, **k, init_checkpoint=ray.train.Checkpoint.from_directory(str(ckpt))))
    with pytest.raises(CorruptFile) as e:
        driver.fit(exp, data_dir, str(tmp_path / "ray"), "train-wgan_gp-ring8-seed0")
    assert "truncated" in one_line(e.value, ckpt / "state.pt")


@pytest.mark.integration
@pytest.mark.chaos
def test_every_damaged_file_stops_its_stage_with_one_line_and_registers_nothing(tmp_path):
    from gm.chaos.files import corrupt

    rows = corrupt(tmp_path / "corrupt")
    assert len(rows) == 7
    for r in rows:
        assert r.details["exit"] == 2, (r.fault, r.details["stderr_tail"])
        assert r.happened.startswith("error: ") and r.details["named"], (r.fault, r.happened)
        assert not r.details["payload_ran"], r.fault
        assert r.duplicated == 0 and r.lost == 0, (r.fault, r.duplicated, r.lost)
        assert r.clean, r
