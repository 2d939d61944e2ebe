"""`make chaos`: run the fault scenarios (all, or those named on the command line) and print their table."""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

from gm.chaos import SCENARIOS, table

MODULES = ("gm.chaos.nodes", "gm.chaos.driver", "gm.chaos.server", "gm.chaos.files")  # each registers its scenarios


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gm.chaos", description=__doc__)
    p.add_argument("only", nargs="*", help="run only the scenarios whose names start with one of these")
    p.add_argument("--workdir", help="keep the scenarios' workspaces here (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    for module in MODULES:
        importlib.import_module(module)
    chosen = [n for n in SCENARIOS if not args.only or any(n.startswith(o) for o in args.only)]
    if not chosen:
        p.error(f"no scenario starts with {' or '.join(args.only)}; known: {', '.join(SCENARIOS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gm-chaos-", dir=args.workdir) as tmp:
        for name in chosen:
            print(f"chaos: {name} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            got = SCENARIOS[name](Path(tmp) / name)
            for r in got:
                r.seconds = r.seconds or (time.perf_counter() - t0) / len(got)
                print(f"chaos: {r.fault}: {r.happened}", file=sys.stderr, flush=True)
            rows += got
    print(table(rows))
    bad = [r.fault for r in rows if not r.clean]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} faults survived with nothing lost or duplicated"
          + (f"; not: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
