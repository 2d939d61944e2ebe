"""Test hosts: Ray nodes as separate machines on one Linux box, and a node lost the way a machine is lost.

`Hosts(n=2)` gives each host a network namespace of its own (`gm-<pid>-<k>-h0`, `...-h1`), joined by a
veth pair on a private /24 (10.a.b.1, 10.a.b.2, `lo` up in each): Ray's nodes then talk over a network
between two addresses, as on two machines, while sharing this machine's files (so `ray.storage_path` is
just a shared folder). The nodes are real `ray start --block` processes; a stage runs on a host through
its command prefix (`ip netns exec <ns>`), since a driver must run on a Ray node.

Where namespaces are refused (not root, no CAP_NET_ADMIN, no `ip`), the hosts are plain processes on
loopback (127.0.0.2, 127.0.0.3, ports of their own) and `isolated` is False with `fallback_reason` saying
why: a caller must say so, never pass it off as a network.

    with Hosts(2) as hosts:
        head = hosts.start_ray(cpus=1)          # "10.a.b.1:6379" once both nodes are up
        proc = hosts.popen(hosts[0], ["python", "-m", "pipelines.train", "exp"], cwd=root, env=env)
        hosts.kill(hosts[1])                    # every process of h1 SIGKILLed at once

`GM_HOSTS_LOOPBACK=1` (or `isolate=False`) asks for the fallback, to check it where namespaces work.

Only what a Hosts created is removed at the end (its namespaces, its processes, its temporary folder),
on error too, with bounded waits; never `ray stop`, which stops every Ray of the machine (tests run
other Rays beside this one).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from gm.training.cluster import TRAIN_ENV_DEFAULTS, free_ports

# The head's GCS checks every node each second and gives up on one after 3 failed checks: a lost node is
# declared dead ~3 s after it died (Ray's defaults, 3 s x 5 checks of up to 10 s, take 15-60 s). Only
# the GCS reads them, so only the head gets them (RayConfig names, `RAY_<name>`; ray_config_def.h).
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "3000",
                   "RAY_health_check_failure_threshold": "3"}
OBJECT_STORE_BYTES = 256 * 1024 ** 2  # per node: tiny data, and other Rays share this machine's memory
RAY = str(Path(sys.executable).with_name("ray"))  # the `ray` CLI of this interpreter's environment
_instances = itertools.count()  # several Hosts of one process get distinct namespace names

NODES = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
want, deadline = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    nodes = [{"id": n["NodeID"], "address": n["NodeManagerAddress"], "alive": bool(n["Alive"]),
              "cpus": n["Resources"].get("CPU", 0)} for n in ray.nodes()]
    if sum(n["alive"] for n in nodes) >= want or time.monotonic() > deadline:
        break
    time.sleep(0.25)
print(json.dumps(nodes))
"""


