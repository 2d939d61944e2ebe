"""Stage `featurize@<dataset>`: the dataset's featurizer (a small CNN classifier) for image and audio metrics.

Writes artifacts/featurizer/<dataset>/{space.json, model/} and artifacts/featurizer-metrics/<dataset>.json;
params.yaml section `featurize`. Labelled images and labelled audio get a trained featurizer (2-D or 1-D
convolutions); toys and unlabelled data are compared in their own (pixel or sample) space, which
space.json records.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gm import stage
from gm.data.io import data_spec, read_meta, read_split
from gm.evaluation import FEATURIZED, PIXELS
from gm.featurizer import FeaturizerConfig, predict, save_featurizer, train_featurizer
from gm.core.files import write_json
from gm.core.layout import Layout


def featurize(dataset: str, root: Path, cfg: FeaturizerConfig) -> dict:
    """Train the featurizer of prepared dataset `dataset` (train split; best epoch on val),
    measure it on test, save it under root/artifacts/featurizer/<dataset>; returns its metrics."""
    data_dir = stage.prepared_dir(dataset, root)
    data = data_spec(data_dir)
    layout = Layout(root)
    out = layout.featurizer(dataset)
    if out.exists():
        shutil.rmtree(out)
    if data.kind not in FEATURIZED or not data.num_classes:
        why = {"toy": "toy data: metrics use the points themselves",
               "audio": "unlabelled audio: no classifier to train, metrics use the samples themselves"}.get(
            data.kind, "unlabelled images: no classifier to train, metrics use pixels")
        write_json(out / "space.json", {"space": PIXELS, "hash": PIXELS, "reason": why})
        summary = {"space": PIXELS}
        write_json(layout.featurizer_metrics(dataset), summary)
        return summary
    train_x, train_y = read_split(data_dir, "train")
    val_x, val_y = read_split(data_dir, "val")
    test_x, test_y = read_split(data_dir, "test")
    meta = read_meta(data_dir)
    per_channel = meta.get("channel_classes")  # stacked digits: a K-way classifier reads every channel alone
    net, fit = train_featurizer(train_x, train_y, val_x, val_y, data, per_channel or data.num_classes, cfg,
                                channelwise=bool(per_channel))
    test_accuracy = float((predict(net, test_x) == test_y).mean())
    summary = {"test_accuracy": test_accuracy, "val_accuracy": fit["val_accuracy"],
               "train_accuracy": fit["train_accuracy"], "best_epoch": fit["best_epoch"],
               "num_params": sum(p.numel() for p in net.parameters())}
    # no timings in the model folder: it is a DVC output and must be the same bytes on a rerun
    summary["hash"] = save_featurizer(net, out / "model", {"dataset": dataset, **summary})
    write_json(out / "space.json", {"space": "featurizer", "hash": summary["hash"]})
    summary["seconds"] = fit["seconds"]
    write_json(layout.featurizer_metrics(dataset), summary)
    return summary
