"""The `gm` command: data set-up, params validation, and sampling registered models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gm import stage
from gm.data.bootstrap import materialise_default_data
from gm import catalog, server, tracking
from gm.training.cluster import shared_ray


def cmd_data_init(args) -> None:
    root = Path(args.root).resolve()
    written = materialise_default_data(root)
    print("data/: " + (", ".join(str(p) for p in written) + " written" if written else "already present"))
    cache_data(root)


def cache_data(root: Path) -> None:
    """Put data/ into the DVC cache when it is exactly what data.dvc records (a fresh clone).

    `dvc commit -f` rewrites data.dvc only if the hash differs; then the user's data/
    is not the committed version: we restore data.dvc and say so instead of versioning it.
    """
    import subprocess

    dvc_file = root / "data.dvc"
    if not dvc_file.is_file() or not (root / ".dvc").is_dir():
        return
    before = dvc_file.read_bytes()
    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc) if dvc.exists() else "dvc", "commit", "-f", "-q", "data.dvc"], cwd=root, check=True)
    if dvc_file.read_bytes() != before:
        dvc_file.write_bytes(before)
        print("warning: data/ differs from data.dvc; `dvc checkout data.dvc` restores the committed data, "
              "`dvc add data` versions yours", file=sys.stderr)


def cmd_check(args) -> None:
    p = stage.params(Path(args.root))
    for name, src in p.datasets.items():
        check = getattr(src, "check", None)
        if check is not None:
            check(Path(args.root))
    print(f"params.yaml ok: {len(p.datasets)} datasets, {len(p.experiments)} experiments, {len(p.sweeps)} sweeps")


def cmd_sample(args) -> None:
    import numpy as np

    tracking.setup(stage.params(Path(args.root)).mlflow, Path(args.root))
    model = tracking.load_registered(args.model_uri)
    request = {"n": args.n, "seed": args.seed}
    if args.label is not None:
        request["label"] = args.label
    x = model.predict([request])
    np.save(args.out, x)
    print(f"{args.out}: {x.shape} samples from {args.model_uri}")


def repro(root: Path, dvc_args: list[str], env: dict | None = None) -> int:
    """`dvc repro <dvc_args>` in `root` with one local Ray for all its stages (gm.training.cluster.shared_ray:
    each Ray stage joins it instead of starting and stopping its own); returns dvc's exit status."""
    import os
    import subprocess

    env = dict(os.environ if env is None else env)
    with shared_ray(stage.params(root).ray) as shared:
        env.update(shared)
        env.pop("RAY_ADDRESS", None)  # init_ray points this process's state API at its Ray: not the children's
        dvc = Path(sys.executable).with_name("dvc")
        return subprocess.run([str(dvc) if dvc.exists() else "dvc", "repro", *dvc_args], cwd=root, env=env).returncode


def cmd_repro(args) -> None:
    rc = repro(Path(args.root).resolve(), args.dvc_args)
    if rc:
        raise stage.StageError(f"dvc repro failed (exit {rc}); see its output above")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="gm", description=__doc__)
    parser.add_argument("--root", default=".", help="the pipeline's root (where params.yaml is)")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="raw data in data/").add_subparsers(dest="action", required=True)
    data.add_parser("init", help="materialise the bundled digits into data/ (byte for byte)").set_defaults(fn=cmd_data_init)
    sub.add_parser("check", help="validate params.yaml and the data files it names").set_defaults(fn=cmd_check)
    r = sub.add_parser("repro", help="dvc repro with one Ray for all its stages (what `make run` runs)")
    r.set_defaults(fn=cmd_repro)  # every argument after `repro` goes to dvc repro (targets, -f, --keep-going ...)
    sub.add_parser("server", help="a team's MLflow tracking server on PostgreSQL (gm server --help)", add_help=False
                   ).set_defaults(fn=None)
    s = sub.add_parser("sample", help="draw samples from a registered model")
    s.add_argument("model_uri", help="e.g. models:/gm-wgan_gp-grid25@champion")
    s.add_argument("-n", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--label", type=int, default=None)
    s.add_argument("--out", default="samples.npy")
    s.set_defaults(fn=cmd_sample)
    catalog.add_parser(sub)  # gm models ls/show/compare/promote/sample/serve
    argv = sys.argv[1:] if argv is None else list(argv)
    if "server" in argv:  # everything after it is the server's own command line (gm.server)
        return server.main(argv[argv.index("server") + 1:])
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "repro":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.dvc_args = extra
    stage.guarded(lambda: args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
