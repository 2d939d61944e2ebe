"""Model cards: what a registered version is, written for a person, as its MLflow description.

A card says which family (and paper) on which dataset (and its hash), the knobs that differ from the
family's defaults, the validation score and the test metrics beside the baselines' on the same split, the
champion decision, and the lineage (git commit, data and prepared-data hashes, DVC stage, MLflow run).
Everything in it is read back from MLflow (the version's tags, its run's tags and artifacts, the baselines'
evaluation runs), so writing it again at any time gives the card of what the store holds now:

    register (train, tune) -> log_card_artifacts + write_card   (samples.png, config.json; first card)
    evaluate               -> write_card                        (test metrics)
    report                 -> write_cards                       (baselines and champion, settled)

The version's run carries `card/`: samples.png (the plotting code of evaluation: an image grid, a 2-D
scatter, or audio spectrograms), density.png for 2-D data with a likelihood, audio/*.wav, and config.json
(the experiment as trained, which the knobs are read from).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

import gm.models  # noqa: F401  (registers every family)
from gm import tracking
from gm.core.config import build, flatten, to_dict
from gm.core.registry import FAMILIES
from gm.data.io import read_meta, read_split
from gm.evaluation import (ModelSampler, plot_density, plot_samples, plot_spectrograms, sample_rate_of,
                           write_audio_clips)
from gm.inference import sample_data
from gm.metrics.likelihood import TEST_BOUND_MEANING
from gm.training.experiment import TrainParams

CARD_DIR = "card"  # artifact folder of the version's run
CARD_SAMPLES = 64  # samples drawn for the card's figures: a few seconds at most
CARD_SEED = 0
DESCRIPTION_LIMIT = 5000  # MLflow's model_versions.description is VARCHAR(5000) (enforced by PostgreSQL)
HIDDEN_METRICS = ("_seconds", "samples_per_s", "finite_samples", "seeds")  # timings, not quality
FLAG_METRICS = {"test_bound": TEST_BOUND_MEANING}  # metrics that are flags, shown as what they mean


# ------------------------------------------------------------------------------ the family and its knobs


def family_paper(family: str) -> str:
    """The family's paper, as its module's docstring names it (one family, one file: the first paragraph)."""
    cls = FAMILIES.get(family)
    doc = (sys.modules[cls.__module__].__doc__ or "") if cls is not None else ""
    return " ".join(doc.strip().split("\n\n")[0].split()) or family


def family_defaults(family: str) -> dict:
    """{model.<field>: default, train.<field>: default} of a family's config and of the train section."""
    out = {}
    cls = FAMILIES.get(family)
    if cls is not None:
        try:
            out.update(flatten(to_dict(build(cls.config_cls, {}, "model")), "model."))
        except ValueError:  # a config with a required field: every field is then compared
            pass
    out.update(flatten(to_dict(TrainParams()), "train."))
    return out


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def changed_knobs(config: dict) -> list[tuple[str, object, object]]:
    """(knob, value, family default) for every model/train field of an experiment config (ExperimentConfig's
    dict) that differs from the default; the seed is the version's own and is left out."""
    defaults = family_defaults(config.get("family", ""))
    values = flatten({"model": config.get("model") or {}, "train": config.get("train") or {}})
    return [(k, v, defaults.get(k, "—")) for k, v in sorted(values.items())
            if k != "train.seed" and (k not in defaults or not _same(v, defaults[k]))]


# ------------------------------------------------------------------------------ figures at registration


def render_samples(path: Path, samples: np.ndarray, meta: dict, title: str, test: np.ndarray | None = None) -> Path:
    """Samples as evaluation plots them (gm.evaluation.plot_samples: image grid, 2-D scatter over the test
    data, spectrograms above test clips); without test data the samples stand alone."""
    if test is not None or meta["kind"] == "image":
        return plot_samples(path, samples, samples if test is None else test, meta, title)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    if meta["kind"] == "audio":
        cols = 4
        rows = max(1, math.ceil(min(len(samples), 16) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.8, rows * 1.3), squeeze=False)
        plot_spectrograms(axes, samples[: rows * cols], sample_rate_of(meta), "sample")
    else:  # points: the first two coordinates
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(samples[:, 0], samples[:, 1], s=4, c="#d62728", label="samples")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7, markerscale=3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def card_figures(folder: Path, model, data_dir: Path, title: str, n: int = CARD_SAMPLES, seed: int = CARD_SEED) -> list[Path]:
    """samples.png (and density.png for 2-D data with a likelihood, audio/ with two WAV clips) of `model`
    in `folder`, drawn as evaluation draws them (seeded; n samples)."""
    meta = read_meta(data_dir)
    test_x, _ = read_split(data_dir, "test")
    samples = sample_data(model, model.data, n, seed=seed)
    out = [render_samples(folder / "samples.png", samples, meta, title, test_x)]
    if meta["kind"] == "toy" and test_x.shape[1:] == (2,) and model.likelihood is not None:
        out.append(plot_density(folder / "density.png", ModelSampler(model), test_x, f"{title}: density", seed))
    if meta["kind"] == "audio":
        out.append(write_audio_clips(folder / "audio", samples, test_x, sample_rate_of(meta), n=2))
    return out


