"""Scenarios on Ray nodes that are separate hosts (gm/chaos/hosts.py): training across a network, and the
loss of the node that holds a Train worker.

Both build a workspace whose `ray.address` is the head host's GCS and whose `ray.storage_path` is a folder
every host reads (the hosts share this machine's files, as nodes share NFS), and run the real train
stage on the head host (a driver must run on a Ray node). Where the hosts could not be namespaces, they
are loopback processes and each row says so in `happened` and in `details["hosts"]`.

What a scenario checks is read from outside the stage: where Train workers ran from the hosts' own
processes (Ray titles them `ray::RayTrainWorker`), each rank's node from metrics.json where the stage
records it (`nodes` of seed 0's row, mapped to addresses by the cluster), checkpoints from the storage
folder, and the registry and runs from the workspace's MLflow store.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from pathlib import Path

from gm.chaos import (GAN_RING8, Row, last_line, recorded_step, registry_faults, runs, scenario, stage_cmd, stage_env,
                      tiny_params, versions, workspace)
from gm.chaos.hosts import Host, Hosts
from gm.core.layout import Layout
from gm.tracking import registered_name
from gm.training.driver import RUN_RECORD

EXPERIMENT = "gan-ring8"
RUN = f"train-{EXPERIMENT}-seed0"  # the Ray run of seed 0 (gm/stages/train.py, seed_runs)
MODEL = registered_name("gan", "ring8")
TRAIN_WORKER = "ray::RayTrainWorker"  # the process title Ray gives a Ray Train worker actor

# A driver on the head host that takes every CPU of the head (an actor pinned there), so that the Train
# worker can only be placed on another host; a line on its stdin frees them (the actor killed).
HOLDER = """
import sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
node = ray.get_runtime_context().get_node_id()
cpus = next(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == node)
here = NodeAffinitySchedulingStrategy(node, soft=False)

@ray.remote
class Holder:
    def ready(self):
        return True

holder = Holder.options(num_cpus=cpus, scheduling_strategy=here).remote()
ray.get(holder.ready.remote(), timeout=120)
print("held", cpus, flush=True)
sys.stdin.readline()
ray.kill(holder)
print("released", flush=True)
"""


def experiment_params(address: str, storage: Path, num_workers: int, steps: int, eval_every: int,
                      model: dict | None = None, batch_size: int = 64) -> dict:
    """One GAN on ring8 (seed 0) trained on the cluster at `address`, checkpoints in `storage`."""
    return tiny_params({EXPERIMENT: {**GAN_RING8, "model": model or GAN_RING8["model"]}},
                       ray={"address": address, "storage_path": str(storage)},
                       train={"steps": steps, "batch_size": batch_size, "eval_every": eval_every, "val_samples": 300,
                              "seeds": 1, "max_failures": 2, "scaling": {"num_workers": num_workers}})


# ------------------------------------------------------------------------------ watching a run


def train_workers(hosts: Hosts) -> dict[str, list[int]]:
    """{host name: pids of its Train worker processes} for the hosts that have any now."""
    out = {}
    for host in hosts.hosts:
        pids = [pid for pid, cmd in hosts.processes(host) if cmd.startswith(TRAIN_WORKER)]
        if pids:
            out[host.name] = pids
    return out


def watch(hosts: Hosts, proc: subprocess.Popen, seen: dict[str, set[int]], timeout: float,
          until=lambda: False, waiting_for: str = "the stage to end") -> None:
    """Poll (bounded) until `until()` or the process ends, adding to `seen` every host's Train workers."""
    deadline = time.monotonic() + timeout
    while not until():
        for name, pids in train_workers(hosts).items():
            seen.setdefault(name, set()).update(pids)
        if proc.poll() is not None:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {waiting_for} within {timeout:.0f} s")
        time.sleep(0.1)


def wait_for(proc: subprocess.Popen, until, timeout: float, waiting_for: str, interval: float = 0.02) -> None:
    """Poll `until()` closely (bounded) while `proc` runs: for a moment that must not be missed."""
    deadline = time.monotonic() + timeout
    while not until() and proc.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {waiting_for} within {timeout:.0f} s")
        time.sleep(interval)


def complete_checkpoints(run: Path) -> list[int]:
    """Steps of the run's checkpoints whose files are all on storage (a worker killed while uploading one
    leaves a partial folder)."""
    needed = ("model", "state.pt", "metrics.json", "history.json")
    return sorted(int(p.name.split("_")[1]) for p in run.glob("checkpoint_*")
                  if p.is_dir() and all((p / f).exists() for f in needed))


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The next line of `proc`'s stdout, waiting at most `timeout` seconds."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no line from {proc.args[-3:]} within {timeout:.0f} s")
    return proc.stdout.readline().strip()


# ------------------------------------------------------------------------------ what the stage left


