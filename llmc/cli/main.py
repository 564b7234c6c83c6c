"""The ``llmc`` entry point: registers every command on the app and runs it.

Each command lives in its own module of ``llmc.cli`` and registers itself on
``llmc.cli.app.app`` when imported; a new command is a new module imported below. Every
command maps an :class:`LlmcError` to one line on stderr and exit code 1; any other exception
is a bug and keeps its traceback (``llmc.cli.app.user_errors``).
"""

from __future__ import annotations

from llmc.cli.app import app, console, user_errors

# Imported for their @app.command() registration; this order is the order of `llmc --help`.
# isort: off
from llmc.cli import export, build, inspect, passes, check, bench, generate, predict, cache, triton, serve, compress  # noqa: F401, E402
# isort: on

__all__ = ["app", "console", "main", "user_errors"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
