"""params.yaml validation: every bad value is a one-line error naming the field and what is expected."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest

from gm.core.config import ConfigError
from gm.core.layout import Layout
from gm.params import parse_params
from tests.helpers import REPO, env_for, tiny_params, write_params


def parse(raw):
    return parse_params(raw)


def test_the_quick_profile_and_the_tiny_profile_are_valid():
    from gm.params import load_params

    p = load_params(REPO / "params.yaml")
    assert {e.family for e in p.experiments.values()} >= {"gan", "wgan_gp", "vae", "realnvp"}
    for family in ("gan", "wgan_gp", "vae", "realnvp"):  # each family on a toy and on digits
        datasets = {e.dataset for e in p.experiments.values() if e.family == family}
        assert "digits" in datasets and datasets - {"digits"}, family
    assert parse(tiny_params()).experiments["vae-digits"].model.z_dim == 4


@pytest.mark.parametrize("profile", sorted(p.name for p in (REPO / "profiles").glob("*.yaml")))
def test_every_benchmark_profile_is_valid(profile):
    from gm.params import load_params

    p = load_params(REPO / "profiles" / profile)
    assert p.experiments and all(e.dataset in p.datasets for e in p.experiments.values())


def mutate(path: str, value):
    raw = copy.deepcopy(tiny_params())
    keys = path.split(".")
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return raw


@pytest.mark.parametrize("path,value,expect", [
    ("experiments.vae-digits.family", "vea", "experiments.vae-digits.family: unknown model family 'vea'"),
    ("experiments.vae-digits.model.beta", -1.0, "experiments.vae-digits.model.beta: expected a value >= 0"),
    ("experiments.wgan_gp-ring8.model.gp_weight", -5, "experiments.wgan_gp-ring8.model.gp_weight: expected a value >= 0"),
    ("experiments.vae-digits.model.betta", 1.0, "experiments.vae-digits.model.betta: unknown key"),
    ("train.scaling.num_workers", -1, "train.scaling.num_workers: expected a value >= 0"),
    ("experiments.vae-digits.train.scaling", {"num_workers": -2}, "experiments.vae-digits.train.scaling.num_workers"),
    ("experiments.vae-digits.dataset", "mnist", "experiments.vae-digits.dataset: unknown dataset 'mnist'"),
    ("experiments.vae-digits.model.lr", "fast", "experiments.vae-digits.model.lr: expected a number"),
    ("train.steps", 0, "train.steps: expected a value > 0"),
    ("train.eval_every", 1000, "train.eval_every: expected a value <= steps"),
    ("data.datasets.ring8.source", "ring9", "data.datasets.ring8.source"),
    ("data.datasets.ring8.n", -10, "data.datasets.ring8.n"),
    ("ray.address", "nowhere", "ray.address: expected 'local', 'auto'"),
    ("tune.sweeps.vae-digits.experiment", "nope", "tune.sweeps.vae-digits.experiment: unknown experiment"),
    ("tune.sweeps.vae-digits.space", {"model.beta": {"loguniform": [-1, 2]}}, "tune.sweeps.vae-digits.space.model.beta"),
    ("tune.sweeps.vae-digits.space", {"model.depthh": {"choice": [1]}}, "unknown knob 'model.depthh'"),
    ("tune.sweeps.vae-digits.space", {"model.beta": {"choice": [1.0, -2.0]}}, "value -2.0 is out of range"),
    ("tune.sweeps.vae-digits.scheduler", "hyperband", "tune.sweeps.vae-digits.scheduler: expected one of"),
    ("tune.sweeps.vae-digits.search", "bayes", "tune.sweeps.vae-digits.search: expected one of"),
    ("tune.sweeps.vae-digits.quantile_fraction", 0.8, "tune.sweeps.vae-digits.quantile_fraction: expected a value <= 0.5"),
    ("evaluate.n_samples", 0, "evaluate.n_samples: expected a value > 0"),
    ("experiments.wgan_gp-ring8.model.pack", 3, "experiments.wgan_gp-ring8.model.pack: expected a divisor of train.batch_size"),
    ("train.lr_schedule", "step", "train.lr_schedule: expected one of"),
    ("experiments.vae-digits.train.select", "latest", "experiments.vae-digits.train.select: expected one of"),
    ("tuning", {}, "tuning: unknown section"),
])
def test_bad_values_name_the_field(path, value, expect):
    with pytest.raises(ConfigError) as e:
        parse(mutate(path, value))
    msg = str(e.value)
    assert expect in msg
    assert "\n" not in msg


def test_a_sweep_is_checked_against_the_family_cross_section_rules():
    raw = mutate("experiments.wgan_gp-ring8.model.pack", 4)
    raw["tune"]["sweeps"]["pack"] = {"experiment": "wgan_gp-ring8",
                                     "space": {"train.batch_size": {"choice": [32, 30]}}}
    with pytest.raises(ConfigError, match=r"tune.sweeps.pack.space.train.batch_size: value 30 conflicts with "
                                          r"model.pack: expected a divisor of train.batch_size \(30\), got 4"):
        parse(raw)


@pytest.mark.parametrize("sweep,expect", [
    ({"scheduler": "pbt", "search": "optuna"}, "tune.sweeps.vae-digits.search: PBT draws its own population"),
    ({"search": "optuna", "space": {"model.beta": {"grid": [0.5, 2.0]}}},
     "tune.sweeps.vae-digits.space.model.beta: a grid needs search: random"),
    ({"scheduler": "pbt", "space": {"model.beta": {"grid": [0.5, 2.0]}}},
     "tune.sweeps.vae-digits.space.model.beta: a grid needs search: random and a scheduler other than pbt"),
])
def test_sweep_combinations_tune_cannot_run_are_refused(sweep, expect):
    raw = tiny_params()
    raw["tune"]["sweeps"]["vae-digits"].update(sweep)
    with pytest.raises(ConfigError, match=re.escape(expect)):
        parse(raw)


def test_a_family_without_search_space_is_a_clear_error(monkeypatch):
    from tune.spaces import SPACES

    monkeypatch.delitem(SPACES, "vae")
    raw = mutate("tune.sweeps.vae-digits.space", None)
    with pytest.raises(ConfigError, match="tune.sweeps.vae-digits.space: family 'vae' has no default search space"):
        parse(raw)


def test_stage_scripts_exit_2_with_one_line_and_no_traceback(tmp_path):
    raw = mutate("experiments.vae-digits.model.beta", -1.0)
    write_params(tmp_path, raw)
    r = subprocess.run([sys.executable, "-m", "pipelines.train", "vae-digits"], cwd=REPO,
                       env=env_for(tmp_path), capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: experiments.vae-digits.model.beta: expected a value >= 0, got -1.0"]


def test_a_model_that_does_not_fit_its_data_stops_the_stage_before_ray(tmp_path):
    raw = mutate("experiments.maf-ring8", {"family": "maf", "dataset": "ring8",
                                           "model": {"dequantization": "variational"}})
    write_params(tmp_path, raw)
    env = env_for(tmp_path)
    prep = subprocess.run([sys.executable, "-m", "pipelines.prepare", "ring8"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert prep.returncode == 0, prep.stderr
    r = subprocess.run([sys.executable, "-m", "pipelines.train", "maf-ring8"], cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: experiments.maf-ring8.model.dequantization: variational needs discrete data"), lines
    assert not Layout(tmp_path).train_root.exists()  # nothing trained, nothing written


def test_missing_data_file_is_named_before_anything_runs(tmp_path):
    write_params(tmp_path, tiny_params())  # digits points at data/digits/digits.csv.gz, absent here
    r = subprocess.run([sys.executable, "-m", "gm.cli", "--root", str(tmp_path), "check"], cwd=REPO,
                       env=env_for(tmp_path), capture_output=True, text=True)
    assert r.returncode == 2
    assert "data/digits/digits.csv.gz" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_yaml_names_the_file_and_line(tmp_path):
    (tmp_path / "params.yaml").write_text("ray: {address: local\nmlflow: [\n")
    r = subprocess.run([sys.executable, "-m", "gm.cli", "--root", str(tmp_path), "check"], cwd=REPO,
                       env=env_for(tmp_path), capture_output=True, text=True)
    assert r.returncode == 2 and "params.yaml: not valid YAML at line" in r.stderr
