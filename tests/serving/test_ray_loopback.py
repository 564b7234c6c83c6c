"""``llmc serve --replicas N`` without ``--address``: Ray's internal ports bind to loopback."""

from __future__ import annotations

import ipaddress
import os

import pytest

from llmc.serving import run

ray = pytest.importorskip("ray")


def test_single_machine_init_arguments_start_a_local_node_on_loopback():
    args = run.ray_init_args(None)
    assert args["address"] == "local"  # never a cluster RAY_ADDRESS or `ray start` left running
    assert args["_node_ip_address"] == "127.0.0.1" and args["dashboard_host"] == "127.0.0.1"
    assert args["include_dashboard"] is False


def test_a_cluster_address_is_left_to_the_cluster():
    args = run.ray_init_args("auto")
    assert args["address"] == "auto" and "_node_ip_address" not in args and "dashboard_host" not in args


def test_start_inits_ray_with_the_loopback_switch_and_restores_it(monkeypatch):
    from ray._private import ray_constants

    seen = {}

    def init(**kwargs):
        seen.update(kwargs, env=os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"),
                    const=ray_constants.ENABLE_RAY_CLUSTER)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    run.init_ray(None)
    assert seen["env"] == "0" and seen["const"] is False and seen["_node_ip_address"] == "127.0.0.1"
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ and ray_constants.ENABLE_RAY_CLUSTER is before
    seen.clear()
    run.init_ray("ray://head:10001")
    assert seen["address"] == "ray://head:10001" and seen["env"] is None


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    import psutil

    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.append((conn.laddr.ip, conn.laddr.port))
    return found


def test_a_local_ray_listens_on_loopback_only():
    """Starts a real one-CPU Ray node (about 10-15 s) and reads what its processes listen on."""
    psutil = pytest.importorskip("psutil")
    started = not ray.is_initialized()
    run.init_ray(None)
    try:
        me = psutil.Process()
        pids = {me.pid, *(p.pid for p in me.children(recursive=True))}
        sockets = _listening(pids)
        assert sockets, "no listening sockets found for Ray's processes"
        exposed = [(ip, port) for ip, port in sockets if not ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback]
        assert not exposed, f"Ray listens beyond loopback: {exposed}"
    finally:
        if started:
            ray.shutdown()
