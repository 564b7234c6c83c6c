"""``llmc triton``: write an artifact as a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmc.cli.app import app, console, user_errors


@app.command()
@user_errors
def triton(
    artifact: Annotated[Path, typer.Argument(help="An llmc artifact directory.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The model repository (created if missing; a symlink is refused).")],
    name: Annotated[Optional[str], typer.Option("--name", help="Model name (default: the artifact's folder).")] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="Triton's max_batch_size (0: no batching).")] = 8,
    instances: Annotated[int, typer.Option("--instances", help="Model instances (instance_group count).")] = 1,
    threads: Annotated[
        Optional[int], typer.Option("--threads", help="ONNX Runtime intra-op threads per instance (default: the artifact's).")
    ] = None,
    batch_wait_us: Annotated[
        int, typer.Option("--batch-wait-us", help="dynamic_batching max_queue_delay_microseconds.")
    ] = 1000,
) -> None:
    """Write REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx (or model.plan) for Triton."""
    from llmc.serving.triton import TritonOptions, write_repository

    options = TritonOptions(name, max_batch_size, instances, threads, batch_wait_us)
    target = write_repository(artifact, output, options)
    console.print(f"Triton model repository: {target} (config.pbtxt, 1/); serve it with tritonserver --model-repository {output}")
