"""The fault scenarios of `make chaos`, each asserted row by row: a train stage's driver SIGKILLed, the
tracking server down or killed, two clones on one server (corrupt files: tests/test_corrupt.py; nodes:
tests/test_hosts.py). Real stage processes, Ray, PostgreSQL and `mlflow server`; minutes each, so they form
the `chaos` tier (make test-chaos, run by CI after make test)."""

from __future__ import annotations

import pytest

from gm.chaos import table
from gm.chaos.driver import driver_killed
from gm.chaos.server import server_faults, start_server, two_clones

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def clean(rows) -> None:
    assert all(r.clean for r in rows), "\n" + table(rows) + "\n" + "\n".join(str(r.details) for r in rows)


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    t = start_server(tmp_path_factory.mktemp("chaos-server"))
    yield t
    t.stop()


def test_a_killed_driver_resumes_and_registers_each_seed_once(tmp_path):
    mid_training, mid_registration = rows = driver_killed(tmp_path)
    clean(rows)
    at_kill, resumed = mid_training.details["at_kill"], mid_training.details["resumed"]
    assert all(resumed[s] >= at_kill[s] > 0 for s in at_kill)  # from the checkpoints, never from step 0
    assert mid_training.steps_lost == 0
    # the fail point left a version without its champion decision; the rerun completed it, added none
    assert mid_registration.details["versions_at_kill"] == 1 and mid_registration.details["undecided_at_kill"] == 1
    assert mid_registration.details["killed_runs"] >= 1  # the dead attempts' runs, no longer RUNNING
    assert mid_registration.details["metric_points_lost"] == 0


def test_the_tracking_server_down_or_killed_costs_one_line_and_nothing_registered_twice(tmp_path, team):
    down, killed = rows = server_faults(tmp_path, team)
    clean(rows)
    assert down.details["exit"] == 2 and "is not answering" in down.happened
    assert "stopped answering" in killed.happened and killed.steps_lost == 0


def test_two_clones_on_one_server_lose_nothing_and_the_champion_is_the_best(tmp_path, team):
    (row,) = two_clones(tmp_path, team)
    clean([row])
    scores = row.details["scores"]
    assert len(scores) == 2 and row.details["champion"] == min(scores, key=lambda v: (scores[v], int(v)))
