"""``llmc inspect``: a model's summary, or with --memory its activation memory plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from llmc.cli.app import JsonOpt, app, check_png, console, user_errors
from llmc.cli.render import print_memory, print_summary
from llmc.errors import LlmcError
from llmc.model.shape_specs import ASSUMED_DIMS


@app.command()
@user_errors
def inspect(
    model: Annotated[Path, typer.Argument(help="An ONNX model or an artifact directory.")],
    as_json: JsonOpt = False,
    top: Annotated[int, typer.Option(help="Op types to list.")] = 25,
    memory: Annotated[
        bool,
        typer.Option(
            "--memory",
            help="Plan activation memory at --shape: arena, lower bound, no-reuse total, weights, peak "
            "node, memory-aware order, KV cache.",
        ),
    ] = False,
    shape: Annotated[
        Optional[list[str]],
        typer.Option(
            "--shape",
            help="With --memory: NAME=DxD (repeatable); naming an input again starts another shape set, "
            "e.g. --shape input_ids=1x128 --shape input_ids=8x512.",
            show_default=ASSUMED_DIMS,
        ),
    ] = None,
    alignment: Annotated[int, typer.Option(help="With --memory: arena alignment in bytes.")] = 64,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            "--plot",
            help="With --memory: draw live bytes and the arena of the first shape set to FILE.png.",
        ),
    ] = None,
) -> None:
    """Show inputs/outputs (with symbolic dims), opsets, op histogram, size and external data; --memory plans memory."""
    _check_artifact(model)
    if memory or plot is not None:
        _inspect_memory(model, shape, alignment, plot, as_json)
        return
    if shape:
        raise LlmcError("--shape is used with --memory")
    from llmc.model.summary import summarize_model

    info = summarize_model(model)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    print_summary(info, top)


def _check_artifact(path: Path) -> None:
    """An artifact directory is inspected only if its files match its manifest."""
    from llmc.runtime.artifact import MANIFEST_FILE, read_artifact

    if path.is_dir() and (path / MANIFEST_FILE).exists():
        read_artifact(path)


def _inspect_memory(path: Path, specs: list[str] | None, alignment: int, plot: Path | None, as_json: bool) -> None:
    from llmc.model.feeds import parse_shape_sets
    from llmc.model.io import load_model
    from llmc.passes.memory.planner import analyze_memory
    from llmc.runtime.artifact import MODEL_FILE
    from llmc.spec.task import task_shapes

    if alignment < 1:
        raise LlmcError(f"--alignment must be at least 1 byte, not {alignment}")
    if plot is not None:
        check_png(plot)
    model_path = path / MODEL_FILE if path.is_dir() and (path / MODEL_FILE).is_file() else path
    model = load_model(model_path)
    resolved = [task_shapes(model, given) for given in parse_shape_sets(specs)]
    analysis = analyze_memory(model, [r[0] for r in resolved], alignment=alignment, reorder=True)
    if plot is not None:
        from llmc.passes.memory.plot import plot_memory

        plot_memory(analysis, plot, model_path.name)
    report = analysis.to_dict()
    report["assumed"] = [r[1] for r in resolved]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    print_memory(analysis, [r[1] for r in resolved], model_path)
    if plot is not None:
        console.print(f"plot: {escape(str(plot))}")
