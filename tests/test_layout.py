"""gm.core.layout: the one artifact layout, and dvc.yaml naming only paths of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gm.baselines import BASELINES
from gm.core.layout import Layout, baseline_label, tuned_label
from tests.helpers import REPO

# Sample names for dvc.yaml's ${...}: what each foreach list's ${key} and ${item.<field>} stand for.
DATASET, EXPERIMENT, SWEEP = "ds", "exp", "sw"
FOREACH = {
    "${data.datasets}": {"key": DATASET},
    "${experiments}": {"key": EXPERIMENT, "item.dataset": DATASET},
    "${tune.sweeps}": {"key": SWEEP, "item.experiment": EXPERIMENT},
}


def layout_paths(layout: Layout) -> set[Path]:
    """Every output path of the layout for the sample dataset, experiment and sweep."""
    train, tune, report = layout.train(EXPERIMENT), layout.tune(SWEEP), layout.reports
    evals = [layout.eval(EXPERIMENT), layout.eval(tuned_label(SWEEP))]
    evals += [layout.eval(baseline_label(kind, DATASET)) for kind in BASELINES]
    return {
        layout.prepared_root, layout.prepared(DATASET),
        layout.featurizer_root, layout.featurizer(DATASET),
        layout.featurizer_metrics_root, layout.featurizer_metrics(DATASET),
        layout.train_root, train.dir, train.models, train.metrics, train.history,
        layout.tune_root, tune.dir, tune.best, tune.trials, tune.curves, tune.model,
        layout.eval_root, *(p for e in evals for p in (e.dir, e.metrics, e.samples)),
        report.dir, report.figures, report.leaderboard, report.index, report.metrics, report.training_curves,
    }


def dvc_paths(dvc: dict) -> list[tuple[str, Path]]:
    """(stage, path) of every deps/outs/metrics/plots entry of dvc.yaml under artifacts/ or reports/,
    with its ${...} replaced by the sample names."""
    out = []
    for name, stage in dvc["stages"].items():
        names = FOREACH[stage["foreach"]] if "foreach" in stage else {}
        body = stage.get("do", stage)
        for section in ("deps", "outs", "metrics", "plots"):
            for entry in body.get(section, []):
                for raw in (entry if isinstance(entry, dict) else [entry]):  # a plot: {path: {x, y}}
                    path = re.sub(r"\$\{([^}]+)\}", lambda m: names[m.group(1)], raw)
                    if path.split("/")[0] in ("artifacts", "reports"):
                        out.append((name, Path(path)))
    return out


def test_every_artifact_path_of_dvc_yaml_is_a_path_of_the_layout():
    paths = dvc_paths(yaml.safe_load((REPO / "dvc.yaml").read_text()))
    assert len(paths) > 20  # the parsing found the stages' paths
    known = layout_paths(Layout(Path()))
    stray = [f"{stage}: {p}" for stage, p in paths if p not in known]
    assert not stray, "dvc.yaml names paths gm.core.layout does not produce:\n" + "\n".join(stray)


def test_a_path_outside_the_layout_is_caught():
    dvc = {"stages": {"train": {"foreach": "${experiments}",
                                "do": {"outs": ["artifacts/train/${key}/model"],
                                       "plots": [{"artifacts/train/${key}/history.json": {"x": "step"}}]}}}}
    known = layout_paths(Layout(Path()))
    assert [p in known for _, p in dvc_paths(dvc)] == [False, True]


def test_layout_paths_sit_under_the_root(tmp_path):
    layout = Layout(tmp_path)
    assert layout.train("vae-digits").model(3) == tmp_path / "artifacts/train/vae-digits/models/seed-3"
    assert layout.eval(baseline_label("gmm", "digits")).metrics == tmp_path / "artifacts/eval/baseline-gmm-digits/metrics.json"
    assert layout.timing("train@vae-digits") == tmp_path / "artifacts/timings/train@vae-digits.json"
    assert Layout(Path()).ray_storage == Path("artifacts/ray")  # a relative root gives relative paths


def test_a_missing_prepared_dataset_names_the_stage_to_run(tmp_path):
    layout = Layout(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"meta.json: missing; run the prepare stage first "
                                                r"\(dvc repro prepare@ring8\)"):
        layout.require_prepared("ring8")
    (layout.prepared("ring8")).mkdir(parents=True)
    (layout.prepared("ring8") / "meta.json").write_text("{}")
    assert layout.require_prepared("ring8") == tmp_path / "artifacts/prepared/ring8"
