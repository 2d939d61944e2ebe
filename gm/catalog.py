"""`gm models`: browse, compare, promote, sample and serve the registered models.

    gm models ls                                   # one row per registered model: its champion's figures
    gm models show gm-vae-digits@champion          # the card (NAME, NAME@alias, NAME/version)
    gm models compare gm-vae-digits 1 3            # metrics and knobs side by side
    gm models promote gm-vae-digits 3 --reason "sharper samples"   # pins the champion on v3
    gm models promote gm-vae-digits --auto         # unpins: the best validation score is champion again
    gm models sample gm-vae-digits -n 16 -o grid.png   # .png: grid / scatter / spectrograms; .wav; .npy
    gm models serve gm-vae-digits --port 5001      # MLflow's model server on 127.0.0.1
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import math
import os
import re
import socket
import sys
from pathlib import Path

import numpy as np

from gm import cards, stage, tracking
from gm.core.layout import Layout
from gm.data.audio import mu_law_decode
from gm.data.importers import wav_bytes
from gm.data.io import read_meta, read_split
from gm.evaluation import sample_rate_of
from gm.models.base import load_model

REF = re.compile(r"^(?P<name>[^@/\s]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))?$")
PREFERRED = ("test_bits_per_dim", "test_nll", "fd", "kid", "w1", "modes", "hq_pct", "rkl", "precision", "recall")


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """NAME, NAME@alias or NAME/version -> (name, alias, version); ValueError naming the form otherwise."""
    m = REF.match(ref.strip())
    if not m:
        raise ValueError(f"model: expected NAME, NAME@alias or NAME/version (e.g. gm-vae-digits@champion), got {ref!r}")
    return m["name"], m["alias"], m["version"]


def resolve(ref: str, default_alias: str = tracking.CHAMPION):
    """The ModelVersion a reference names (a bare NAME: its champion); one-line errors for what is missing."""
    name, alias, version = parse_ref(ref)
    client = tracking.client()
    try:
        client.get_registered_model(name)
    except tracking.store_error():
        known = ", ".join(sorted(m.name for m in client.search_registered_models())) or "none"
        raise KeyError(f"model: no registered model {name!r}; registered: {known}") from None
    try:
        if version is not None:
            return client.get_model_version(name, version)
        return client.get_model_version_by_alias(name, alias or default_alias)
    except tracking.store_error():
        have = ", ".join(sorted((str(v.version) for v in client.search_model_versions(f"name = '{name}'")), key=int))
        what = f"version {version}" if version is not None else f"alias @{alias or default_alias}"
        raise KeyError(f"model: {name} has no {what}; its versions: {have or 'none'}") from None


def model_uri(version) -> str:
    return f"models:/{version.name}/{version.version}"


# ------------------------------------------------------------------------------ ls, show, compare


def _headline(metrics: dict[str, float], k: int = 4) -> str:
    keys = [m for m in PREFERRED if m in metrics] + [m for m in metrics if m not in PREFERRED]
    return ", ".join(f"{m}={cards.metric_text(m, metrics[m])}" for m in keys[:k]) or "—"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def ls_rows() -> list[list[str]]:
    client = tracking.client()
    rows = []
    for rm in sorted(client.search_registered_models(), key=lambda m: m.name):
        versions = client.search_model_versions(f"name = '{rm.name}'")
        champ = tracking.champion(rm.name)
        any_v = champ or (versions[0] if versions else None)
        tags = any_v.tags if any_v is not None else {}
        pinned = " (pinned)" if rm.tags.get(tracking.PIN) else ""
        rows.append([rm.name, tags.get("gm.family", "?"), tags.get("gm.dataset", "?"), str(len(versions)),
                     f"v{champ.version}{pinned}" if champ else "—",
                     f"{champ.tags.get('gm.val_metric', '?')}={cards._float(champ.tags.get('gm.val_score')):.4g}"
                     if champ else "—",
                     _headline(cards.tested_metrics(champ)) if champ else "—"])
    return rows


def cmd_ls(args) -> None:
    rows = ls_rows()
    if not rows:
        print("no registered models yet: `gm repro` trains and registers them")
        return
    print(text_table(["model", "family", "dataset", "versions", "champion", "validation", "test (champion)"], rows))


# `gm models best`: the first of these that every champion on the dataset was tested on ranks them (images
# and audio: FD in the featurizer's space; 2-D data: W1), unless --by names one
BEST_BY = ("fd", "w1", "test_bits_per_dim")
HIGHER_IS_BETTER = ("precision", "recall", "coverage", "density", "modes", "hq_pct", "classifier_score",
                    "class_coverage", "class_entropy")


def best_rows(by: str | None = None, dataset: str | None = None) -> list[dict]:
    """Per dataset, the champions ranked on one test metric: [{dataset, metric, ranked: [(value, version)]}].
    Champions without the metric are left out of the ranking (and counted)."""
    client = tracking.client()
    champions: dict[str, list] = {}
    for rm in client.search_registered_models():
        champ = tracking.champion(rm.name)
        if champ is not None and champ.tags.get("gm.dataset") and champ.tags.get("gm.source") != "baseline":
            champions.setdefault(champ.tags["gm.dataset"], []).append(champ)
    if dataset is not None and dataset not in champions:
        raise KeyError(f"--dataset: no champion on {dataset!r}; datasets with one: {', '.join(sorted(champions)) or 'none'}")
    out = []
    for ds in sorted(champions) if dataset is None else [dataset]:
        tested = [(v, cards.tested_metrics(v)) for v in champions[ds]]
        metric = by or next((m for m in BEST_BY if all(m in t for _, t in tested)),
                            next((m for m in BEST_BY if any(m in t for _, t in tested)), None))
        sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
        ranked = sorted(((t[metric], v) for v, t in tested if metric in t and math.isfinite(t[metric])),
                        key=lambda tv: (sign * tv[0], tv[1].name))
        out.append({"dataset": ds, "metric": metric, "ranked": ranked, "untested": len(tested) - len(ranked)})
    return out


def cmd_best(args) -> None:
    rows = best_rows(args.by, args.dataset)
    if args.ref:  # one reference per dataset, for scripts: gm models sample "$(gm models best --dataset digits --ref)"
        missing = [r["dataset"] for r in rows if not r["ranked"]]
        if missing:
            raise KeyError(f"--by {rows[0]['metric']}: no champion on {', '.join(missing)} was tested on it")
        print("\n".join(f"{r['ranked'][0][1].name}/{r['ranked'][0][1].version}" for r in rows))
        return
    table = []
    for r in rows:
        if not r["ranked"]:
            table.append([r["dataset"], "—", str(r["metric"]), "—", f"none tested on {r['metric']}"])
            continue
        (value, v), rest = r["ranked"][0], r["ranked"][1:]
        runner = f"{rest[0][1].name} {rest[0][0]:.4g}" if rest else "—"
        left = f" ({r['untested']} without it)" if r["untested"] else ""
        table.append([r["dataset"], f"{v.name}/{v.version}", r["metric"], f"{value:.4g}", runner + left])
    print(text_table(["dataset", "best (champion)", "by test", "value", "next"], table))


def cmd_show(args) -> None:
    v = resolve(args.model)
    print(cards.card_markdown(v.name, v.version))


def compare_rows(name: str, a: str, b: str) -> tuple[list[str], list[list[str]]]:
    va, vb = (resolve(x if ("@" in x or "/" in x) else (f"{name}/{x}" if x.isdigit() else f"{name}@{x}"))
              for x in (a, b))
    cols = [f"v{va.version}", f"v{vb.version}"]
    rows = [["validation metric", va.tags.get("gm.val_metric", "?"), vb.tags.get("gm.val_metric", "?")],
            ["validation score", *(cards.metric_text("val_score", cards._float(v.tags.get("gm.val_score")), 6)
                                   for v in (va, vb))],
            ["source", va.tags.get("gm.source", "?"), vb.tags.get("gm.source", "?")]]
    ta, tb = cards.tested_metrics(va), cards.tested_metrics(vb)
    for k in sorted(set(ta) | set(tb)):
        rows.append([f"test {k}", cards.metric_text(k, ta.get(k), 6), cards.metric_text(k, tb.get(k), 6)])
    ca, cb = (cards.flatten({k: c.get(k) or {} for k in ("model", "train")}) if c else {}
              for c in (cards.version_config(va), cards.version_config(vb)))
    for k in sorted(set(ca) | set(cb)):
        if k != "train.seed" or ca.get(k) != cb.get(k):
            rows.append([k, cards._fmt(ca.get(k, "—")), cards._fmt(cb.get(k, "—"))])
    for r in rows:  # a mark where the two differ
        r.insert(0, "*" if r[1] != r[2] else "")
    return ["", "", *cols], rows


def cmd_compare(args) -> None:
    header, rows = compare_rows(args.name, args.a, args.b)
    print(text_table(header, rows))
    print("\n* differs")


# ------------------------------------------------------------------------------ promote


def who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def promote(name: str, version: str, reason: str, by: str | None = None) -> str:
    """Move `champion` to `version` by hand and pin it there (promote_if_better keeps it until unpinned);
    who and why go on the version's tags and its champion decision. Returns the line to print."""
    v = resolve(f"{name}/{version}")
    if not reason.strip():
        raise ValueError("--reason: expected why this version is promoted (it is recorded with the version)")
    client = tracking.client()
    by = by or who()
    before = tracking.champion(name)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for k, val in {"gm.promoted_by": by, "gm.promotion_reason": reason, "gm.promoted_at": stamp,
                   "gm.champion_decision": f"promoted by hand by {by} on {stamp}: {reason}"}.items():
        client.set_model_version_tag(name, str(v.version), k, val)
    client.set_registered_model_tag(name, tracking.PIN, str(v.version))
    client.set_registered_model_alias(name, tracking.CHAMPION, str(v.version))
    for changed in {str(v.version), *([str(before.version)] if before is not None else [])}:
        cards.write_card(name, changed)
    was = f"v{before.version}" if before is not None else "none"
    return (f"{name}: champion v{v.version} (was {was}), pinned by {by}; "
            f"`gm models promote {name} --auto` hands it back to the best validation score")


