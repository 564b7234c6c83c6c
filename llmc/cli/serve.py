"""``llmc serve``: an artifact behind a Ray Serve HTTP endpoint (``llmc.serving.server``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmc.cli.app import app, console, user_errors
from llmc.errors import LlmcError


@app.command()
@user_errors
def serve(
    artifact: Annotated[Path, typer.Argument(help="An llmc artifact directory.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    replicas: Annotated[int, typer.Option(help="Replicas (Ray Serve deployments' num_replicas).")] = 1,
    threads_per_replica: Annotated[int, typer.Option(help="CPUs and ONNX Runtime threads per replica.")] = 1,
    max_batch_size: Annotated[int, typer.Option(help="Most requests merged into one run (/v1/infer).")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(help="Longest wait to fill a batch.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Requests in flight per replica before 503 + Retry-After.")] = 64,
    prefix_cache_mb: Annotated[
        int, typer.Option(help="Decoders: MiB of prompt KV blocks reused across requests (0: off).")
    ] = 256,
    result_cache: Annotated[int, typer.Option(help="Answers kept for repeated temperature-0 requests (0: off).")] = 0,
    speculative: Annotated[
        str, typer.Option(help="Decoders: auto decodes greedy requests with prompt-lookup drafts where they can "
                          "run (llmc generate --speculative; the same tokens); off: never.")
    ] = "auto",
    address: Annotated[Optional[str], typer.Option(help="A running Ray cluster (ray start --head); default: a local one.")] = None,
    emit_config: Annotated[
        Optional[Path], typer.Option(help="Write the Ray Serve config YAML for `serve deploy` and exit.")
    ] = None,
) -> None:
    """Serve ARTIFACT over HTTP: /v1/infer, /v1/completions, /v1/chat/completions, /health, /metrics."""
    from llmc.runtime.artifact import read_artifact
    from llmc.serving.server import ServeSettings

    read_artifact(artifact)  # the integrity contract before anything starts
    for flag, value in (("--replicas", replicas), ("--threads-per-replica", threads_per_replica),
                        ("--max-batch-size", max_batch_size), ("--max-queue", max_queue)):
        if value < 1:
            raise LlmcError(f"{flag} must be >= 1, not {value}")
    if prefix_cache_mb < 0 or result_cache < 0:
        raise LlmcError("--prefix-cache-mb and --result-cache must be >= 0")
    if speculative not in ("auto", "off"):
        raise LlmcError(f"--speculative {speculative}: must be auto or off")
    settings = ServeSettings(
        str(artifact.resolve()), replicas, threads_per_replica, max_batch_size, batch_wait_ms, max_queue,
        prefix_cache_mb=prefix_cache_mb, result_cache=result_cache, speculative=speculative,
    )
    if emit_config is not None:
        from llmc.serving.config import write_serve_config

        write_serve_config(emit_config, settings, host, port)
        console.print(f"Ray Serve config: {emit_config} (serve deploy {emit_config} on a cluster)")
        return
    from llmc.serving.run import start

    start(settings, host, port, address)
    console.print(f"serving {artifact} at http://{host}:{port} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve as ray_serve

        ray_serve.shutdown()