def log_card_artifacts(name: str, version: int, model, data_dir: Path, config: dict) -> None:
    """The card's figures and the experiment's config as artifacts `card/...` of the version's run (once:
    a version whose run has them already, a resumed stage's, is left as it is)."""
    client = tracking.client()
    run_id = client.get_model_version(name, str(version)).run_id
    if not run_id or any(f.path == f"{CARD_DIR}/samples.png" for f in client.list_artifacts(run_id, CARD_DIR)):
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        card_figures(folder, model, data_dir, f"{name} v{version} ({model.registry_name}): {CARD_SAMPLES} samples")
        client.log_artifacts(run_id, str(folder), CARD_DIR)


def card_at_registration(name: str, version: int, model, data_dir: Path, config: dict) -> None:
    """At registration: the figures, then the first card (see refresh_card)."""
    refresh_card(name, version, lambda: log_card_artifacts(name, version, model, data_dir, config))


def refresh_card(name: str, version: int | str, before=None) -> None:
    """Write a version's card from a stage (after `before()`, when given). A card that cannot be written is a
    warning, not the stage's failure: the version is registered and tagged already, and the report stage
    writes every card again."""
    try:
        if before is not None:
            before()
        write_card(name, version)
    except Exception as e:  # noqa: BLE001  (nothing of the model or its figures is lost)
        print(f"warning: the model card of {name} v{version} was not written ({type(e).__name__}: {e}); "
              "the report stage writes it again", file=sys.stderr)


# ------------------------------------------------------------------------------ reading the store


def version_config(version) -> dict | None:
    """The experiment config a version was trained with: `card/config.json` of its run, else the model
    folder's own config.json (its model knobs only); None when neither is there."""
    client = tracking.client()
    if version.run_id:
        try:
            if any(f.path == f"{CARD_DIR}/config.json" for f in client.list_artifacts(version.run_id, CARD_DIR)):
                path = tracking.download(run_id=version.run_id, path=f"{CARD_DIR}/config.json")
                return json.loads(path.read_text())
        except Exception:  # noqa: BLE001  (a run deleted since: the model's own config below)
            pass
    try:
        folder = tracking.download(f"models:/{version.name}/{version.version}")
    except Exception:  # noqa: BLE001
        return None
    found = sorted(folder.glob("artifacts/*/config.json"))
    if not found:
        return None
    meta = json.loads(found[0].read_text())
    return {"family": meta.get("family"), "model": meta.get("config") or {}}


def card_artifacts(run_id: str | None) -> list[str]:
    """The paths under `card/` of a run's artifacts."""
    if not run_id:
        return []
    client = tracking.client()
    out = []
    try:
        for f in client.list_artifacts(run_id, CARD_DIR):
            out += [g.path for g in client.list_artifacts(run_id, f.path)] if f.is_dir else [f.path]
    except Exception:  # noqa: BLE001  (a deleted run has no artifacts to show)
        return []
    return sorted(out)


def baselines(experiment_id: str, dataset: str) -> dict[str, dict[str, float]]:
    """The latest finished `evaluate/baseline-<kind>-<dataset>` run of each baseline kind in the
    experiment: {label: its test metrics}."""
    client = tracking.client()
    runs = client.search_runs([experiment_id], "attributes.status = 'FINISHED' and tags.`gm.stage` = 'evaluate' "
                              f"and tags.`gm.dataset` = '{dataset}'", order_by=["attributes.start_time DESC"],
                              max_results=200)
    out: dict[str, dict[str, float]] = {}
    for r in runs:
        name = r.info.run_name or ""
        label = name.removeprefix("evaluate/")
        if name.startswith("evaluate/baseline-") and label.endswith(f"-{dataset}") and label not in out:
            out[label] = dict(r.data.metrics)
    return dict(sorted(out.items()))