def unpin(name: str, by: str | None = None) -> str:
    """Remove the pin: the champion is the best validation score again (tracking.promote_if_better)."""
    v = resolve(name)  # the model must exist; its champion, if any
    client = tracking.client()
    by = by or who()
    try:
        client.delete_registered_model_tag(name, tracking.PIN)
    except Exception:  # noqa: BLE001  (it was not pinned)
        pass
    best = tracking.best_version(name)
    if best is None:
        return f"{name}: unpinned; no version has a finite validation score, the champion stays v{v.version}"
    tracking.promote_if_better(name, int(best.version), cards._float(best.tags.get("gm.val_score")))
    now = tracking.champion(name)
    if now is not None and str(now.version) != str(v.version):
        client.set_model_version_tag(name, str(now.version), "gm.champion_decision",
                                     f"promoted: best validation score again after {by} unpinned v{v.version}")
    for changed in {str(v.version), *([str(now.version)] if now is not None else [])}:
        cards.write_card(name, changed)
    return f"{name}: unpinned by {by}; champion v{now.version if now else '?'} (best validation score)"


def cmd_promote(args) -> None:
    if args.auto:
        if args.version is not None:
            raise ValueError("promote: give either VERSION --reason ... or --auto, not both")
        print(unpin(args.name))
        return
    if args.version is None or not args.reason:
        raise ValueError("promote: expected NAME VERSION --reason \"why\" (or NAME --auto to unpin)")
    print(promote(args.name, args.version, args.reason))


