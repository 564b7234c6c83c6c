"""``llmc passes``: the pass registry, default pipelines and fusion families."""

from __future__ import annotations

from llmc.cli.app import app, user_errors
from llmc.cli.render import print_passes


@app.command("passes")
@user_errors
def list_passes() -> None:
    """List the registered passes and the default pipeline of each target."""
    from llmc.compiler.registry import TARGETS
    from llmc.passes.registry import all_passes

    # The registry lists passes in import order: take it before the fusion families are imported.
    passes = all_passes()
    from llmc.passes.fusion.families import FAMILIES

    print_passes(passes, TARGETS, FAMILIES)
