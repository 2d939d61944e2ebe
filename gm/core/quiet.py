"""What is left of the libraries' output that a user cannot act on, filtered here and nowhere else.

The causes of the rest are fixed where they arise (docs/architecture.md, "Known traps"): Ray's
authentication mode is explicit for a local Ray, Tune's output engine and snapshot warning are
configured off (gm/training/cluster.py), the registered pyfunc carries no return hint MLflow would warn
about (gm/serving.py). Each filter below says why its cause stays.
"""

from __future__ import annotations

# Lines that Ray's driver prints on behalf of the raylet (`(raylet) ...`), by a fragment of their text.
RAYLET_LINES = (
    # "N PYTHON worker processes have been started on node ..., which is 4x the maximum expected startup
    # concurrency (2)": the raylet counts processes against min(cores, ray.num_cpus), while gm's runs are
    # mostly 0-CPU actors by design (a Tune trial, its mailbox, a Train controller, the progress board,
    # beside the workers that hold the CPUs); nothing a user could change short of fewer trials at once.
    "worker processes have been started on node",
)


def quiet_ray() -> None:
    """Drop RAYLET_LINES from what this Ray driver prints of the raylet's messages (Ray prints them from
    a thread of its own through `ray._private.worker.print_to_stdstream`). Idempotent; a Ray without
    that function prints as before."""
    import ray._private.worker as worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "gm_quiet", False):
        return

    def print_to_stdstream(data, *args, **kwargs):
        lines = [ln for ln in data.get("lines", []) if not any(f in ln for f in RAYLET_LINES)]
        if lines:
            printer({**data, "lines": lines}, *args, **kwargs)

    print_to_stdstream.gm_quiet = True
    print_to_stdstream.gm_original = printer
    worker.print_to_stdstream = print_to_stdstream
