"""``--shape NAME=DxD`` specs as the command line gives them (light: no IR imports)."""

from __future__ import annotations

import re

from llmc.errors import LlmcError

# The effective default of --shape when it is not given (llmc.model.feeds.resolve_shapes).
ASSUMED_DIMS = "symbolic dims assumed: 1 on axis 0, 128 elsewhere"

_SPEC = re.compile(r"^\s*([^=\s]+)\s*=\s*(\d+(?:\s*[x,]\s*\d+)*|scalar)\s*$")


def parse_shape_specs(specs: list[str] | tuple[str, ...] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``["input_ids=1x128", ...]``; ``name=scalar`` is a 0-d input."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs or ():
        m = _SPEC.match(spec)
        if not m:
            raise LlmcError(f"bad shape '{spec}': write NAME=DxDx... such as input_ids=1x128")
        name, dims = m.groups()
        shapes[name] = () if dims == "scalar" else tuple(int(d) for d in re.split(r"[x,]", dims))
    return shapes


def parse_shape_sets(specs: list[str] | tuple[str, ...] | None) -> list[dict[str, tuple[int, ...]]]:
    """Several shape sets from one ``--shape`` list: naming an input again starts a new set.

    ``["input_ids=1x128", "input_ids=8x512"]`` is two sets; inputs not named in a set are
    resolved from it (shared symbols) or assumed. No specs: one empty set.
    """
    sets: list[dict[str, tuple[int, ...]]] = [{}]
    for spec in specs or ():
        ((name, dims),) = parse_shape_specs([spec]).items()
        if name in sets[-1]:
            sets.append({})
        sets[-1][name] = dims
    return sets
