"""The typer app every command registers on, the shared console, error handling and options.

A command is one module of ``llmc.cli`` that decorates a function with ``@app.command()`` and
``@user_errors``; ``llmc.cli.main`` imports the module so the command is registered. Options
used by several commands are the ``Annotated`` aliases below. Heavy imports (onnx,
onnxruntime, ``llmc.compiler``...) belong inside the command functions so that ``llmc --help``
stays fast and works without optional dependencies.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from llmc.errors import LlmcError

app = typer.Typer(
    name="llmc",
    help="Compile exported ONNX transformer models into the fastest artifact that gives the same answers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def user_errors(fn):
    """Print LlmcError as one line and exit 1; let bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LlmcError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


# The effective default of --shape when it is not given (llmc.model.feeds.resolve_shapes).
ASSUMED_DIMS = "symbolic dims assumed: 1 on axis 0, 128 elsewhere"

ShapeOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--shape",
        help="Concrete input shape NAME=DxD (repeatable), e.g. input_ids=1x128.",
        show_default=ASSUMED_DIMS,
    ),
]
InputsOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--inputs",
        help="An .npz file of inputs to use instead of seeded ones.",
        show_default="inputs generated from --seed",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the generated inputs.")]
ThreadsOpt = Annotated[
    int, typer.Option("--threads", help="ONNX Runtime intra-op threads (0: ONNX Runtime's default).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
