"""The cse (and custom-domain nodes) pass on small hand-built models: structure, numerics, near misses."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from llmc.runtime.ort import run_model
from tests.passes.pass_helpers import (
    apply,
    assert_outputs_equal,
    build,
    check_numerics,
    const,
    node,
    op_types,
    random_feeds,
    snapshot,
    vi,
)


def cse_model() -> ir.Model:
    """Two identical Softmax(x, axis=1), two identical small constants c1, c2."""
    c = np.arange(3, dtype=np.float32)
    return build(
        [
            node("Softmax", ["x"], ["a"], axis=1),
            node("Softmax", ["x"], ["b"], axis=1),
            node("Add", ["a", "c1"], ["a1"]),
            node("Mul", ["b", "c2"], ["b1"]),
            node("Add", ["a1", "b1"], ["y"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", None)],
        [const("c1", c), const("c2", c.copy())],
    )


def test_cse_merges_identical_nodes_and_constants():
    model = cse_model()
    result, stats = apply("cse", model)
    assert result.modified
    assert stats == {"nodes": 1, "initializers": 1}
    assert op_types(model) == ["Softmax", "Add", "Mul", "Add"]
    assert len(model.graph.initializers) == 1
    add, mul = list(model.graph)[1:3]
    assert add.inputs[0] is mul.inputs[0]  # both read the one Softmax
    assert add.inputs[1] is mul.inputs[1]  # both read the one constant


def test_cse_outputs_unchanged():
    stats = check_numerics("cse", cse_model(), exact=True)
    assert stats == {"nodes": 1, "initializers": 1}


def test_cse_merge_of_two_graph_outputs_keeps_names_and_reports_the_change():
    model = build(
        [node("Relu", ["x"], ["a"]), node("Relu", ["x"], ["b"])],
        [vi("x", [2, 3])],
        [vi("a", None), vi("b", None)],
    )
    check_numerics("cse", model, exact=True)  # asserts modified
    assert [v.name for v in model.graph.outputs] == ["a", "b"]
    assert op_types(model).count("Relu") == 1


def test_cse_near_miss_random_uniform_not_merged():
    model = build(
        [
            node("RandomUniform", [], ["r1"], shape=[3], seed=1.0),
            node("RandomUniform", [], ["r2"], shape=[3], seed=1.0),
            node("Sub", ["r1", "r2"], ["y"]),
        ],
        [],
        [vi("y", None)],
    )
    text = snapshot(model)
    result, stats = apply("cse", model)
    assert not result.modified and stats == {}
    assert snapshot(model) == text


def test_cse_near_miss_different_attributes_not_merged():
    model = build(
        [
            node("Softmax", ["x"], ["a"], axis=0),
            node("Softmax", ["x"], ["b"], axis=1),
            node("Add", ["a", "b"], ["y"]),
        ],
        [vi("x", [3, 3])],
        [vi("y", None)],
    )
    feeds = random_feeds(model)
    before = run_model(model, feeds)
    result, stats = apply("cse", model)
    assert not result.modified and stats == {}
    assert op_types(model) == ["Softmax", "Softmax", "Add"]
    assert_outputs_equal(before, run_model(model, feeds), exact=True)


def test_cse_near_miss_constant_that_is_a_graph_input_not_merged():
    c = np.arange(3, dtype=np.float32)
    model = build(
        [node("Add", ["x", "c1"], ["a"]), node("Mul", ["a", "c2"], ["y"])],
        [vi("x", [3]), vi("c1", [3])],
        [vi("y", None)],
        [const("c1", c), const("c2", c.copy())],
    )
    result, _ = apply("cse", model)
    assert not result.modified
    assert sorted(model.graph.initializers) == ["c1", "c2"]


def test_cse_never_merges_custom_domain_nodes():
    nodes = [
        node("Foo", ["x"], ["a"], domain="my.custom"),
        node("Foo", ["x"], ["b"], domain="my.custom"),
        node("Add", ["a", "b"], ["y"]),
    ]
    model = build(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], extra_opsets=[("my.custom", 1)])
    result, _ = apply("cse", model)
    assert not result.modified
    assert op_types(model).count("Foo") == 2
    assert all("_llmc_cse_guard" not in n.attributes for n in model.graph)
    # Identical ONNX-domain nodes in the same position are merged (the guard is selective).
    nodes[0:2] = [node("Relu", ["x"], ["a"]), node("Relu", ["x"], ["b"])]
    model = build(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])])
    result, _ = apply("cse", model)
    assert result.modified and op_types(model).count("Relu") == 1
