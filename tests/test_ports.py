"""Ports gm picks for its own servers and Ray nodes: distinct, free, and never one a Ray node takes by default."""

from __future__ import annotations

import socket

import pytest

from gm.training.cluster import RAY_DEFAULT_PORTS, free_port, free_ports


def test_the_avoided_ports_are_the_ones_a_ray_node_takes_by_default():
    from ray._private import ray_constants
    from ray._private.parameter import RayParams

    defaults = RayParams()
    taken = {ray_constants.DEFAULT_PORT, defaults.dashboard_port, defaults.dashboard_agent_listen_port}
    assert taken <= RAY_DEFAULT_PORTS


def test_a_dashboard_port_on_the_agents_default_is_what_ray_refuses():
    """The failure the avoidance prevents, as Ray raises it: a dashboard port picked by the kernel that is
    the dashboard agent's default port; any port free_ports picks passes the same check."""
    from ray._private.parameter import RayParams

    agent = RayParams().dashboard_agent_listen_port
    with pytest.raises(ValueError, match="same port is not used by multiple components"):
        RayParams(dashboard_port=agent).update_pre_selected_port()
    for port in free_ports(20):
        RayParams(dashboard_port=port).update_pre_selected_port()


def test_free_ports_are_distinct_bindable_and_outside_the_avoided_set():
    ports = free_ports(40)
    assert len(set(ports)) == 40
    assert not set(ports) & RAY_DEFAULT_PORTS
    for port in ports + [free_port()]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_an_offered_ray_port_is_skipped_and_every_socket_is_closed(monkeypatch):
    """The kernel's offers, scripted: the agent's default first, then two others."""
    offers, made = iter([52365, 40001, 40002]), []

    class Offered:
        def __init__(self):
            self.port, self.closed = None, False
            made.append(self)

        def bind(self, address):
            self.port = next(offers)

        def getsockname(self):
            return ("127.0.0.1", self.port)

        def close(self):
            self.closed = True

    monkeypatch.setattr(socket, "socket", Offered)
    assert free_ports(2) == [40001, 40002]
    assert len(made) == 3 and all(s.closed for s in made)
