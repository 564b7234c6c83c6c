"""The prune pass on small hand-built models: structure, numerics, near misses."""

from __future__ import annotations

import numpy as np
import onnx.helper as oh
import onnx_ir as ir

from tests.passes.pass_helpers import apply, build, check_numerics, const, node, op_types, snapshot, vi


def dead_code_model() -> ir.Model:
    """y = Sigmoid(Relu(x)), also output a; Neg(x) + u and Exp(x) are dead; u2 is unused."""
    return build(
        [
            node("Relu", ["x"], ["a"]),
            node("Neg", ["x"], ["dead"]),
            node("Add", ["dead", "u"], ["dead2"]),
            node("Exp", ["x"], ["dead3"]),
            node("Sigmoid", ["a"], ["y"]),
        ],
        [vi("x", [2, 3]), vi("unused", [3])],
        [vi("y", None), vi("a", None)],
        [const("u", np.ones(3, np.float32)), const("u2", np.ones(3, np.float32))],
    )


def test_prune_removes_dead_nodes_and_unused_initializers():
    model = dead_code_model()
    result, stats = apply("prune", model)
    assert result.modified
    assert op_types(model) == ["Relu", "Sigmoid"]
    assert stats == {"nodes": 3, "initializers": 2}
    assert list(model.graph.initializers) == []


def test_prune_keeps_graph_inputs_and_outputs():
    model = dead_code_model()
    apply("prune", model)
    # The unused graph input stays: the model's signature does not change.
    assert [v.name for v in model.graph.inputs] == ["x", "unused"]
    # "a" is read by Sigmoid *and* is a graph output; both producers stay.
    assert [v.name for v in model.graph.outputs] == ["y", "a"]


def test_prune_removes_unused_custom_node_opset_and_function():
    fn = oh.make_function(
        "my.fns", "Twice", ["t"], ["u"], [node("Add", ["t", "t"], ["u"])],
        opset_imports=[oh.make_opsetid("", 18)],
    )
    model = build(
        [node("Foo", ["x"], ["f"], domain="my.custom"), node("Relu", ["x"], ["y"])],
        [vi("x", [3])],
        [vi("y", None)],
        extra_opsets=[("my.custom", 1), ("my.fns", 1)],
        functions=[fn],
    )
    result, stats = apply("prune", model)
    assert result.modified
    assert op_types(model) == ["Relu"]
    # "nodes" counts the main graph and the functions: Foo plus the function's Add.
    assert stats == {"nodes": 2, "functions": 1, "opsets": 2}
    assert set(model.opset_imports) == {""}
    assert len(model.functions) == 0


def test_prune_near_miss_every_node_is_needed():
    # Relu's output is only a graph output (no node reads it): it must stay; the unused
    # graph input must stay too.
    model = build(
        [node("Relu", ["x"], ["r"]), node("Add", ["x", "w"], ["y"])],
        [vi("x", [3]), vi("unused", [3])],
        [vi("y", None), vi("r", None)],
        [const("w", np.arange(3, dtype=np.float32))],
    )
    text = snapshot(model)
    result, stats = apply("prune", model)
    assert not result.modified
    assert stats == {}
    assert snapshot(model) == text
    assert [v.name for v in model.graph.inputs] == ["x", "unused"]


def test_prune_outputs_unchanged():
    model = dead_code_model()
    stats = check_numerics("prune", model, exact=True)
    assert stats["nodes"] == 3