def _shown(metric: str) -> bool:
    return not metric.endswith("_std") and not any(metric.endswith(h) for h in HIDDEN_METRICS)


def tested_metrics(version) -> dict[str, float]:
    out = {}
    for k, v in version.tags.items():
        if k.startswith("gm.test.") and _shown(k[len("gm.test."):]):
            try:
                out[k[len("gm.test."):]] = float(v)
            except ValueError:
                pass
    return dict(sorted(out.items()))


def metric_text(metric: str, value: float | None, digits: int = 4) -> str:
    """A test metric as a person reads it (card, gm models ls and compare): a dash where a model lacks it,
    a flag as what it means, a number to `digits` significant digits."""
    if value is None:
        return "—"
    meaning = FLAG_METRICS.get(metric, {}).get(value)
    return meaning if meaning is not None else f"{value:.{digits}g}"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def dvc_stage(run_tags: dict) -> str:
    """The DVC stage that made a run: `<stage>@<its experiment or sweep>` (train@x, tune@y)."""
    stage, name = run_tags.get("gm.stage"), run_tags.get("gm.experiment")
    return f"{stage}@{name}" if stage and name else (stage or "unknown")


def card_markdown(name: str, version: int | str) -> str:
    """The card of registered version `version` of `name`, in Markdown, from what MLflow holds now."""
    client = tracking.client()
    v = client.get_model_version(name, str(version))
    tags = v.tags
    family, dataset = tags.get("gm.family", "?"), tags.get("gm.dataset", "?")
    run = None
    if v.run_id:
        try:
            run = client.get_run(v.run_id)
        except Exception:  # noqa: BLE001  (the run was deleted: the card says so)
            run = None
    rtags = dict(run.data.tags) if run else {}
    champion_of = _champion_version(name)
    is_champion = champion_of is not None and int(champion_of) == int(v.version)
    lines = [f"# Model card: {name} v{v.version}", "",
             f"**{family}** on **{dataset}**: {family_paper(family)}", ""]
    source = tags.get("gm.source", rtags.get("gm.stage", "?"))
    origin = {"train": f"experiment `{tags.get('gm.experiment', '?')}`, seed {tags.get('gm.seed', '?')}",
              "tune": f"sweep `{tags.get('gm.sweep', '?')}`, trial {tags.get('gm.trial_id', '?')}"}.get(source, source)
    lines += [f"- Made by: {source} ({origin})",
              f"- Dataset: `{dataset}`, raw data md5 `{rtags.get('gm.data_md5', 'unknown')}`, prepared data md5 "
              f"`{rtags.get('gm.prepared_md5', 'unknown')}`",
              f"- Log-likelihood: {tags.get('gm.log_prob', 'none')}", ""]

    lines += ["## Champion", ""]
    if is_champion:
        lines.append(f"This version is the champion (`models:/{name}@champion`).")
    else:
        lines.append(f"Not the champion; the champion is v{champion_of}." if champion_of else "No champion yet.")
    lines.append(f"- Decision at registration: {tags.get('gm.champion_decision', 'none recorded')}")
    if tags.get("gm.promoted_by"):
        lines.append(f"- Promoted by hand by {tags['gm.promoted_by']} on {tags.get('gm.promoted_at', '?')}: "
                     f"{tags.get('gm.promotion_reason', '')}")
    pin = _pin(name)
    if pin:
        lines.append(f"- The champion is pinned to v{pin} by hand; `gm models promote {name} --auto` unpins it.")
    lines.append("")

    lines += ["## Metrics", "", f"Validation ({tags.get('gm.val_metric', '?')}, lower is better): "
              f"{_fmt(_float(tags.get('gm.val_score')))}", ""]
    tested = tested_metrics(v)
    base = baselines(run.info.experiment_id, dataset) if run else {}
    if tested:
        rows = [[k, metric_text(k, tested[k]), *(metric_text(k, base[b].get(k)) for b in base)] for k in tested]
        lines += ["Test split (this version beside the baselines, same split and protocol):", "",
                  *_table(["metric", f"v{v.version}", *base], rows), ""]
    else:
        lines += ["Not evaluated on the test split yet (the evaluate stage tags it).", ""]

    lines += ["## Knobs that differ from the family's defaults", ""]
    config = version_config(v)
    knobs = changed_knobs({"family": family, **config}) if config else None
    if knobs:
        lines += _table(["knob", "value", "default"], [[k, val, d] for k, val, d in knobs])
    else:
        lines.append("The family's defaults throughout." if knobs == [] else "Not recorded.")
    lines.append("")

    lines += ["## Lineage", "",
              f"- Git commit: `{rtags.get('mlflow.source.git.commit', 'unknown')}`",
              f"- DVC stage: `{dvc_stage(rtags)}` (`dvc repro {dvc_stage(rtags)}`)",
              f"- MLflow run: `{v.run_id}`" + (f" ({run.info.run_name}, experiment {run.info.experiment_id})"
                                                if run else " (deleted)"),
              f"- Model: `{v.source}`, folder sha256 `{tags.get('gm.model_sha256', '?')}`", ""]
    shown = card_artifacts(v.run_id)
    if shown:
        lines += ["## Samples", "",
                  f"Artifacts of run `{v.run_id}` (Artifacts tab of the run, or `gm models sample {name}/{v.version}`):",
                  *[f"- `{p}`" for p in shown], ""]
    return "\n".join(lines)


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _champion_version(name: str) -> str | None:
    c = tracking.champion(name)
    return c.version if c is not None else None


