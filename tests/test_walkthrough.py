"""A newcomer's first hour, scripted: the README's walk-through block (between `<!-- walkthrough:start -->` and
`<!-- walkthrough:end -->`), run line by line in a fresh copy of the repository, as a person would type it.

What the test changes, and only that: the quick profile's params.yaml is swapped for the tests' tiny one
(GM_WALKTHROUGH_FULL=1 keeps the shipped one: 17 minutes on 2 cores), this checkout's .venv is linked in
(setting one up is `make test`'s own first step), and the server's port is a free one. A line ending in `&`
starts a server in the background, as in a shell; the next line waits for it to answer (bounded); `kill %1`
stops it. Then each step's output is checked for what the person was after.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gm.server import answers, stop_group
from gm.training.cluster import free_port
from tests.helpers import REPO, copy_repo, env_for, tiny_params, write_params

START, END = "<!-- walkthrough:start -->", "<!-- walkthrough:end -->"
SERVER_START_S = 300.0  # `mlflow models serve` imports MLflow and the model: a minute or more on a loaded machine
LINE_TIMEOUT_S = 2400.0  # `make run` of the full profile is the longest line


def walkthrough_lines(readme: Path) -> list[str]:
    """The commands of the README's walk-through block: its fenced lines without comments."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise AssertionError(f"{readme}: no walk-through block ({START} ... {END})")
    block = text[text.index(START) + len(START):text.index(END)]
    lines = []
    for raw in block.splitlines():
        if raw.startswith("```"):
            continue
        line = strip_comment(raw).strip()
        if line:
            lines.append(line)
    return lines


def strip_comment(line: str) -> str:
    """The line without a trailing `# ...` comment outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def test_the_walkthrough_block_parses_into_commands():
    lines = walkthrough_lines(REPO / "README.md")
    assert lines[0] == "make run", lines
    assert any(line.endswith("&") for line in lines), "the block serves a model in the background"
    assert strip_comment("""gm models promote x 2 --reason "a # b"  # why""").rstrip() == \
        'gm models promote x 2 --reason "a # b"'


