"""The typer app every command registers on, the shared console, error handling and options.

A command is one module of ``llmc.cli`` that decorates a function with ``@app.command()`` and
``@user_errors``; ``llmc.cli.main`` imports the module so the command is registered. Options
used by several commands are the ``Annotated`` aliases below. Heavy imports (onnx,
onnxruntime, ``llmc.compiler``...) belong inside the command functions so that ``llmc --help``
stays fast and works without optional dependencies. A group of subcommands is an
:class:`LlmcTyper` (as ``app`` is), so its help reads like the rest.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup

from llmc.errors import LlmcError
from llmc.model.shape_specs import ASSUMED_DIMS

try:  # typer >= 0.24 vendors click as typer._click; earlier versions use click itself
    from typer._click import exceptions as _usage
except ImportError:  # pragma: no cover
    from click import exceptions as _usage
_NO_ARGS = getattr(_usage, "NoArgsIsHelpError", ())  # click >= 8.2


class _PlainHelp:
    """Help that reads the same on every typer version: a flag shows no value type (typer >= 0.29
    writes ``<bool>``), the usage line names arguments in capitals (typer >= 0.27 writes
    ``{model}``); options keep their ``[default: ...]``."""

    def get_params(self, ctx):
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # a flag takes no value
        return params


def read_text_option(path: Path, flag: str) -> str:
    """The UTF-8 text of a file named by ``flag``; one line for a missing or non-text file."""
    if not path.is_file():
        raise LlmcError(f"{flag} {path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LlmcError(f"{flag} {path}: not UTF-8 text") from None


class LlmcCommand(_PlainHelp, TyperCommand):
    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper() + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class LlmcGroup(_PlainHelp, TyperGroup):
    def main(self, *args, standalone_mode: bool = True, **kwargs):
        """A usage error (unknown command or option, a value that does not parse) is one line and
        exit 1 like every user error, not click's boxed usage text and exit 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except _NO_ARGS as exc:
            typer.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            sys.exit(0)
        except _usage.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "llmc"
            typer.echo(f"error: {_one_line(exc.format_message())} (see '{command} --help')", err=True)
            sys.exit(1)
        except _usage.ClickException as exc:
            typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
            sys.exit(1)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


def _one_line(message: str) -> str:
    return " ".join(message.split())


class LlmcTyper(typer.Typer):
    """A typer app whose commands and groups render :class:`_PlainHelp` help."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("cls", LlmcGroup)
        kwargs.setdefault("rich_markup_mode", "rich")  # help text may use rich markup
        super().__init__(**kwargs)

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", LlmcCommand)
        return super().command(*args, **kwargs)


app = LlmcTyper(
    name="llmc",
    help="Compile exported ONNX transformer models into the fastest artifact that gives the same answers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def _print_version(value: bool) -> None:
    if value:
        from llmc.version import __version__

        typer.echo(f"llmc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print llmc's version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    pass


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


def check_png(plot: Path) -> None:
    """A ``--plot`` path: a .png in a directory that exists, checked before any work."""
    if plot.suffix.lower() != ".png":
        raise LlmcError(f"--plot {plot}: write a .png file")
    if not plot.parent.is_dir():
        raise LlmcError(f"--plot {plot}: directory {plot.parent} does not exist; create it first or plot elsewhere")


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
