"""The ``llmc`` command line."""

from llmc.cli.main import app, main

__all__ = ["app", "main"]
