"""``llmc serve`` on Ray Serve: the app of ``llmc.serving.app``, the same routes, in Ray replicas.

Used for ``--replicas N`` (copies on one machine, each with ``--threads-per-replica`` CPUs),
``--address`` (a running Ray cluster) and ``serve deploy`` of the ``--emit-config`` YAML, whose
``import_path`` is :func:`app`. Ray Serve runs the replicas and its HTTP proxy; each replica
serves the FastAPI app through ``serve.ingress``, and the app's lifespan loads that replica's
:class:`~llmc.serving.engine.Engine` (its batchers included) before Ray routes a request to it.
No route is declared here: a route added to the app is served by both engines.
"""

from __future__ import annotations

from typing import Any

from llmc.serving.engine import Engine, ServeSettings

__all__ = ["Engine", "ServeSettings", "app"]


def _deployment(settings: ServeSettings) -> Any:
    from ray import serve

    from llmc.serving.app import build_app

    @serve.deployment(
        name="llmc", num_replicas=settings.replicas, ray_actor_options={"num_cpus": settings.threads_per_replica},
        max_ongoing_requests=settings.max_queue + settings.max_batch_size,
    )
    @serve.ingress(build_app(settings))
    class LlmcDeployment:
        """A replica of the app: the app's lifespan loads its engine when Ray starts it."""

    return LlmcDeployment.bind()


def app(args: dict[str, Any]) -> Any:
    """The Ray Serve application builder (``import_path: llmc.serving.server:app``)."""
    return _deployment(ServeSettings(**args))