# ------------------------------------------------------------------------------ sample


def load_version_model(version):
    """The gm model of a registered version, rebuilt from its folder (tensors and JSON, never a pickle)."""
    folder = tracking.download(model_uri(version))
    found = sorted(folder.glob("artifacts/*/config.json"))
    if not found:
        raise FileNotFoundError(f"{model_uri(version)}: no gm model folder (artifacts/*/config.json) in it")
    return load_model(found[0].parent, remedy=f"register {version.name} again (its stored folder is damaged)")


def _local_data(root: Path, dataset: str) -> tuple[dict | None, np.ndarray | None]:
    """The prepared dataset's meta and test split in this root, when they are here (plots beside test data)."""
    folder = Layout(root).prepared(dataset)
    try:
        return read_meta(folder), read_split(folder, "test")[0]
    except (OSError, ValueError, KeyError):
        return None, None


SUFFIXES = (".png", ".wav", ".npy")


def sample_to(ref: str, n: int, out: Path, seed: int = 0, label: int | None = None, root: Path | None = None) -> str:
    """Draw n samples of a registered version (the serving code's answer to {"n", "seed", "label"}) into
    `out`: .png an image grid / 2-D scatter / spectrograms, .wav audio clips one after another, .npy the
    array. Returns the line to print."""
    from gm.serving import predict  # MLflow's model machinery: only `sample` needs it (every gm command imports this)

    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise ValueError(f"-o: expected a file ending in {', '.join(SUFFIXES)}, got {out}")
    if n < 1:
        raise ValueError(f"-n: expected a positive integer, got {n}")
    v = resolve(ref)
    model = load_version_model(v)
    request = {"n": n, "seed": seed, **({"label": label} if label is not None else {})}
    x = predict(model, request)
    meta, test = _local_data(root or Path.cwd(), v.tags.get("gm.dataset", ""))
    meta = meta or {**model.data.to_dict()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, x)
    elif out.suffix == ".wav":
        if model.data.kind != "audio":
            raise ValueError(f"-o {out}: {v.name} models {model.data.kind} data, not audio; use .png or .npy")
        rate = sample_rate_of(meta)
        gap = np.zeros(int(0.25 * rate), dtype=np.float32)  # a quarter second between clips
        waves = [np.concatenate([mu_law_decode(c.reshape(-1)), gap]) for c in x]
        out.write_bytes(wav_bytes(np.concatenate(waves)[: -len(gap)], rate))
    else:
        cards.render_samples(out, x, meta, f"{v.name} v{v.version}: {n} samples, seed {seed}", test)
    return f"{out}: {n} samples {tuple(x.shape[1:])} of {v.name} v{v.version} (seed {seed})"


