"""Starting the Ray Serve application (locally or on a cluster) and stopping it."""

from __future__ import annotations

from typing import Any

from llmc.errors import LlmcError
from llmc.serving.server import ServeSettings, app


def start(settings: ServeSettings, host: str, port: int, address: str | None = None) -> Any:
    """Run the application on Ray Serve at ``host:port``; returns its deployment handle."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise LlmcError("llmc serve runs on Ray Serve: pip install 'ray[serve]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app(settings.to_args()), name="llmc", route_prefix="/", blocking=False)


def stop() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
