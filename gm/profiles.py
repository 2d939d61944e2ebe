"""Run the pipeline on another params profile, in a workspace of its own.

    python -m gm.profiles adversarial        # profiles/adversarial.yaml

A profile is a complete params.yaml (profiles/<name>.yaml). Its pipeline runs with DVC in
artifacts/profiles/<name>/ — a copy of this checkout's tracked files with the profile as
its params.yaml — so its outputs never mix with the default pipeline's, and a second run
reproduces only what changed. MLflow runs and registered models go to this checkout's
store (or MLFLOW_TRACKING_URI), so every profile's models are browsed in one registry.
The profile's reports are copied to reports/profiles/<name>/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gm import stage, tracking
from gm.cli import repro
from gm.core.layout import Layout
from gm.params import load_params


def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def copy_checkout(src: Path, dest: Path) -> Path:
    """The tracked files of `src` (as a fresh clone has them) written into `dest`, committed as a git repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in tracked_files(src):
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / f, dest / f)
    git = ["git", "-c", "user.name=gm", "-c", "user.email=gm@localhost"]
    if not (dest / ".git").is_dir():
        subprocess.run(git + ["init", "-q"], cwd=dest, check=True, capture_output=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True, capture_output=True)
    subprocess.run(git + ["commit", "-qm", f"copy of {src}", "--allow-empty"], cwd=dest, check=True,
                   capture_output=True)
    return dest


def run_profile(name: str, root: Path, keep_code: bool = False) -> Path:
    """Run profiles/<name>.yaml in its workspace; `keep_code` leaves the workspace's copy of
    the code as it is (only params.yaml is refreshed), so an interrupted benchmark resumes
    without retraining what code changes elsewhere in the checkout would invalidate."""
    profile = root / "profiles" / f"{name}.yaml"
    load_params(profile)  # a bad profile fails here, in one line, before anything is copied
    work = Layout(root).profile_workspace(name)
    if not keep_code or not (work / ".git").is_dir():
        copy_checkout(root, work)
    shutil.copy2(profile, work / "params.yaml")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "GM_ROOT": str(work)}
    env.setdefault("MLFLOW_TRACKING_URI", tracking.tracking_uri(tracking.MlflowParams(), root))
    subprocess.run([sys.executable, "-m", "gm.cli", "--root", str(work), "data", "init"], cwd=work, env=env, check=True)
    rc = repro(work, [], env)
    if rc != 0:
        raise stage.StageError(f"profile {name}: dvc repro failed in {work} (exit {rc}); see its output above")
    dest = Layout(root).profile_reports(name)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(Layout(work).reports.dir, dest)
    return dest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile", help="a file profiles/<name>.yaml")
    p.add_argument("--keep-code", action="store_true",
                   help="resume with the workspace's existing copy of the code (refresh params.yaml only)")
    args = p.parse_args(argv)
    dest = stage.guarded(lambda: run_profile(args.profile, stage.root(), args.keep_code))
    print(f"profile {args.profile}: reports in {dest}")


if __name__ == "__main__":
    main()
