"""Stages `evaluate@<experiment>`, `evaluate_tuned@<sweep>` and `baseline@<dataset>`:
one protocol on the test split, mean ± std over seeds.

    source "train", name <experiment>  -> artifacts/eval/<experiment>/
    source "tune", name <sweep>        -> artifacts/eval/tuned-<sweep>/
    source "baseline", name <dataset>  -> artifacts/eval/baseline-<kind>-<dataset>/
each holding metrics.json and samples.png (audio: spectrograms of samples above test clips, and
audio/ with WAV clips of both for the report's players).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from gm import cards, stage, tracking
from gm.data.io import data_spec, read_meta, read_split
from gm.figures.stylegan import evaluation_figures
from gm.evaluation import (FEATURIZED, aggregate, evaluate, load_feature_space, load_sampler,
                           plot_density, plot_samples, sample_rate_of, write_audio_clips)
from gm.core.files import read_json, write_json
from gm.core.layout import Layout, baseline_label, tuned_label
from gm.baselines import BASELINES, fit_baseline


@dataclass
class Candidate:
    """Something to evaluate: one sampler per seed, and where its results go."""

    label: str
    family: str
    dataset: str
    source: str
    samplers: dict = field(default_factory=dict)  # seed -> Evaluable
    versions: dict = field(default_factory=dict)  # seed -> registered model version


def trained(name: str, root: Path, params) -> list[Candidate]:
    exp = params.experiment(name)
    out = Layout(root).train(name)
    summary = read_json(out.metrics)
    c = Candidate(name, exp.family, exp.dataset, "train")
    for seed, row in summary["per_seed"].items():
        c.samplers[int(seed)] = load_sampler(out.model(seed), params.evaluate)
        c.versions[int(seed)] = row.get("registered_version")
    return [c]


def tuned(name: str, root: Path, params) -> list[Candidate]:
    exp = params.experiment(params.sweep(name).experiment)
    out = Layout(root).tune(name)
    best = read_json(out.best)
    c = Candidate(tuned_label(name), exp.family, exp.dataset, "tune")
    c.samplers[params.evaluate.seed] = load_sampler(out.model, params.evaluate)
    c.versions[params.evaluate.seed] = best.get("registered_version")
    return [c]


def baselines(dataset: str, root: Path, params) -> list[Candidate]:
    """scikit-learn's Gaussian mixture and KDE, hyperparameter chosen on validation, per seed."""
    params.dataset(dataset)
    data_dir = stage.prepared_dir(dataset, root)
    spec_ = data_spec(data_dir)
    train_x, _ = read_split(data_dir, "train")
    val_x, _ = read_split(data_dir, "val")
    out = []
    for kind in sorted(BASELINES):
        c = Candidate(baseline_label(kind, dataset), kind, dataset, "baseline")
        for i in range(params.evaluate.baseline_seeds):
            seed = params.evaluate.seed + i
            c.samplers[seed] = fit_baseline(kind, train_x, val_x, spec_, seed=seed)
        out.append(c)
    return out


CANDIDATES = {"train": trained, "tune": tuned, "baseline": baselines}  # `pipelines.evaluate <source> <name>`


def evaluate_candidate(c: Candidate, root: Path, params) -> dict:
    data_dir = stage.prepared_dir(c.dataset, root)
    meta = read_meta(data_dir)
    layout = Layout(root)
    space = load_feature_space(layout.featurizer(c.dataset)) if meta["kind"] in FEATURIZED else None
    per_seed, first_samples = {}, None
    for seed, sampler in c.samplers.items():
        per_seed[seed], samples = evaluate(sampler, data_dir, params.evaluate, space, seed=seed)
        if first_samples is None:
            first_samples = samples
    # A baseline's samplers are gm.baselines.Baseline, with the hyperparameter validation chose.
    selected = {"selected": {str(s): b.selected for s, b in c.samplers.items()}} if c.source == "baseline" else {}
    summary = {"experiment": c.label, "family": c.family, "dataset": c.dataset, "source": c.source,
               "featurizer": space.hash if space else None,
               "registered_versions": {str(s): v for s, v in c.versions.items()},
               **selected, **aggregate(per_seed)}
    out = layout.eval(c.label)
    write_json(out.metrics, summary)
    test_x, _ = read_split(data_dir, "test")
    plot = plot_samples(out.samples, first_samples[: params.evaluate.plot_samples], test_x, meta,
                        f"{c.label} ({c.family} on {c.dataset})")
    plots = [plot]
    if meta["kind"] == "audio":  # clips to listen to: the report embeds them as players
        plots.append(write_audio_clips(out.audio, first_samples, test_x, sample_rate_of(meta)))
    first = next(iter(c.samplers.values()))
    if meta["kind"] == "image" and hasattr(first, "model"):  # a family's own figures; baselines have no model
        plots += evaluation_figures(first.model, out.dir, c.label, params.evaluate.seed)
    recon = first.reconstruct(test_x[:50], params.evaluate.seed) if first.capabilities.reconstruction else None
    if recon is not None and meta["kind"] == "image":  # rows of 10 test images, each over its reconstruction
        pairs = np.stack([test_x[:50].reshape(5, 10, *test_x.shape[1:]), recon.reshape(5, 10, *test_x.shape[1:])], 1)
        plots.append(plot_samples(out.reconstructions, pairs.reshape(100, *test_x.shape[1:]), test_x, meta,
                                  f"{c.label}: test images (odd rows) and reconstructions (even rows)"))
    if first.likelihood is not None and meta["kind"] == "toy" and test_x.shape[1] == 2:
        plots.append(plot_density(out.density, first, test_x, f"{c.label} ({c.family}): "
                                  f"{'exact' if first.likelihood == 'exact' else 'bound on the'} density",
                                  params.evaluate.seed))
    tags = tracking.stage_tags("evaluate", c.label, root, c.dataset, **{"gm.family": c.family,
                                                                        "gm.featurizer": summary["featurizer"]})
    with tracking.run(f"evaluate/{c.label}", tags):
        tracking.log_params({"evaluate": vars(params.evaluate) | {"source": c.source,
                                                                   "model_versions": summary["registered_versions"]}})
        tracking.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
        for p in plots:
            tracking.log_artifacts(p, p.name if p.is_dir() else None)  # a folder keeps its name
        tracking.log_artifacts(out.metrics)
    for seed, version in c.versions.items():
        if version is not None:
            tracking.tag_version(tracking.registered_name(c.family, c.dataset), version,
                                 {f"gm.test.{k}": f"{v:.6g}" for k, v in per_seed[seed].items()})
            cards.refresh_card(tracking.registered_name(c.family, c.dataset), version)  # with its test metrics
    return summary


def evaluate_source(source: str, name: str, root: Path) -> Iterator[dict]:
    """Evaluate every candidate of `source` ("train", "tune" or "baseline") named `name`, yielding
    each summary as soon as it is written (the stage prints a line per candidate as it goes)."""
    params = stage.params(root)
    tracking.setup(params.mlflow, root)
    for c in CANDIDATES[source](name, root, params):
        yield evaluate_candidate(c, root, params)
