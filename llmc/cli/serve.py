"""``llmc serve``: an artifact behind HTTP, in one process with uvicorn by default, on Ray Serve with
``--replicas``, ``--address`` or ``--emit-config`` (the same app: ``llmc.serving.app``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmc.cli.app import app, console, user_errors
from llmc.errors import LlmcError
from llmc.serving.ingress import Ingress


@app.command()
@user_errors
def serve(
    artifact: Annotated[Path, typer.Argument(help="An llmc artifact directory.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    replicas: Annotated[
        Optional[int], typer.Option(help="Serve on Ray Serve with N replicas (default: one process, uvicorn).")
    ] = None,
    threads_per_replica: Annotated[
        int, typer.Option(help="ONNX Runtime threads (on Ray Serve: CPUs and threads per replica).")
    ] = 1,
    max_batch_size: Annotated[
        int, typer.Option(help="Most requests merged into one run (/v1/infer, /v1/embeddings, /rerank, /predict).")
    ] = 8,
    batch_wait_ms: Annotated[float, typer.Option(help="Longest wait for requests being read to join a batch.")] = 5.0,
    max_queue: Annotated[
        int, typer.Option(help="Requests in flight, streams included, before 503 + Retry-After (per replica).")
    ] = 64,
    spin: Annotated[bool, typer.Option(
        "--spin/--no-spin", help="ONNX Runtime's threads spin while a run lasts, and stop when it returns "
                                 "(--no-spin: they never spin, and sleep between two operators too).")] = True,
    max_body_mb: Annotated[int, typer.Option(help="Largest request body read, in MiB (past it: 413).")] = 64,
    prefix_cache_mb: Annotated[
        int, typer.Option(help="Decoders: MiB of prompt KV blocks reused across requests (0: off).")
    ] = 256,
    result_cache: Annotated[int, typer.Option(help="Answers kept for repeated temperature-0 requests (0: off).")] = 0,
    speculative: Annotated[
        str, typer.Option(help="Decoders with --slots 1: auto decodes greedy requests with prompt-lookup drafts "
                          "where they can run (llmc generate --speculative; the same tokens); off: never.")
    ] = "auto",
    slots: Annotated[
        int, typer.Option(help="Decoders: sequences decoded together (continuous batching; 1: one at a time).")
    ] = 8,
    kv_cache_mb: Annotated[
        int, typer.Option(help="Decoders: MiB of KV cache the slots share (a slot's length: this / --slots).")
    ] = 1024,
    prefill_chunk: Annotated[
        int, typer.Option(help="Decoders: prompt tokens prefilled between two decode steps (a long prompt "
                          "does not stall the others).")
    ] = 256,
    max_tokens: Annotated[
        int, typer.Option(help="Decoders: most new tokens a request may ask for (its max_tokens; within the "
                          "context and a slot).")
    ] = 512,
    system_prompt: Annotated[
        Optional[Path], typer.Option(help="Decoders: a text file; its system message is prefilled at start and "
                                     "pinned in the prefix cache (chats starting with it skip that prefill).")
    ] = None,
    served_model_name: Annotated[
        Optional[str], typer.Option(help="The model id /v1/models lists (default: the artifact folder's name).")
    ] = None,
    address: Annotated[
        Optional[str], typer.Option(help="Serve on a running Ray cluster (ray start --head), e.g. auto.")
    ] = None,
    emit_config: Annotated[
        Optional[Path], typer.Option(help="Write the Ray Serve config YAML for `serve deploy` and exit.")
    ] = None,
    ingress: Annotated[
        Optional[Ingress], typer.Option(help="Ray Serve on this machine (--replicas N): what takes requests. proxy "
                                        "(default): Ray's HTTP proxy and router (~9 ms a request here); haproxy: Ray's "
                                        "HAProxy ingress straight to the replicas (~1 ms; its statistics and metrics "
                                        "ports listen on every interface).")
    ] = None,
) -> None:
    """Serve ARTIFACT over HTTP: /v1/models, /v1/infer, /v1/embeddings, /v1/completions,
    /v1/chat/completions (continuous batching), /embed, /rerank, /predict, /health, /metrics. One
    process (uvicorn) by default; Ray Serve with --replicas, --address or --emit-config."""
    from llmc.runtime.artifact import read_artifact
    from llmc.serving.engine import ServeSettings

    read_artifact(artifact)  # the integrity contract before anything starts
    _check({"--replicas": 1 if replicas is None else replicas, "--threads-per-replica": threads_per_replica,
            "--max-batch-size": max_batch_size, "--max-queue": max_queue, "--max-body-mb": max_body_mb,
            "--slots": slots, "--kv-cache-mb": kv_cache_mb, "--prefill-chunk": prefill_chunk,
            "--max-tokens": max_tokens}, prefix_cache_mb, result_cache, speculative)
    settings = ServeSettings(
        str(artifact.resolve()), replicas or 1, threads_per_replica, max_batch_size, batch_wait_ms, max_queue,
        prefix_cache_mb=prefix_cache_mb, result_cache=result_cache, speculative=speculative,
        model_name=served_model_name, slots=slots, kv_cache_mb=kv_cache_mb, prefill_chunk=prefill_chunk,
        system_prompt=_read_system_prompt(system_prompt), max_body_mb=max_body_mb, spinning=spin,
        max_new_tokens=max_tokens,
    )
    ingress = _ingress(ingress, replicas is not None, address is None and emit_config is None)
    if emit_config is not None:
        from llmc.serving.config import write_serve_config

        write_serve_config(emit_config, settings, host, port)
        console.print(f"Ray Serve config: {emit_config} (serve deploy {emit_config} on a cluster)")
        return
    if replicas is None and address is None:
        from llmc.serving.run import run_local

        console.print(f"loading {artifact} (the server listens once it is loaded; Ctrl-C stops)")
        run_local(settings, host, port, ready=lambda url: console.print(f"serving {artifact} at {url}"))
        return
    from llmc.serving.run import start

    start(settings, host, port, address, ingress)
    front = "" if address is not None else f", {ingress.value} ingress"
    console.print(f"serving {artifact} on Ray Serve at http://{host}:{port}{front} (Ctrl-C stops)")
    _until_interrupted()


def _check(at_least_one: dict[str, int], prefix_cache_mb: int, result_cache: int, speculative: str) -> None:
    """One line for the first flag out of its range."""
    for flag, value in at_least_one.items():
        if value < 1:
            raise LlmcError(f"{flag} must be >= 1, not {value}")
    if prefix_cache_mb < 0 or result_cache < 0:
        raise LlmcError("--prefix-cache-mb and --result-cache must be >= 0")
    if speculative not in ("auto", "off"):
        raise LlmcError(f"--speculative {speculative}: must be auto or off")


def _ingress(asked: Optional[Ingress], replicas: bool, local: bool) -> Ingress:
    """``--ingress``: it applies to the Ray instance llmc starts (``--replicas N``); whether it can
    be had there (an HAProxy to run, ``--host``) :func:`llmc.serving.run.start` checks first."""
    if asked is not None and not (replicas and local):
        where = ("without --replicas llmc serves on uvicorn" if local else
                 "a cluster's ingress is set where Ray starts (Ray's proxy by default; HAProxy with "
                 "RAY_SERVE_ENABLE_HA_PROXY=1 in the environment of `ray start`)")
        raise LlmcError(f"--ingress applies to the Ray instance llmc starts (--replicas N): {where}")
    return asked or Ingress.PROXY


def _until_interrupted() -> None:
    """Until Ctrl-C or SIGTERM (Ray Serve shut down; the process's exit handlers run)."""
    import signal

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve as ray_serve

        ray_serve.shutdown()


def _read_system_prompt(path: Optional[Path]) -> Optional[str]:
    """The text of ``--system-prompt FILE`` (None without one); one line if it cannot be read."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LlmcError(f"--system-prompt {path}: cannot read it as UTF-8 text ({exc.__class__.__name__}); "
                        "pass a text file") from None
    if not text.strip():
        raise LlmcError(f"--system-prompt {path}: the file is empty; pass a file with the system message")
    return text
