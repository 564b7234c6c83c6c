"""The fold (constant folding) pass on small hand-built models: structure, numerics, near misses."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from llmc.passes.registry import PassOptions
from tests.passes.pass_helpers import (
    apply,
    build,
    check_numerics,
    const,
    init_values,
    node,
    op_types,
    snapshot,
    vi,
)


def constant_chain_model() -> ir.Model:
    """y = x + (a + b) * b, with a, b initializers and a Constant node k: y2 = x - Neg(k)."""
    return build(
        [
            node("Add", ["a", "b"], ["c"]),
            node("Mul", ["c", "b"], ["d"]),
            node("Add", ["x", "d"], ["y"]),
            node("Constant", [], ["k"], value=const("kv", np.array([1, 2, 3], np.float32))),
            node("Neg", ["k"], ["nk"]),
            node("Sub", ["x", "nk"], ["y2"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", None), vi("y2", None)],
        [const("a", np.array([1, 2, 3], np.float32)), const("b", np.array([2, 2, 2], np.float32))],
    )


def test_fold_replaces_constant_subgraphs_by_initializers():
    model = constant_chain_model()
    result, stats = apply("fold", model)
    assert result.modified
    assert op_types(model) == ["Add", "Sub"]
    assert stats == {"Add": 1, "Mul": 1, "Constant": 1, "Neg": 1}
    values = init_values(model)
    # a and b are no longer read; only the folded results remain
    assert sorted(values) == ["d", "nk"]
    np.testing.assert_array_equal(values["d"], np.array([6, 8, 10], np.float32))
    np.testing.assert_array_equal(values["nk"], np.array([-1, -2, -3], np.float32))


def test_fold_outputs_unchanged():
    check_numerics("fold", constant_chain_model())


def _transpose_weight_model(shared: bool) -> ir.Model:
    """y = x @ W^T (Transpose of a 64x32 weight, 2048 elements); optionally z = x2 @ W too."""
    nodes = [node("Transpose", ["W"], ["wt"], perm=[1, 0]), node("MatMul", ["x", "wt"], ["y"])]
    inputs, outputs = [vi("x", [2, 32])], [vi("y", None)]
    if shared:
        nodes.append(node("MatMul", ["x2", "W"], ["z"]))
        inputs.append(vi("x2", [2, 64]))
        outputs.append(vi("z", None))
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    return build(nodes, inputs, outputs, [const("W", w)])


def test_fold_transposes_a_weight_read_only_there():
    """The counterpart of the near-miss below: an unshared weight is folded (no copy kept)."""
    model = _transpose_weight_model(shared=False)
    w = init_values(model)["W"]
    result, stats = apply("fold", model)
    assert result.modified
    assert stats == {"Transpose": 1}
    assert op_types(model) == ["MatMul"]
    values = init_values(model)
    assert list(values) == ["wt"]  # W itself is gone: still one copy of the weight
    np.testing.assert_array_equal(values["wt"], w.T)


def test_fold_near_miss_shared_large_weight_is_not_duplicated():
    model = _transpose_weight_model(shared=True)
    text = snapshot(model)
    result, stats = apply("fold", model)
    assert not result.modified
    assert stats == {}
    assert op_types(model) == ["Transpose", "MatMul", "MatMul"]
    assert list(model.graph.initializers) == ["W"]
    assert snapshot(model) == text


def test_fold_near_miss_node_reading_a_graph_input():
    model = build(
        [node("Add", ["x", "b"], ["c"]), node("Relu", ["c"], ["y"])],
        [vi("x", [3])],
        [vi("y", None)],
        [const("b", np.array([2, 2, 2], np.float32))],
    )
    text = snapshot(model)
    result, stats = apply("fold", model)
    assert not result.modified and stats == {}
    assert snapshot(model) == text


def test_fold_near_miss_input_with_default_initializer_stays_an_input():
    # "a" is a graph input with an initializer: a default the caller may override.
    model = build(
        [node("Add", ["a", "b"], ["c"]), node("Add", ["x", "c"], ["y"])],
        [vi("x", [3]), vi("a", [3])],
        [vi("y", None)],
        [const("a", np.array([1, 2, 3], np.float32)), const("b", np.array([2, 2, 2], np.float32))],
    )
    result, _ = apply("fold", model)
    assert not result.modified
    assert op_types(model) == ["Add", "Add"]
    assert [v.name for v in model.graph.inputs] == ["x", "a"]


def test_fold_near_miss_random_normal():
    model = build(
        [node("RandomNormal", [], ["r"], shape=[3], seed=3.0), node("Add", ["x", "r"], ["y"])],
        [vi("x", [3])],
        [vi("y", None)],
    )
    result, stats = apply("fold", model)
    assert not result.modified and stats == {}
    assert op_types(model) == ["RandomNormal", "Add"]


def test_fold_respects_the_output_size_limit():
    model_args = (
        [node("Expand", ["one", "shape"], ["e"]), node("Add", ["x", "e"], ["y"])],
        [vi("x", [64, 64])],
        [vi("y", None)],
        [const("one", np.array([1], np.float32)), const("shape", np.array([64, 64], np.int64))],
    )
    capped = build(*model_args)
    result, _ = apply("fold", capped, PassOptions(fold_size_limit=100))
    assert not result.modified
    assert op_types(capped) == ["Expand", "Add"]
    # Near-miss in the other direction: under the default limit the same Expand folds.
    uncapped = build(*model_args)
    result, stats = apply("fold", uncapped)
    assert result.modified and stats == {"Expand": 1}
