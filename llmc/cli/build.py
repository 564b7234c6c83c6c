"""``llmc build``: compile a model for a target and verify it against the source.

The command's flags are made from the option table (:func:`llmc.compiler.request.table`: each
option declared once, by the general options, the targets and the precisions), grouped in help
panels as the table says; the command turns the flags' values back into the options and calls
``llmc.build`` with them, then prints the manifest (``llmc.cli.render``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmc.cli.app import app, console, user_errors
from llmc.cli.render import Progress, print_build
from llmc.compiler.request import PIPELINE, table
from llmc.spec.options import Flag, Option

ModelArg = Annotated[Path, typer.Argument(help="The ONNX model to compile.")]
OutputOpt = Annotated[
    Optional[Path],
    typer.Option("--output", "-o", help="Artifact directory.", show_default="MODEL.llmc-TARGET beside the model"),
]
ExplainFusionOpt = Annotated[
    bool,
    typer.Option(
        "--explain-fusion",
        help="List every candidate that did not fuse: family, node, closest rule, failed check.",
        rich_help_panel=PIPELINE,
    ),
]


def flag_param(flag: Flag) -> str:
    """The Python parameter name typer gives a flag: its first long name, ``--a-b/--no-a-b`` -> a_b."""
    return flag.decls[0].split("/")[0].lstrip("-").replace("-", "_")


def _parameters(options: tuple[Option, ...]) -> list[inspect.Parameter]:
    params = [
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=ModelArg),
        inspect.Parameter("output", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=OutputOpt),
    ]
    for option in options:
        for flag in option.cli_flags():
            info = typer.Option(*flag.decls, help=flag.help, rich_help_panel=option.panel, **flag.extra)
            params.append(inspect.Parameter(
                flag_param(flag), inspect.Parameter.KEYWORD_ONLY, default=flag.default,
                annotation=Annotated[flag.type, info],
            ))
        if option.name == "dump_ir_after":
            params.append(inspect.Parameter(
                "explain_fusion", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=ExplainFusionOpt
            ))
    return params


def option_values(options: tuple[Option, ...], params: dict[str, Any]) -> dict[str, Any]:
    """The build options the command line's flag values give."""
    values: dict[str, Any] = {}
    for option in options:
        flags = option.cli_flags()
        if flags:
            values.update(option.values_from_cli([params[flag_param(flag)] for flag in flags]))
    return values


def _build(model: Path, output: Path | None, explain_fusion: bool = False, **params: Any) -> None:
    """Compile MODEL for a target and verify the result against the original."""
    from llmc.compiler.build import build as build_model

    values = option_values(OPTIONS, params)
    with Progress() as progress, console.status("compiling") as status:
        artifact = build_model(
            model, output=output, log=lambda msg: status.update(msg), progress=progress.update, **values
        )
    print_build(artifact.manifest, artifact.path, explain_fusion=explain_fusion)


OPTIONS = table()
_build.__signature__ = inspect.Signature(_parameters(OPTIONS))  # type: ignore[attr-defined]
build = app.command("build")(user_errors(_build))
