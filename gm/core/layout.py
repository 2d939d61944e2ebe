"""Where every pipeline stage's outputs live under a pipeline root.

The one place that knows the artifact layout; dvc.yaml names the same paths as outs, metrics,
plots and deps, and tests/test_layout.py checks that each of those is a path of this layout.

    artifacts/prepared/<dataset>/                  prepare
    artifacts/featurizer/<dataset>/                featurize (+ artifacts/featurizer-metrics/<dataset>.json)
    artifacts/train/<experiment>/                  train: metrics.json, history.json, models/seed-<s>/
    artifacts/tune/<sweep>/                        tune: best.json, trials.parquet, curves.json, model/
    artifacts/eval/<label>/                        evaluate: metrics.json, samples.png, reconstructions.png,
                                                   density.png, audio/*.wav (label: experiment, tuned-<sweep>,
                                                   baseline-<kind>-<dataset>)
    artifacts/timings/<stage>.json                 every stage's wall time
    artifacts/ray/                                 Ray checkpoints (unless ray.storage_path says otherwise)
    artifacts/profiles/<profile>/                  a params profile's own pipeline workspace
    reports/                                       report: leaderboard.md, index.html, metrics.json, *.png;
                                                   figures/ (figures stage); profiles/<profile>/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def tuned_label(sweep: str) -> str:
    """The evaluation label of a sweep's best model."""
    return f"tuned-{sweep}"


def baseline_label(kind: str, dataset: str) -> str:
    """The evaluation label of a scikit-learn baseline fitted on `dataset`."""
    return f"baseline-{kind}-{dataset}"


@dataclass(frozen=True)
class TrainPaths:
    """artifacts/train/<experiment>/: an experiment's models (one per seed), summary and curves."""

    METRICS = "metrics.json"
    HISTORY = "history.json"

    dir: Path

    @property
    def metrics(self) -> Path:
        return self.dir / self.METRICS

    @property
    def history(self) -> Path:
        return self.dir / self.HISTORY

    @property
    def models(self) -> Path:
        return self.dir / "models"

    def model(self, seed: int | str) -> Path:
        """The exported model of one replicate seed."""
        return self.models / f"seed-{seed}"

    def seed_models(self) -> list[Path]:
        """Every seed's exported model folder, sorted."""
        return sorted(self.models.glob("seed-*"))


@dataclass(frozen=True)
class TunePaths:
    """artifacts/tune/<sweep>/: the best trial's config and model, every trial's row and curve."""

    CURVES = "curves.json"
    TRIALS = "trials.parquet"

    dir: Path

    @property
    def best(self) -> Path:
        return self.dir / "best.json"

    @property
    def trials(self) -> Path:
        return self.dir / self.TRIALS

    @property
    def curves(self) -> Path:
        return self.dir / self.CURVES

    @property
    def model(self) -> Path:
        return self.dir / "model"


@dataclass(frozen=True)
class EvalPaths:
    """artifacts/eval/<label>/: test-split metrics and figures of one evaluated candidate."""

    METRICS = "metrics.json"

    dir: Path

    @property
    def metrics(self) -> Path:
        return self.dir / self.METRICS

    @property
    def samples(self) -> Path:
        return self.dir / "samples.png"

    @property
    def reconstructions(self) -> Path:
        return self.dir / "reconstructions.png"

    @property
    def density(self) -> Path:
        return self.dir / "density.png"

    @property
    def audio(self) -> Path:
        """Audio data: WAV clips of samples and test data (sample-00.wav, test-00.wav, ...) for the report."""
        return self.dir / "audio"


@dataclass(frozen=True)
class ReportPaths:
    """reports/ (or a copy of it): the leaderboard, its page, its numbers and plots."""

    dir: Path

    @property
    def leaderboard(self) -> Path:
        return self.dir / "leaderboard.md"

    @property
    def index(self) -> Path:
        return self.dir / "index.html"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def training_curves(self) -> Path:
        return self.dir / "training_curves.png"

    def tuning_curves(self, sweep: str) -> Path:
        return self.dir / f"tuning_{sweep}.png"

    def rate_distortion(self, sweep: str) -> Path:
        return self.dir / f"rate_distortion_{sweep}.png"

    @property
    def figures(self) -> Path:
        """The figures stage's reproductions."""
        return self.dir / "figures"


@dataclass(frozen=True)
class Layout:
    """Every stage's output paths under the pipeline root `root` (relative if `root` is)."""

    root: Path

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    # prepare
    @property
    def prepared_root(self) -> Path:
        return self.artifacts / "prepared"

    def prepared(self, dataset: str) -> Path:
        return self.prepared_root / dataset

    def require_prepared(self, dataset: str) -> Path:
        """The prepared dataset's folder; FileNotFoundError naming the stage to run if it is not there."""
        d = self.prepared(dataset)
        if not (d / "meta.json").is_file():
            raise FileNotFoundError(f"{d}/meta.json: missing; run the prepare stage first "
                                    f"(dvc repro prepare@{dataset})")
        return d

    # featurize
    @property
    def featurizer_root(self) -> Path:
        return self.artifacts / "featurizer"

    def featurizer(self, dataset: str) -> Path:
        return self.featurizer_root / dataset

    @property
    def featurizer_metrics_root(self) -> Path:
        return self.artifacts / "featurizer-metrics"

    def featurizer_metrics(self, dataset: str) -> Path:
        return self.featurizer_metrics_root / f"{dataset}.json"

    # train
    @property
    def train_root(self) -> Path:
        return self.artifacts / "train"

    def train(self, experiment: str) -> TrainPaths:
        return TrainPaths(self.train_root / experiment)

    def train_histories(self) -> list[Path]:
        """history.json of every trained experiment, sorted by path."""
        return sorted(self.train_root.glob(f"*/{TrainPaths.HISTORY}"))

    # tune
    @property
    def tune_root(self) -> Path:
        return self.artifacts / "tune"

    def tune(self, sweep: str) -> TunePaths:
        return TunePaths(self.tune_root / sweep)

    def tune_curves(self) -> list[Path]:
        """curves.json of every sweep, sorted by path."""
        return sorted(self.tune_root.glob(f"*/{TunePaths.CURVES}"))

    def tune_trials(self) -> list[Path]:
        """trials.parquet of every sweep, sorted by path."""
        return sorted(self.tune_root.glob(f"*/{TunePaths.TRIALS}"))

    # evaluate
    @property
    def eval_root(self) -> Path:
        return self.artifacts / "eval"

    def eval(self, label: str) -> EvalPaths:
        return EvalPaths(self.eval_root / label)

    def eval_metrics(self) -> list[Path]:
        """metrics.json of every evaluated candidate, sorted by path."""
        return sorted(self.eval_root.glob(f"*/{EvalPaths.METRICS}"))

    # every stage
    @property
    def timings_root(self) -> Path:
        return self.artifacts / "timings"

    def timing(self, label: str) -> Path:
        """Wall time of stage `label` (e.g. train@vae-digits)."""
        return self.timings_root / f"{label}.json"

    @property
    def ray_storage(self) -> Path:
        """Ray's checkpoint root when params name none."""
        return self.artifacts / "ray"

    # report and profiles
    @property
    def reports(self) -> ReportPaths:
        return ReportPaths(self.root / "reports")

    def profile_workspace(self, profile: str) -> Path:
        """Where profiles/<profile>.yaml runs its own pipeline."""
        return self.artifacts / "profiles" / profile

    def profile_reports(self, profile: str) -> Path:
        """Where a profile's reports are copied back to."""
        return self.reports.dir / "profiles" / profile
