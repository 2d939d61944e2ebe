"""Fail points: named places where `make chaos` and the tests kill a process at an exact moment.

    GM_FAILPOINT=register:version-created python -m pipelines.train gan-ring8

A process whose GM_FAILPOINT names a fail point it reaches SIGKILLs itself there (its whole process
group when it leads one, as a killed `dvc repro` would lose its Ray too): the moments between two
writes that no outside kill can hit reliably, such as a version registered and not yet promoted.
Unset (always, outside fault injection), a fail point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "GM_FAILPOINT"

POINTS = {
    "register:version-created": "a model version exists, its champion decision is not made yet",
}


def failpoint(name: str) -> None:
    """Die here, at once, if GM_FAILPOINT names this point."""
    if os.environ.get(ENV) != name:
        return
    if name not in POINTS:
        raise ValueError(f"{ENV}: unknown fail point {name!r}; expected one of: {', '.join(POINTS)}")
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
