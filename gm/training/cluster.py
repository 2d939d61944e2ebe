"""Starting or joining the Ray cluster a stage runs on, and where its checkpoints live."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from gm.core.config import ConfigError, bounded
from gm.core.layout import Layout


@dataclass(frozen=True)
class RayParams:
    address: str = "local"  # "local" starts an embedded Ray; "auto" or "ray://host:10001" joins a cluster
    num_cpus: int | None = bounded(None, gt=0)  # only for a local Ray; None = all cores
    storage_path: str | None = None  # checkpoints; must be shared storage on a cluster. None = <repo>/artifacts/ray

    def validate(self):
        ok = self.address in ("local", "auto") or self.address.startswith(("ray://", "127.", "localhost")) or ":" in self.address
        if not ok:
            raise ConfigError(f"address: expected 'local', 'auto', 'ray://host:port' or 'host:port', got {self.address!r}")


def init_ray(params: RayParams, *, quiet: bool = True) -> None:
    """Start (address 'local') or join ('auto', 'ray://...', 'host:port') a Ray cluster.

    'local' always starts a fresh embedded Ray, never silently joining a cluster that
    happens to run on this machine.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # a worker group's start-up allowance, and Train V2: passed on to every worker (docs/architecture.md)
    env_vars = {k: os.environ.setdefault(k, v) for k, v in (("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600"),
                                                            ("RAY_TRAIN_V2_ENABLED", "1"))}
    # the dashboard serves the state API that Train's placement-group cleaner needs (docs/architecture.md)
    kwargs = dict(logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=not quiet,
                  runtime_env={"env_vars": env_vars,
                               "worker_process_setup_hook": "gm.training.cluster.pin_ray_address"})
    if params.address == "local":
        # a port of our own: a second local Ray on the machine (another pipeline, a test) would
        # otherwise find 8265 taken and run without the state API
        ray.init(address="local", num_cpus=params.num_cpus, dashboard_host="127.0.0.1",
                 dashboard_port=free_port(), **kwargs)
    else:
        ray.init(address=params.address, **kwargs)
    import ray.data

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address  # the driver's state API too
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def pin_ray_address() -> None:
    """Worker set-up hook: point Ray's state API at this worker's own cluster, which it cannot pick
    by itself when two local Rays share the machine (docs/architecture.md, "Known traps")."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def storage_path(params: RayParams, repo_root: Path) -> str:
    """Absolute checkpoint root; on a cluster `ray.storage_path` must name shared storage."""
    if params.storage_path:
        p = params.storage_path
        return p if "://" in p else str((repo_root / p).resolve())
    return str(Layout(repo_root).ray_storage.resolve())
