"""Starting or joining the Ray cluster a stage runs on, and where its checkpoints live."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from gm.core.config import ConfigError, bounded
from gm.core.layout import Layout
from gm.core.quiet import quiet_ray


@dataclass(frozen=True)
class RayParams:
    address: str = "local"  # "local" starts an embedded Ray; "auto" or "ray://host:10001" joins a cluster
    num_cpus: int | None = bounded(None, gt=0)  # only for a local Ray; None = all cores
    storage_path: str | None = None  # checkpoints; must be shared storage on a cluster. None = <repo>/artifacts/ray

    def validate(self):
        ok = self.address in ("local", "auto") or self.address.startswith(("ray://", "127.", "localhost")) or ":" in self.address
        if not ok:
            raise ConfigError(f"address: expected 'local', 'auto', 'ray://host:port' or 'host:port', got {self.address!r}")


CODE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this gm package

# Set by `shared_ray` for the processes it starts (a `dvc repro`): the GCS address of the one local Ray
# they all join instead of starting their own. gm's own variable, never Ray's RAY_ADDRESS: a stage run
# by hand with `ray.address: local` starts an embedded Ray as before.
SHARED_RAY_ENV = "GM_SHARED_RAY"

# Ray Train's defaults we change, as environment variables (a user's own value wins): the worker group's
# start-up allowance; Train V2; the controller's poll of its workers every 0.25 s instead of 2 s, which
# otherwise adds up to 2 s to every state change of a fit (start, each phase, the end).
TRAIN_ENV_DEFAULTS = (("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600"), ("RAY_TRAIN_V2_ENABLED", "1"),
                      ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"))
# and on a local Ray only: no preemption watcher (an actor, i.e. a process start, per fit, watching for
# cloud nodes being drained, which a single machine's Ray never is)
LOCAL_TRAIN_ENV_DEFAULTS = (("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),)
# The driver's own (Tune runs its controller there), each a line per stage otherwise: Tune's new output
# engine prints its configuration table, results folder and a TensorBoard command even at verbose=0 (the
# legacy one at verbose=0 prints nothing; the progress lines are gm's, gm.training.progress); and every
# report of a trial is a checkpoint, seconds apart on small data, by design (PBT and a resumed sweep need
# them), which Tune's snapshot-frequency warning would flag at every few reports.
DRIVER_ENV_DEFAULTS = (("RAY_AIR_NEW_OUTPUT", "0"), ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"))
# A local Ray's token authentication, explicitly (Ray 2.59+ turns it on for a new local cluster when
# RAY_AUTH_MODE is unset, and says so in a warning on every start): on, as Ray's default, its token in
# ~/.ray/auth_token (created on first use). Every process joining the local Ray of `gm repro` inherits the
# mode. A user's own RAY_AUTH_MODE wins; a cluster (`ray.address` not local) keeps its own settings.
LOCAL_AUTH_MODE = ("RAY_AUTH_MODE", "token")


def init_ray(params: RayParams, *, quiet: bool = True) -> None:
    """Start (address 'local') or join ('auto', 'ray://...', 'host:port') a Ray cluster.

    'local' starts a fresh embedded Ray, never silently joining a cluster that happens to run
    on this machine; the one exception is the local Ray that `shared_ray` started for this very
    pipeline run and named in GM_SHARED_RAY (if it still answers).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    for k, v in DRIVER_ENV_DEFAULTS:
        os.environ.setdefault(k, v)
    if params.address == "local":
        set_auth_mode(*LOCAL_AUTH_MODE)
    # passed on to every worker (docs/architecture.md)
    defaults = TRAIN_ENV_DEFAULTS + (LOCAL_TRAIN_ENV_DEFAULTS if params.address == "local" else ())
    env_vars = {k: os.environ.setdefault(k, v) for k, v in defaults}
    # workers import the gm this driver runs (a profile's workspace, a test's copy), not whichever
    # checkout the environment's editable install points at: Ray appends the driver's folder to
    # the workers' sys.path, after that install
    env_vars["PYTHONPATH"] = os.pathsep.join([str(CODE_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    # the dashboard serves the state API that Train's placement-group cleaner needs (docs/architecture.md)
    kwargs = dict(logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=not quiet,
                  runtime_env={"env_vars": env_vars,
                               "worker_process_setup_hook": "gm.training.cluster.pin_ray_address"})
    quiet_ray()  # what remains of Ray's output that a user cannot act on (gm/core/quiet.py)
    shared = os.environ.get(SHARED_RAY_ENV)
    if params.address == "local" and shared and answers(shared):
        ray.init(address=shared, **kwargs)
    elif params.address == "local":
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


def set_auth_mode(key: str, mode: str) -> None:
    """RAY_AUTH_MODE=`mode` unless the user set one. Ray reads its config when it is imported: it is read
    again, as Ray itself does when it turns token mode on for a new local cluster, or this process would
    not present the token its own cluster asks for."""
    import sys

    if key in os.environ:
        return
    os.environ[key] = mode
    if "ray._raylet" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")


@contextlib.contextmanager
def shared_ray(params: RayParams):
    """One local Ray for every stage of a pipeline run: started here (when `ray.address` is 'local'),
    its address handed to the processes the block starts through the returned environment, shut
    down when the block ends. Saves each Ray stage Ray's own start and stop (seconds each); the
    stages still run on their own, each starting its own Ray, when run outside this block.
    Yields the environment variables to add to the child processes' (empty on a cluster)."""
    import ray

    if params.address != "local" or os.environ.get(SHARED_RAY_ENV):
        yield {}
        return
    init_ray(params)
    env = {SHARED_RAY_ENV: ray.get_runtime_context().gcs_address}
    # the local Ray's authentication mode (LOCAL_AUTH_MODE, or the user's): the processes that join it
    # need the same mode to present the token (~/.ray/auth_token)
    env.update({k: os.environ[k] for k in ("RAY_AUTH_MODE",) if k in os.environ})
    try:
        yield env
    finally:
        ray.shutdown()


def answers(address: str, timeout: float = 2.0) -> bool:
    """True when something accepts a TCP connection at host:port (a live GCS)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def pin_ray_address() -> None:
    """Worker set-up hook: point Ray's state API at this worker's own cluster, which it cannot pick
    by itself when two local Rays share the machine, and torch's gloo at the node's own network
    interface (docs/architecture.md, "Known traps")."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    if "GLOO_SOCKET_IFNAME" not in os.environ:
        interface = interface_of(ray.util.get_node_ip_address())
        if interface is not None:
            os.environ["GLOO_SOCKET_IFNAME"] = interface


def interface_of(ip: str) -> str | None:
    """The network interface holding address `ip`, or None (loopback addresses: None, gloo's default is right).

    gloo binds whatever the machine's hostname resolves to, which on many machines (Debian's 127.0.1.1,
    an /etc/hosts entry) is loopback: ranks on two machines would then each dial their own 127.0.0.1
    ("Gloo connectFullMesh failed ... Connection refused"). Ray's node address is the one the cluster
    reaches; its interface is the one gloo must use."""
    import socket

    import psutil

    if ip.startswith("127."):
        return None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == ip for a in addresses):
            return name
    return None


# The ports a Ray node takes by default (GCS, dashboard, client server, dashboard agent). A port picked for
# another part of a Ray node must not be one of them, or Ray refuses to start ("... please make sure the
# same port is not used by multiple components"): 52365, the agent's, lies in the kernel's ephemeral range,
# so a picked dashboard port is that port about once in 14,000 starts. tests/test_ports.py holds this to Ray's
# own defaults.
RAY_DEFAULT_PORTS = frozenset({6379, 8265, 10001, 52365})


def free_ports(n: int, avoid: frozenset[int] = RAY_DEFAULT_PORTS) -> list[int]:
    """`n` distinct loopback TCP ports free now, none of them in `avoid`: every port the kernel offers is held
    until all are picked, so none is offered twice."""
    import socket

    held: list[socket.socket] = []
    picked: list[int] = []
    try:
        for _ in range(n + 64):  # bounded: each skipped port is one of the few in `avoid`
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in avoid:
                picked.append(port)
            if len(picked) == n:
                return picked
        raise OSError(f"no {n} free loopback ports outside {sorted(avoid)}")
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    """A loopback TCP port free now, not one of Ray's default ports."""
    return free_ports(1)[0]


def storage_path(params: RayParams, repo_root: Path) -> str:
    """Absolute checkpoint root; on a cluster `ray.storage_path` must name shared storage."""
    if params.storage_path:
        p = params.storage_path
        return p if "://" in p else str((repo_root / p).resolve())
    return str(Layout(repo_root).ray_storage.resolve())
