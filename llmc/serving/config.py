"""The Ray Serve config file for ``serve deploy`` on a cluster (``llmc serve --emit-config``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmc.serving.engine import ServeSettings


def serve_config(settings: ServeSettings, host: str, port: int) -> dict[str, Any]:
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{
            "name": "llmc",
            "route_prefix": "/",
            "import_path": "llmc.serving.server:app",
            "args": settings.to_args(),
            "deployments": [{
                "name": "llmc", "num_replicas": settings.replicas,
                "ray_actor_options": {"num_cpus": settings.threads_per_replica},
            }],
        }],
    }


def write_serve_config(path: Path, settings: ServeSettings, host: str, port: int) -> None:
    import yaml

    path.write_text(yaml.safe_dump(serve_config(settings, host, port), sort_keys=False))