def _pin(name: str) -> str | None:
    try:
        return tracking.client().get_registered_model(name).tags.get(tracking.PIN)
    except Exception:  # noqa: BLE001
        return None


def fit(text: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """The card cut to what the store keeps, whole lines, saying where the rest is."""
    if len(text) <= limit:
        return text
    note = "\n\n… (cut to fit the registry; `gm models show` prints the whole card)"
    return text[: limit - len(note)].rsplit("\n", 1)[0] + note


def model_markdown(name: str) -> str:
    """The registered model's own description (its page in the UI): what it is, its champion, and a line per
    version (how it was made, its validation score), from what MLflow holds now."""
    client = tracking.client()
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    tags = versions[-1].tags if versions else {}
    family, dataset = tags.get("gm.family", "?"), tags.get("gm.dataset", "?")
    champion_of = _champion_version(name)
    lines = [f"# {name}", "", f"**{family}** on **{dataset}**: {family_paper(family)}", ""]
    if champion_of is not None:
        pinned = " (pinned by hand)" if _pin(name) else " (the best validation score so far)"
        lines.append(f"Champion: v{champion_of}{pinned}, `models:/{name}@champion`.")
    else:
        lines.append("No champion yet.")
    rows = []
    for v in versions:
        t = v.tags
        made = {"train": f"train {t.get('gm.experiment', '?')} seed {t.get('gm.seed', '?')}",
                "tune": f"tune {t.get('gm.sweep', '?')} trial {t.get('gm.trial_id', '?')}"}.get(
                    t.get("gm.source", ""), t.get("gm.source", "?"))
        rows.append([f"v{v.version}" + (" (champion)" if str(v.version) == str(champion_of) else ""), made,
                     _float(t.get("gm.val_score"))])
    metric = tags.get("gm.val_metric", "val_score")
    lines += ["", *_table(["version", "made by", f"{metric} (lower is better)"], rows), "",
              f"Each version's card is its description (`gm models show {name}/<version>`)."]
    return "\n".join(lines)


def write_card(name: str, version: int | str) -> str:
    """Set the card as the version's description and the model's summary as the registered model's (each
    only when it changed); returns the card."""
    text = card_markdown(name, version)
    client = tracking.client()
    if (client.get_model_version(name, str(version)).description or "") != fit(text):
        client.update_model_version(name, str(version), description=fit(text))
    summary = fit(model_markdown(name))
    if (client.get_registered_model(name).description or "") != summary:
        client.update_registered_model(name, description=summary)
    return text


def write_cards(names) -> int:
    """Write the card of every version of each registered model in `names` that exists (refresh_card: a
    card that cannot be written is a warning); returns how many versions there were."""
    client = tracking.client()
    count = 0
    for name in sorted(set(names)):
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except tracking.store_error():
            continue
        for v in sorted(versions, key=lambda v: int(v.version)):
            refresh_card(name, v.version)
            count += 1
    return count
