"""Ray nodes as separate hosts (gm/chaos/hosts.py): training across a network, and a lost node survived.

Each scenario of gm/chaos/nodes.py runs on two hosts of its own (network namespaces joined by a veth
pair; loopback processes where namespaces are refused, which the tests then say in a warning and in
the report's properties) and returns its row; these tests assert on the row and on the facts behind it,
reading the workspace's MLflow store themselves. The lighter two-node test, on Ray's cluster_utils
within one process, is tests/test_ray.py."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest

from gm.chaos import nodes
from gm.chaos.hosts import Hosts

pytestmark = pytest.mark.integration


def say_how_hosts_ran(details: dict, record_property) -> None:
    """Hosts that fell back to loopback are not a network: the test says so, visibly."""
    record_property("hosts", details["hosts"])
    if not details["isolated"]:
        warnings.warn(f"hosts ran as loopback processes, not separate network namespaces: "
                      f"{details['fallback_reason']}", RuntimeWarning)


def store(details: dict) -> tuple[list, list]:
    """(seed 0's registered versions, the runs left RUNNING) in the scenario workspace's store."""
    import mlflow

    uri = f"sqlite:///{Path(details['workspace']) / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    seed0 = [v for v in client.search_model_versions(f"name = '{nodes.MODEL}'") if v.tags.get("gm.seed") == "0"]
    exp = client.get_experiment_by_name("gm-chaos")
    running = [r for r in client.search_runs([exp.experiment_id], max_results=1000) if r.info.status == "RUNNING"]
    return seed0, running


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_hosts_are_namespaces_or_say_why_and_leave_nothing(record_property):
    with Hosts(2) as hosts:
        record_property("hosts", hosts.mode)
        names = {h.netns for h in hosts.hosts}
        assert len({h.address for h in hosts.hosts}) == 2
        if hosts.isolated:
            assert names <= netns_names()
            assert all(h.prefix == ["ip", "netns", "exec", h.netns] for h in hosts.hosts)
        else:
            assert hosts.fallback_reason and all(h.prefix == [] for h in hosts.hosts)
            warnings.warn(f"hosts fell back to loopback: {hosts.fallback_reason}", RuntimeWarning)
        folder = hosts.folder
    assert not (names - {None}) & netns_names()  # its namespaces removed, veths with them
    assert not folder.exists()


def test_training_crosses_the_network_between_two_hosts(tmp_path, record_property):
    [row] = nodes.network(tmp_path)
    d = row.details
    say_how_hosts_ran(d, record_property)
    record_property("happened", row.happened)
    assert d["exit"] == 0, row.happened
    assert row.clean, row
    # a Train worker on each host, and (where metrics.json names each rank's node) one rank per address
    assert d["train_worker_hosts"] == sorted(d["addresses"]) and len(set(d["addresses"])) == 2
    if d["rank_addresses"] is not None:
        assert sorted(d["rank_addresses"]) == sorted(d["addresses"])
    assert d["curve"] == [100, 200, 300]
    assert d["run_completed"]  # gm-run.json: the finished run trains afresh next time
    seed0, running = store(d)
    assert len(seed0) == 1 and not running


@pytest.mark.chaos  # a fault scenario of make chaos: the slower tier (make test-chaos)
def test_a_lost_worker_node_is_survived_from_the_latest_checkpoint(tmp_path, record_property):
    [row] = nodes.node(tmp_path)
    d = row.details
    say_how_hosts_ran(d, record_property)
    record_property("happened", row.happened)
    head, worker = d["addresses"]
    assert d["worker_placed_on"] == [worker], row.happened  # the head's CPU was held: the worker went to h1
    assert d["killed_pids"] > 0 and d["dead_nodes"] == [worker]  # the host's node was lost, and Ray saw it
    assert d["exit"] == 0, row.happened
    assert d["resumed_on"] == [head]
    if d["rank_addresses"] is not None:
        assert d["rank_addresses"] == [head]
    assert 60 <= d["checkpoint_at_kill"] < 300
    assert d["resumed_from_step"] == d["checkpoint_at_kill"]  # not step 0, and nothing a checkpoint held redone
    assert row.steps_lost == 0
    assert d["curve"] == [60, 120, 180, 240, 300]  # one curve: the lost attempt's part came with the checkpoint
    assert row.clean, row
    seed0, running = store(d)
    assert len(seed0) == 1 and not running
