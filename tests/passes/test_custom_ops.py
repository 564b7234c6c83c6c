"""The every built-in pass on ops of unknown domains pass on small hand-built models: structure, numerics, near misses."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from llmc.compiler.stages import target_passes
from llmc.passes.manager import PassManager
from tests.passes.pass_helpers import PASSES, apply, build, const, node, op_types, snapshot, vi


def custom_op_model() -> ir.Model:
    """Foo (domain my.custom) on a graph input and on a constant; both outputs are used."""
    return build(
        [
            node("Foo", ["x"], ["f"], domain="my.custom", alpha=2.0),
            node("Foo", ["w"], ["g"], domain="my.custom", alpha=3.0),
            node("Add", ["f", "g"], ["s"]),
            node("Relu", ["s"], ["y"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", None)],
        [const("w", np.ones((2, 3), np.float32))],
        extra_opsets=[("my.custom", 1)],
    )


@pytest.mark.parametrize("name", PASSES)
def test_custom_domain_node_is_opaque(name):
    model = custom_op_model()
    text = snapshot(model)
    result, stats = apply(name, model)
    assert not result.modified and stats == {}
    assert snapshot(model) == text
    foo = [n for n in model.graph if n.op_type == "Foo"]
    assert [(n.domain, n.attributes["alpha"].as_float()) for n in foo] == [("my.custom", 2.0), ("my.custom", 3.0)]


def test_custom_domain_node_survives_the_default_pipeline():
    model = custom_op_model()
    PassManager(*target_passes("ort")).run(model)
    assert op_types(model) == ["Foo", "Foo", "Add", "Relu"]
    assert "my.custom" in model.opset_imports
    assert "w" in model.graph.initializers
