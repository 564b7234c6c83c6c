"""Starting ``llmc serve``'s app: in this process with uvicorn (the default; :func:`run_local`,
:class:`LocalServer`), or on Ray Serve, locally or on a cluster (:func:`start`, :func:`stop`).

On one machine (``--replicas N`` without ``--address``) the Ray instance llmc starts binds every
internal port (GCS, raylets, object manager, workers, dashboard agent, runtime-env agent) to
loopback, no dashboard: only the ``--host:--port`` HTTP proxy listens where the user said
(``--ingress haproxy``: HAProxy there, and its statistics and metrics ports on every interface,
see :mod:`llmc.serving.ingress`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from llmc.errors import LlmcError
from llmc.serving.engine import ServeSettings
from llmc.serving.ingress import Ingress, check_ingress, ingress_environment


def _app(settings: ServeSettings) -> Any:
    try:
        from llmc.serving.app import build_app

        return build_app(settings)
    except ImportError as exc:
        raise LlmcError(f"llmc serve needs FastAPI and uvicorn ({exc.name} is missing): pip install 'llmc[serve]'") from None


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound now (a port in use is one error line, before the model loads); uvicorn listens on it
    once the app's lifespan has loaded the model, so no connection is accepted before."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LlmcError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _server(app: Any) -> Any:
    try:
        import uvicorn
    except ImportError:
        raise LlmcError("llmc serve runs on uvicorn: pip install 'llmc[serve]'") from None
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))


class _QuietFailedLoad(logging.Filter):
    """Drops uvicorn's traceback of a model that failed to load: :func:`run_local` says it in one line."""

    def __init__(self, served: Any) -> None:
        super().__init__()
        self.served = served

    def filter(self, record: logging.LogRecord) -> bool:
        return self.served.error is None


def run_local(settings: ServeSettings, host: str, port: int, ready: Any = None) -> None:
    """Serve in this process until interrupted (Ctrl-C); ``ready(url)`` once listening."""
    sock = _listening_socket(host, port)
    app = _app(settings)
    server = _server(app)
    quiet = _QuietFailedLoad(app.state.llmc)
    logging.getLogger("uvicorn.error").addFilter(quiet)
    if ready is not None:
        threading.Thread(target=_when_started, args=(server, ready, _url(host, sock)), daemon=True).start()
    try:
        server.run(sockets=[sock])
    except SystemExit:
        pass
    finally:
        logging.getLogger("uvicorn.error").removeFilter(quiet)
        sock.close()
    if app.state.llmc.error is not None:
        raise LlmcError(f"{settings.artifact}: the model did not load: {app.state.llmc.error}")


def _run(server: Any, sock: socket.socket) -> None:
    with contextlib.suppress(SystemExit):  # uvicorn's exit when the model did not load: start() says why
        server.run(sockets=[sock])


def _when_started(server: Any, ready: Any, url: str) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if server.started:
        ready(url)


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class LocalServer:
    """The app on uvicorn in a thread of this process (tests, benchmarks): :meth:`start` returns
    its URL once the model is loaded and it listens; :meth:`stop` ends it."""

    def __init__(self, settings: ServeSettings, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings, self.host, self.port = settings, host, port
        self.app: Any = None
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def start(self, timeout_s: float = 300.0) -> str:
        sock = _listening_socket(self.host, self.port)
        self.app = _app(self.settings)
        self.server = _server(self.app)
        self.thread = threading.Thread(target=_run, args=(self.server, sock), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                error = self.app.state.llmc.error
                raise LlmcError(f"{self.settings.artifact}: the server did not start: {error or 'timed out'}")
            time.sleep(0.01)
        return _url(self.host, sock)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(30)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()


def start(
    settings: ServeSettings, host: str, port: int, address: str | None = None, ingress: Ingress = Ingress.PROXY,
) -> Any:
    """Run the app on Ray Serve at ``host:port`` behind ``ingress``; returns its deployment handle."""
    check_ingress(ingress, local=address is None, host=host)
    try:
        from ray import serve
    except ImportError:
        raise LlmcError("llmc serve --replicas/--address runs on Ray Serve: pip install 'ray[serve]'") from None
    from llmc.serving.server import app

    init_ray(address, ingress_environment(ingress) if address is None else None)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app(settings.to_args()), name="llmc", route_prefix="/", blocking=False)


def init_ray(address: str | None, environment: dict[str, str] | None = None) -> None:
    """Connect to the cluster at ``address``, or start a local Ray bound to loopback whose
    processes also get ``environment``; nothing if Ray is already initialized in this process
    (then ``environment`` cannot apply: an error if it names anything)."""
    import ray

    if ray.is_initialized():
        if environment:
            raise LlmcError("Ray is already running in this process: its ingress cannot change; ray.shutdown() first")
        return
    if address is None:
        with _loopback_ray(environment or {}):
            ray.init(**ray_init_args(None))
    else:
        ray.init(**ray_init_args(address))


# Ray on Linux takes a node's address "from the perspective" of the network, even when asked for
# 127.0.0.1 (``services.resolve_ip_for_localhost``), and its processes then listen on every
# interface. With this variable off (what Ray does on macOS/Windows), the node address is
# loopback, and the GCS, raylet, object manager, workers and agents bind to it.
_RAY_CLUSTER_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"


def ray_init_args(address: str | None) -> dict[str, Any]:
    """``ray.init``'s arguments: on a cluster (``address``) its own; on one machine a new local
    instance ("local": never a cluster that ``RAY_ADDRESS`` or ``ray start`` left running), its
    node on loopback, no dashboard (and its host loopback, should one start)."""
    args: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False,
                            "configure_logging": False}
    if address is None:
        args.update(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK)
    return args


@contextlib.contextmanager
def _loopback_ray(environment: dict[str, str]) -> Any:
    """Ray's "single machine" node address while ``ray.init`` starts its processes: the variable
    for the processes it starts (they inherit this environment, ``environment`` too), the
    constant for this one."""
    from ray._private import ray_constants

    variables = {_RAY_CLUSTER_VAR: "0", **environment}
    before_env, before_const = {name: os.environ.get(name) for name in variables}, ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(variables)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_const
        for name, value in before_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def stop() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