@dataclass
class Host:
    """One test machine: its address, its namespace (None on loopback) and its Ray node."""

    name: str  # h0 (the Ray head), h1, ...
    address: str
    netns: str | None
    temp_dir: Path  # its node's `ray start --temp-dir`: session, sockets, logs
    node: subprocess.Popen | None = None  # its `ray start --block`
    started: list[subprocess.Popen] = field(default_factory=list)  # what `Hosts.popen` ran on it

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program on this host."""
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    @property
    def log(self) -> Path:
        return self.temp_dir.with_suffix(".log")


class Hosts:
    """`n` test hosts (network namespaces, else loopback processes), their Ray nodes, and their loss."""

    def __init__(self, n: int = 2, *, isolate: bool = True):
        if n < 2:
            raise ValueError(f"n: expected at least 2 hosts, got {n}")
        self.n = n
        self.isolate = isolate and not os.environ.get("GM_HOSTS_LOOPBACK")  # the fallback, on request
        self.isolated = False
        self.fallback_reason = ""
        self.hosts: list[Host] = []
        self.ray_address: str | None = None  # the head's GCS, host:port, once `start_ray` ran
        # One token for the whole cluster, in every process that joins it (the nodes, drivers): Ray 2.60
        # turns token authentication on for a new head when ~/.ray/auth_token exists, but never for a node
        # or driver given an explicit address, which then fail with "InvalidAuthToken". Explicit here, and
        # never the machine's own token file.
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self._namespaces: list[str] = []  # created by this object, removed by it
        self.folder: Path | None = None  # this object's temporary folder: each node's --temp-dir and log

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def __enter__(self) -> Hosts:
        self.folder = Path(tempfile.mkdtemp(prefix=f"gm-{os.getpid()}-"))  # short: Ray's unix sockets live in it
        try:
            if self.isolate:
                self._make_namespaces()
            else:
                self.fallback_reason = "namespaces not asked for (isolate=False or GM_HOSTS_LOOPBACK set)"
            if not self.isolated:
                # not 127.0.0.1: Ray swaps that for the machine's own address
                self.hosts = [Host(f"h{i}", f"127.0.0.{i + 2}", None, self.folder / f"h{i}") for i in range(self.n)]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close(quiet=exc[0] is not None)

    @property
    def mode(self) -> str:
        """One line for reports: what the hosts are."""
        if self.isolated:
            return f"{self.n} network namespaces on {self.hosts[0].address.rsplit('.', 1)[0]}.0/24"
        return f"{self.n} process groups on loopback (no namespaces: {self.fallback_reason})"

    # ------------------------------------------------------------------ namespaces

    def _make_namespaces(self) -> None:
        """Namespaces joined by veth (a pair for 2 hosts, a bridge in a switch namespace for more); on
        any refusal, what was made is removed again and `fallback_reason` says what refused."""
        if shutil.which("ip") is None:
            self.fallback_reason = "`ip` (iproute2) is not installed"
            return
        try:
            net = self._free_subnet()
            base = self._claim_names()
            names = [f"{base}-h{i}" for i in range(self.n)]
            for ns in names[1:]:
                _ip("netns", "add", ns)
                self._namespaces.append(ns)
            if self.n == 2:
                _ip("link", "add", "eth0", "netns", names[0], "type", "veth", "peer", "name", "eth0", "netns", names[1])
            else:
                switch = f"{base}-sw"
                _ip("netns", "add", switch)
                self._namespaces.append(switch)
                _ip("-n", switch, "link", "add", "br0", "type", "bridge")
                _ip("-n", switch, "link", "set", "br0", "up")
                for i, ns in enumerate(names):
                    _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i}", "netns", switch)
                    _ip("-n", switch, "link", "set", f"p{i}", "master", "br0", "up")
            for i, ns in enumerate(names):
                address = str(net.network_address + i + 1)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                # a default route, as a real host has: Ray finds a process's own address by the route
                # out (a UDP "connect" to 8.8.8.8), which without one would fall back to 127.0.0.1
                _ip("-n", ns, "route", "add", "default", "dev", "eth0")
                self.hosts.append(Host(f"h{i}", address, ns, self.folder / f"h{i}"))
        except (OSError, subprocess.SubprocessError) as e:
            self.fallback_reason = f"network namespaces refused: {_why(e)}"
            self.hosts = []
            self._remove_namespaces()
            return
        self.isolated = True

    def _claim_names(self) -> str:
        """A name prefix gm-<pid>-<k> whose first namespace this object could create (so none of another
        process, or left over from a crashed run, is ever taken over or removed)."""
        for _ in range(100):
            base = f"gm-{os.getpid()}-{next(_instances)}"
            try:
                _ip("netns", "add", f"{base}-h0")
            except subprocess.CalledProcessError as e:
                if "exists" in (e.stderr or ""):
                    continue
                raise
            self._namespaces.append(f"{base}-h0")
            return base
        raise OSError("no free namespace name gm-<pid>-<k> in 100 tries")

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        """A 10.a.b.0/24 that no address or route of this machine's own namespace uses (so addresses in
        logs are never ambiguous), picked from this process's id."""
        taken = []
        for args in (("-4", "-o", "addr", "show"), ("-4", "route", "show")):
            out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10).stdout
            for word in out.split():
                try:
                    taken.append(ipaddress.ip_network(word, strict=False))
                except ValueError:
                    pass
        start = os.getpid() % 12000
        for k in range(12000):
            j = (start + k) % 12000
            net = ipaddress.ip_network(f"10.{200 + j // 240}.{j % 240 + 1}.0/24")
            if not any(net.overlaps(t) for t in taken if t.prefixlen > 0):
                return net
        raise OSError("no free 10.x.y.0/24 on this machine")

    def _remove_namespaces(self) -> list[str]:
        problems = []
        for ns in reversed(self._namespaces):
            try:
                _ip("netns", "del", ns)  # its veth ends go with it
            except (OSError, subprocess.SubprocessError) as e:
                problems.append(f"namespace {ns} not removed: {_why(e)}")
        self._namespaces = []
        return problems

    # ------------------------------------------------------------------ Ray nodes

    def node_env(self, extra: dict | None = None) -> dict:
        """The environment of a process of this cluster: this one's, without pointers to any other Ray,
        with the project's Train defaults (`TRAIN_ENV_DEFAULTS`) and the cluster's token."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_ADDRESS", "GM_SHARED_RAY", "RAY_AUTH_TOKEN_PATH"))}
        for k, v in TRAIN_ENV_DEFAULTS:
            env.setdefault(k, v)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        return {**env, **(extra or {}), **self.env}

    def start_ray(self, cpus: int | list[int] = 1, wait: bool = True, timeout: float = 120.0) -> str:
        """A Ray node on every host (h0 the head, with fast node-death detection), `cpus` CPUs each (or one
        count per host); returns the head's address (host:port) once the cluster shows every node. With
        `wait=False` it returns once the nodes are launched (the others retry the head for ~20 s), so the
        caller can do other work while they start; `wait_ray` then waits for them."""
        counts = cpus if isinstance(cpus, list) else [cpus] * self.n
        head = self.hosts[0]
        # one machine's ports are shared on loopback: all picked at once, so all distinct, none Ray's defaults;
        # a namespace has ports of its own, Ray's defaults
        ports = [] if self.isolated else free_ports(3 + 2 * self.n)
        port, dashboard, client = ports[:3] if ports else (6379, 8265, 10001)
        node_ports = [ports[3 + 2 * i:5 + 2 * i] for i in range(self.n)] if ports else [[]] * self.n
        self.ray_address = f"{head.address}:{port}"
        self._launch(head, ["--head", "--port", str(port), "--dashboard-host", head.address,
                            "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client)],
                     counts[0], FAST_NODE_DEATH, node_ports[0])
        for host, n, own in zip(self.hosts[1:], counts[1:], node_ports[1:]):
            self._launch(host, ["--address", self.ray_address], n, {}, own)
        if wait:
            self.wait_ray(timeout)
        return self.ray_address

    def wait_ray(self, timeout: float = 120.0) -> None:
        """Wait (bounded) until every node's `ray start` is up and the cluster shows them all alive."""
        deadline = time.monotonic() + timeout
        for host in self.hosts:
            while "Ray runtime started" not in host.log.read_text(errors="replace"):
                if host.node.poll() is not None:
                    raise RuntimeError(f"ray start on {host.name} ({host.address}) exited {host.node.returncode}: "
                                       f"{_tail(host.log)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ray start on {host.name} ({host.address}) not up in {timeout:.0f} s: "
                                       f"{_tail(host.log)}")
                time.sleep(0.2)
        nodes = self.nodes(want_alive=self.n, timeout=max(1.0, deadline - time.monotonic()))
        alive = sorted(n["address"] for n in nodes if n["alive"])
        if alive != sorted(h.address for h in self.hosts):
            raise TimeoutError(f"the cluster at {self.ray_address} shows nodes {alive}, expected "
                               f"{sorted(h.address for h in self.hosts)} within {timeout:.0f} s")

    def _launch(self, host: Host, args: list[str], cpus: int, extra_env: dict, ports: list[int]) -> None:
        """`ray start ... --block` on `host`, its output in host.log; `ports`: its dashboard agent's and metrics
        exporter's (none: Ray's defaults, in a namespace of its own)."""
        fixed_ports = [] if not ports else [
            "--dashboard-agent-listen-port", str(ports[0]), "--metrics-export-port", str(ports[1])]
        cmd = host.prefix + [RAY, "start", *args, "--node-ip-address", host.address, "--num-cpus", str(cpus),
                             "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(host.temp_dir),
                             *fixed_ports, "--disable-usage-stats", "--log-style", "record",
                             "--log-color", "false", "--block"]
        with open(host.log, "ab") as log:
            host.node = subprocess.Popen(cmd, env=self.node_env(extra_env), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def nodes(self, want_alive: int = 0, timeout: float = 30.0) -> list[dict]:
        """The cluster's nodes as its GCS sees them, dead ones too ({id, address, alive, cpus}), asked by a
        driver on the head host; waits (bounded) until `want_alive` of them are alive."""
        out = self.python(self.hosts[0], NODES, self.ray_address, str(want_alive), str(timeout),
                          timeout=timeout + 60)
        return json.loads(out.strip().splitlines()[-1])

    # ------------------------------------------------------------------ processes on a host

    def python(self, host: Host, code: str, *args: str, timeout: float = 120.0) -> str:
        """Run `python -c code args` on `host` with the cluster's environment; its stdout (raises on failure)."""
        r = subprocess.run(host.prefix + [sys.executable, "-c", code, *args], env=self.node_env(),
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"python on {host.name} exited {r.returncode}: {r.stderr[-2000:]}")
        return r.stdout

    def popen(self, host: Host, cmd: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
        """Start `cmd` on `host` in a session of its own, with the cluster's token added to `env`; it is
        one of the host's processes (`kill`) and is killed at the end at the latest."""
        env = {**(env if env is not None else self.node_env()), **self.env}
        proc = subprocess.Popen(host.prefix + list(cmd), env=env, start_new_session=True, **kwargs)
        host.started.append(proc)
        return proc

    def pids(self, host: Host) -> set[int]:
        """Every live process of `host`: its namespace's (isolated), else its node's and `popen`'s trees."""
        if host.netns:
            r = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True, timeout=10)
            found = {int(p) for p in r.stdout.split()}
        else:
            found = set()
            for proc in [host.node, *host.started]:
                if proc is not None and proc.poll() is None:
                    found |= _tree(proc.pid)
        found.discard(os.getpid())
        return {p for p in found if _alive(p)}

    def processes(self, host: Host) -> list[tuple[int, str]]:
        """(pid, command line) of every process of `host`; Ray names its workers' processes
        `ray::<actor class>...` (e.g. `ray::RayTrainWorker` for a Train worker)."""
        out = []
        for pid in sorted(self.pids(host)):
            try:
                out.append((pid, " ".join(psutil.Process(pid).cmdline())))
            except psutil.Error:
                pass
        return out

    def kill(self, host: Host, timeout: float = 15.0) -> list[int]:
        """Lose `host` as a machine is lost: every process of it SIGKILLed, none told first (frozen with
        SIGSTOP, then killed, so none starts another in between). Returns the pids killed."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while pids := self.pids(host):
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for p in pids | self.pids(host):
                    with _gone_ok():
                        os.kill(p, sig)
                        killed.add(p)
            for proc in [host.node, *host.started]:  # our own children: reaped, not left as zombies
                if proc is not None:
                    with _gone_ok():
                        proc.wait(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            if time.monotonic() > deadline:
                raise TimeoutError(f"processes of {host.name} still alive after {timeout:.0f} s: {sorted(pids)}")
            time.sleep(0.05)
        return sorted(killed)

    # ------------------------------------------------------------------ teardown

    def close(self, quiet: bool = False) -> None:
        """Kill every process of every host (the nodes, what `popen` started), remove the namespaces this
        object created and its temporary folder. Problems are raised (warned while an error is in flight)."""
        problems = []
        for host in reversed(self.hosts):
            try:
                self.kill(host)
            except (OSError, subprocess.SubprocessError, TimeoutError) as e:
                problems.append(f"{host.name}: {_why(e)}")
        problems += self._remove_namespaces()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        if problems and quiet:
            warnings.warn("test hosts not fully cleaned up: " + "; ".join(problems), RuntimeWarning, stacklevel=2)
        elif problems:
            raise RuntimeError("test hosts not fully cleaned up: " + "; ".join(problems))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def _why(e: BaseException) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        return f"`{' '.join(map(str, e.cmd))}`: {(e.stderr or '').strip() or f'exit {e.returncode}'}"
    return f"{type(e).__name__}: {e}"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _tree(pid: int) -> set[int]:
    try:
        p = psutil.Process(pid)
        return {pid} | {c.pid for c in p.children(recursive=True)}
    except psutil.Error:
        return set()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _gone_ok():
    """Ignore a process that is already gone (or a wait that timed out: the caller's loop retries)."""
    return contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired)