def wait_for_port(port: int, server: subprocess.Popen, log: Path, timeout: float = SERVER_START_S) -> None:
    """Bounded wait for the background server's health check (it must not have exited meanwhile)."""
    deadline = time.monotonic() + timeout
    while not answers(f"http://127.0.0.1:{port}"):
        if server.poll() is not None:
            raise AssertionError(f"the server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered on 127.0.0.1:{port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(1.0)


def link_venv(root: Path) -> None:
    """This checkout's virtual environment in the copy, newer than the copy's lock files (or make would
    install into it again)."""
    venv = Path(sys.executable).parent.parent
    (root / ".venv").symlink_to(venv)
    old = (venv / ".installed").stat().st_mtime - 60 if (venv / ".installed").exists() else 0
    for f in ("requirements.lock", "pyproject.toml"):
        os.utime(root / f, (old, old))


def walk(root: Path, lines: list[str], port: int) -> list[tuple[str, str]]:
    """Run the lines in `root`; [(line, its stdout)]. A failing line fails the test with its output."""
    env = env_for(root)
    env.pop("GM_ROOT", None)  # the person is in the repository's folder: the cwd is the root
    env["GM_PROGRESS"] = "plain"
    out: list[tuple[str, str]] = []
    servers: list[tuple[subprocess.Popen, int, Path]] = []
    try:
        for n, line in enumerate(lines):
            line = line.replace("5001", str(port))
            if line in (". .venv/bin/activate", "source .venv/bin/activate"):
                env["PATH"] = f"{root / '.venv' / 'bin'}:{env['PATH']}"
                env["VIRTUAL_ENV"] = str(root / ".venv")
                continue
            if line.startswith("kill %"):
                for server, _, _ in servers:
                    stop_group(server)
                servers.clear()
                continue
            if line.endswith("&"):
                log = root / f"walkthrough-server-{n}.log"
                with log.open("w") as f:
                    server = subprocess.Popen(["bash", "-c", line[:-1].strip()], cwd=root, env=env, stdout=f,
                                              stderr=subprocess.STDOUT, start_new_session=True)
                ports = re.findall(r"--port\s+(\d+)", line)
                servers.append((server, int(ports[0]) if ports else port, log))
                continue
            for server, server_port, log in servers:  # the server must answer before it is asked
                wait_for_port(server_port, server, log)
            r = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=root, env=env, capture_output=True,
                               text=True, timeout=LINE_TIMEOUT_S)
            assert r.returncode == 0, (f"README walk-through line {n + 1} failed (exit {r.returncode}): {line}\n"
                                       f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
            out.append((line, r.stdout))
    finally:
        for server, _, _ in servers:
            stop_group(server)
    return out


def output_of(out: list[tuple[str, str]], pattern: str, nth: int = 0) -> str:
    """The stdout of the nth line (from 0; -1 the last) matching `pattern`."""
    found = [text for line, text in out if re.search(pattern, line)]
    assert len(found) > (nth if nth >= 0 else -nth - 1), \
        f"the walk-through has no line matching {pattern!r}: {[line for line, _ in out]}"
    return found[nth]


@pytest.mark.integration
@pytest.mark.journey
@pytest.mark.timeout(3600)
def test_a_newcomer_runs_browses_samples_serves_compares_and_promotes(tmp_path):
    root = copy_repo(tmp_path / "gm")
    link_venv(root)
    if os.environ.get("GM_WALKTHROUGH_FULL") != "1":
        write_params(root, tiny_params())
    lines = walkthrough_lines(root / "README.md")
    out = walk(root, lines, free_port())

    # the pipeline ran and registered what it trained
    listing = output_of(out, r"^gm models ls$")
    for name in ("gm-vae-digits", "gm-wgan_gp-ring8"):
        assert name in listing, listing
    # the best of each dataset, and its samples as a picture
    best = output_of(out, r"^gm models best$")
    assert re.search(r"^digits\s+gm-\S+-digits/\d+\s+fd\s", best, re.M), best
    assert re.search(r"^ring8\s+gm-\S+-ring8/\d+\s+w1\s", best, re.M), best
    refs = subprocess.run([str(root / ".venv/bin/gm"), "models", "best", "--ref"], cwd=root, env=env_for(root),
                          capture_output=True, text=True, check=True).stdout.split()
    assert len(refs) == 2, refs
    for ref in refs:
        png = root / f"{ref.split('/')[0]}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # the card of the model
    card = output_of(out, r"^gm models show ")
    assert card.startswith("# Model card") and "digits" in card, card[:500]
    # the server's answers: 4 samples of 8x8 digits, then two finite log-likelihoods
    samples = np.asarray(json.loads(output_of(out, r"curl .*\"n\": 4"))["predictions"])
    assert samples.shape == (4, 1, 8, 8) and np.isfinite(samples).all(), samples.shape
    lp = np.asarray(json.loads(output_of(out, r"log_prob"))["predictions"], dtype=float)
    assert lp.shape == (2,) and np.isfinite(lp).all() and (lp < 0).all(), lp
    # two versions side by side, then one promoted by hand: pinned and champion in the last listing
    compared = output_of(out, r"^gm models compare ")
    assert re.search(r"validation score\s+\S+\s+\S+", compared) and "* differs" in compared, compared
    promoted = next(re.search(r"^gm models promote (\S+) (\d+)", line) for line, _ in out if "promote" in line)
    name, version = promoted.group(1), promoted.group(2)
    assert f"champion v{version}" in output_of(out, r"^gm models promote "), out
    last = output_of(out, r"^gm models ls$", nth=-1)
    assert re.search(rf"^{re.escape(name)}\s.*\sv{version} \(pinned\)", last, re.M), last