def store_facts(root: Path) -> dict:
    """From the workspace's MLflow store (MlflowClient on its sqlite file): seed 0's registered versions
    missing or doubled, registry problems (an undecided version, a dangling champion), runs left RUNNING."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    lost, duplicated, problems = registry_faults(uri, MODEL, {0: 1})
    running = [r.info.run_name for r in runs(uri, "gm-chaos") if r.info.status == "RUNNING"]
    return {"versions": [int(v.version) for v in versions(uri, MODEL)], "versions_lost": lost,
            "versions_duplicated": duplicated, "registry_problems": problems, "running_runs": running}


def stage_facts(root: Path, storage: Path, nodes, steps: int, eval_every: int) -> dict:
    """What the stage wrote: seed 0's row of metrics.json, its curve, its run record, the store, and the
    address of each rank's node (among the cluster's, `nodes()`) where metrics.json names them (else None)."""
    out = Layout(root).train(EXPERIMENT)
    metrics = json.loads(out.metrics.read_text()) if out.metrics.is_file() else {}
    seed = (metrics.get("per_seed") or {}).get("0", {})
    history = json.loads(out.history.read_text()) if out.history.is_file() else []
    record_path = storage / RUN / RUN_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    rank_addresses = None
    if seed.get("nodes"):
        where = {n["id"]: n["address"] for n in nodes()}
        rank_addresses = [where.get(node, node) for node in seed["nodes"]]
    curve = [int(h["step"]) for h in history]
    expected = list(range(eval_every, steps + 1, eval_every))
    return {"seed": seed, "curve": curve, "curve_missing": sorted(set(expected) - set(curve)),
            "curve_repeated": len(curve) - len(set(curve)), "run_completed": bool(record.get("completed")),
            "rank_addresses": rank_addresses, **store_facts(root)}


def row_counts(facts: dict) -> tuple[int, int]:
    """(lost, duplicated): seed 0's registered versions short of or beyond one, and its curve's points."""
    return (facts["versions_lost"] + len(facts["curve_missing"]),
            facts["versions_duplicated"] + facts["curve_repeated"])


# ------------------------------------------------------------------------------ the scenarios


@scenario("network")
def network(workdir: Path) -> list[Row]:
    """Two Train workers on two 1-CPU hosts: the ranks' gradients cross the link between the hosts'
    addresses; the stage finishes, registers its model and leaves no run open."""
    t0 = time.perf_counter()
    steps, eval_every = 300, 100
    workdir.mkdir(parents=True, exist_ok=True)
    with Hosts(2) as hosts:
        head, worker = hosts[0], hosts[1]
        address = hosts.start_ray(cpus=1, wait=False)
        storage = workdir / "shared" / "ray"
        root = workspace(workdir / "ws", experiment_params(address, storage, 2, steps, eval_every))
        hosts.wait_ray()
        seen: dict[str, set[int]] = {}
        proc = run_on(hosts, head, root, workdir / "train")
        watch(hosts, proc, seen, timeout=600)
        rc = proc.wait(timeout=60)
        facts = stage_facts(root, storage, hosts.nodes, steps, eval_every)
    worker_hosts = addresses(hosts, seen)
    ranks = facts["rank_addresses"]
    both = sorted([head.address, worker.address])
    lost, duplicated = row_counts(facts)
    where = f"ranks on {', '.join(ranks)}" if ranks is not None else f"Train workers on {', '.join(worker_hosts)}"
    outcome = (f"finished {facts['curve'][-1] if facts['curve'] else 0}/{steps}, registered "
               f"v{facts['seed'].get('registered_version')}" if rc == 0 else f"exit {rc}: {tail(workdir / 'train')}")
    return [Row(fault="training across two hosts (one rank per node)",
                happened=f"2 ranks across {head.address} <-> {worker.address}: {where}; {outcome}{note(hosts)}",
                survived=(rc == 0 and worker_hosts == both and (ranks is None or sorted(ranks) == both)
                          and facts["run_completed"] and not facts["running_runs"] and not facts["registry_problems"]),
                lost=lost, duplicated=duplicated, seconds=time.perf_counter() - t0,
                details={**host_details(hosts), "exit": rc, "train_worker_hosts": worker_hosts,
                         "workspace": str(root), **facts})]


@scenario("node")
def node(workdir: Path) -> list[Row]:
    """The host holding the run's only Train worker is lost mid-run (every process SIGKILLed): Train
    restarts the worker on the remaining host from the latest checkpoint (train.max_failures), and the
    stage finishes with one registered version and no run left open."""
    t0 = time.perf_counter()
    timeline = {}

    def mark(what: str) -> None:
        timeline[what] = round(time.perf_counter() - t0, 1)

    # segments of ~1 s (60 steps of a wider GAN on larger batches, then validation): room to kill the worker's
    # host between one checkpoint's registration and the next one's upload
    steps, eval_every, model, batch_size = 300, 60, {"z_dim": 2, "hidden": 128, "depth": 3}, 256
    workdir.mkdir(parents=True, exist_ok=True)
    with Hosts(2) as hosts:
        head, worker = hosts[0], hosts[1]
        address = hosts.start_ray(cpus=1, wait=False)
        storage = workdir / "shared" / "ray"
        run = storage / RUN
        root = workspace(workdir / "ws", experiment_params(address, storage, 1, steps, eval_every, model, batch_size))
        mark("workspace")
        hosts.wait_ray()
        mark("cluster up")
        # the head's CPU taken, the Train worker can only be placed on the other host
        holder = hosts.popen(head, [sys.executable, "-c", HOLDER, address], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        if not read_line(holder, 180).startswith("held"):
            raise RuntimeError(f"the holder on {head.name} did not take the head's CPUs")
        mark("head held")
        proc = run_on(hosts, head, root, workdir / "train")
        before: dict[str, set[int]] = {}
        watch(hosts, proc, before, timeout=300, until=lambda: bool(before), waiting_for="Train worker")
        mark("worker placed")
        holder.stdin.write("release\n")
        holder.stdin.flush()
        if read_line(holder, 120) != "released":
            raise RuntimeError(f"the holder on {head.name} did not release the head's CPUs")
        holder.wait(timeout=60)
        mark("head released")
        # killed the moment Train registers a checkpoint: the worker has just begun its next segment, so
        # nothing past that checkpoint is on storage yet
        wait_for(proc, lambda: recorded_step(run.parent, run.name) > 0, 300, "registered checkpoint")
        mark("checkpoint registered")
        placed_on = addresses(hosts, before)
        killed = hosts.kill(worker) if proc.poll() is None and placed_on == [worker.address] else []
        mark("host killed")
        killed_at = time.monotonic()
        at_kill = max(complete_checkpoints(run) + [recorded_step(run.parent, run.name)])
        after: dict[str, set[int]] = {}
        watch(hosts, proc, after, timeout=300, until=lambda: bool(after), waiting_for="Train worker after the kill")
        restarted_after = time.monotonic() - killed_at if after else None
        mark("worker restarted")
        watch(hosts, proc, after, timeout=600)
        rc = proc.wait(timeout=60)
        mark("stage ended")
        cluster = hosts.nodes()
        facts = stage_facts(root, storage, lambda: cluster, steps, eval_every)
    dead = [n["address"] for n in cluster if not n["alive"]]
    resumed_on = addresses(hosts, after)
    ranks = facts["rank_addresses"]
    resumed = facts["seed"].get("resumed_from_step")
    finished = facts["curve"][-1] if facts["curve"] else 0
    lost, duplicated = row_counts(facts)
    if placed_on != [worker.address]:
        happened = (f"the Train worker went to {', '.join(placed_on) or 'no host'}, not to the worker host "
                    f"{worker.address}; nothing killed")
    elif not killed:
        happened = f"the run ended before its worker's host could be killed (exit {rc})"
    elif rc != 0:
        happened = f"worker host {worker.address} killed at checkpoint {at_kill}; exit {rc}: {tail(workdir / 'train')}"
    else:
        happened = (f"worker host {worker.address} killed at checkpoint {at_kill}; resumed on "
                    f"{', '.join(ranks if ranks is not None else resumed_on)} from step {resumed}; "
                    f"finished {finished}/{steps}")
    survived = (bool(killed) and placed_on == [worker.address] and rc == 0 and finished == steps
                and resumed is not None and resumed_on == [head.address] and ranks in (None, [head.address])
                and facts["run_completed"] and not facts["running_runs"] and not facts["registry_problems"])
    return [Row(fault="the node holding the Train worker is lost (its host SIGKILLed)",
                happened=happened + note(hosts), survived=survived,
                steps_lost=at_kill - resumed if resumed is not None else at_kill,
                lost=lost, duplicated=duplicated, seconds=time.perf_counter() - t0,
                details={**host_details(hosts), "exit": rc, "worker_placed_on": placed_on,
                         "killed_pids": len(killed), "checkpoint_at_kill": at_kill, "resumed_from_step": resumed,
                         "resumed_on": resumed_on, "restarted_seconds_after_kill": restarted_after,
                         "dead_nodes": dead, "timeline": timeline, "workspace": str(root), **facts})]


# ------------------------------------------------------------------------------ helpers


def run_on(hosts: Hosts, host: Host, root: Path, log: Path) -> subprocess.Popen:
    """The train stage started on `host` (in the background), its output in log.out and log.err."""
    env = stage_env(root, **hosts.env)
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return hosts.popen(host, stage_cmd("train", EXPERIMENT), env=env, cwd=root, stdout=out, stderr=err)


def addresses(hosts: Hosts, seen: dict[str, set[int]]) -> list[str]:
    """The addresses of the hosts named in `seen`, sorted."""
    return sorted(h.address for h in hosts.hosts if h.name in seen)


def host_details(hosts: Hosts) -> dict:
    return {"hosts": hosts.mode, "isolated": hosts.isolated, "fallback_reason": hosts.fallback_reason,
            "addresses": [h.address for h in hosts.hosts]}


def note(hosts: Hosts) -> str:
    """What a row must say when its hosts were not separate network namespaces."""
    return "" if hosts.isolated else f" [LOOPBACK, not a network: {hosts.fallback_reason}]"


def tail(log: Path) -> str:
    """The stage's last words: the last line of its stderr (where `error: ...` goes), else of its stdout."""
    for suffix in (".err", ".out"):
        p = log.with_suffix(suffix)
        if p.is_file() and (line := last_line(p.read_text(errors="replace"))):
            return line
    return "(no output)"