def cmd_sample(args) -> None:
    print(sample_to(args.model, args.n, Path(args.out), args.seed, args.label, Path(args.root).resolve()))


# ------------------------------------------------------------------------------ serve


def serve_command(uri: str, host: str, port: int) -> list[str]:
    """MLflow's scoring server for `uri`, in this environment (no new virtualenv: nothing downloads)."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    return [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "models", "serve", "-m", uri, "--host", host,
            "--port", str(port), "--env-manager", "local", "--workers", "1"]


def cmd_serve(args) -> None:
    v = resolve(args.model)
    name, alias, version = parse_ref(args.model)
    uri = f"models:/{name}/{version}" if version else f"models:/{name}@{alias or tracking.CHAMPION}"
    cmd = serve_command(uri, args.host, args.port)
    env = dict(os.environ, **tracking.store_uris(),
               # MLflow starts `uvicorn` by name: this environment's, not whatever else is on PATH
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    print(f"serving {uri} (now v{v.version}) on http://{args.host}:{args.port}/invocations", flush=True)
    os.execvpe(cmd[0], cmd, env)  # the server in this process's place: stopping it stops the server


# ------------------------------------------------------------------------------ the command line


def add_parser(sub) -> None:
    """`gm models ...` as a subcommand of the gm command line (gm.cli)."""
    models = sub.add_parser("models", help="browse, compare, promote, sample and serve registered models",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    act = models.add_subparsers(dest="action", required=True)
    act.add_parser("ls", help="a table of the registered models").set_defaults(fn=_setup(cmd_ls))
    b = act.add_parser("best", help="per dataset, the champion that is best on a test metric (FD, W1 for 2-D data)")
    b.add_argument("--dataset", default=None, help="only this dataset")
    b.add_argument("--by", default=None, help=f"the test metric to rank on (default: the first of {', '.join(BEST_BY)} "
                                                "that every champion on the dataset has)")
    b.add_argument("--ref", action="store_true", help="print only NAME/VERSION of each best (for scripts)")
    b.set_defaults(fn=_setup(cmd_best))
    s = act.add_parser("show", help="the model card of NAME, NAME@alias or NAME/version")
    s.add_argument("model")
    s.set_defaults(fn=_setup(cmd_show))
    c = act.add_parser("compare", help="metrics and knobs of two versions side by side")
    c.add_argument("name")
    c.add_argument("a", help="a version number or an alias")
    c.add_argument("b", help="a version number or an alias")
    c.set_defaults(fn=_setup(cmd_compare))
    p = act.add_parser("promote", help="make VERSION the champion by hand (pinned), or --auto to unpin")
    p.add_argument("name")
    p.add_argument("version", nargs="?")
    p.add_argument("--reason", default="", help="why (recorded on the version with who promoted it)")
    p.add_argument("--auto", action="store_true", help="unpin: the best validation score is champion again")
    p.set_defaults(fn=_setup(cmd_promote))
    sm = act.add_parser("sample", help="draw samples into a .png (grid/scatter/spectrograms), .wav or .npy")
    sm.add_argument("model", help="NAME (its champion), NAME@alias or NAME/version")
    sm.add_argument("-n", type=int, default=16)
    sm.add_argument("-o", "--out", default="samples.png")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--label", type=int, default=None, help="the class, for a conditional family")
    sm.set_defaults(fn=_setup(cmd_sample))
    sv = act.add_parser("serve", help="MLflow's model server for NAME (its champion), NAME@alias or NAME/version")
    sv.add_argument("model")
    sv.add_argument("--port", type=int, default=5001)
    sv.add_argument("--host", default="127.0.0.1", help="the address to bind (loopback unless you say so)")
    sv.set_defaults(fn=_setup(cmd_serve))


def connect(root: Path) -> str:
    """Point MLflow at the pipeline's store (MLFLOW_TRACKING_URI, else params.yaml's) to read it: nothing is
    created (a missing sqlite file is an error, not a new empty store). Returns the URI."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for k, v in tracking.HTTP_DEFAULTS + tracking.OFFLINE_ENV:
        os.environ.setdefault(k, v)
    uri = tracking.tracking_uri(stage.params(root).mlflow, root)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"{uri[len('sqlite:///'):]}: no MLflow store here; run `gm repro` in {root} first "
                                "(or point MLFLOW_TRACKING_URI at the store)")
    tracking.check_server(uri)
    tracking.use_store(uri)
    return uri


def _setup(fn):
    def run(args):
        connect(Path(args.root).resolve())
        return fn(args)

    return run

