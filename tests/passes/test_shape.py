"""The shape pass on small hand-built models: structure, numerics, near misses."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from llmc.runtime.ort import run_model
from tests.passes.pass_helpers import (
    I64,
    F,
    apply,
    assert_outputs_equal,
    build,
    const,
    init_values,
    node,
    op_types,
    random_feeds,
    vi,
)


def test_shape_replaces_static_shape_and_size():
    model = build(
        [
            node("Shape", ["x"], ["s"], start=-2),
            node("Size", ["x"], ["n"]),
            node("Concat", ["neg1", "s"], ["t"], axis=0),
            node("Reshape", ["x", "t"], ["r"]),
            node("Cast", ["n"], ["nf"], to=F),
            node("Mul", ["r", "nf"], ["y"]),
        ],
        [vi("x", [2, 3, 4])],
        [vi("y", None)],
        [const("neg1", np.array([-1], np.int64))],
    )
    result, stats = apply("shape", model)
    assert result.modified
    assert stats == {"Shape": 1, "Size": 1}
    assert "Shape" not in op_types(model) and "Size" not in op_types(model)
    values = init_values(model)
    np.testing.assert_array_equal(values["s"], np.array([3, 4], np.int64))
    assert values["n"].shape == () and values["n"] == 24 and values["n"].dtype == np.int64


def dynamic_reshape_model(start: int | None = 1) -> ir.Model:
    """y = Reshape(x, Concat([-1], Shape(x)[start:])) for x: [N, 3, 4] (N symbolic)."""
    attrs = {} if start is None else {"start": start}
    return build(
        [
            node("Shape", ["x"], ["s"], **attrs),
            node("Concat", ["neg1", "s"], ["t"], axis=0),
            node("Reshape", ["x", "t"], ["r"]),
            node("Relu", ["r"], ["y"]),
        ],
        [vi("x", ["N", 3, 4])],
        [vi("y", None)],
        [const("neg1", np.array([-1], np.int64))],
    )


def test_shape_folds_static_tail_of_dynamic_tensor():
    model = dynamic_reshape_model(start=1)
    result, stats = apply("shape", model)
    assert result.modified and stats == {"Shape": 1}
    assert op_types(model) == ["Concat", "Reshape", "Relu"]
    np.testing.assert_array_equal(init_values(model)["s"], np.array([3, 4], np.int64))


def test_shape_outputs_unchanged_for_several_batch_sizes():
    model = dynamic_reshape_model(start=1)
    feeds = [random_feeds(model, seed=n, dynamic=n) for n in (1, 2, 5)]
    before = [run_model(model, f) for f in feeds]
    result, _ = apply("shape", model)
    assert result.modified
    for f, ref in zip(feeds, before, strict=True):
        assert_outputs_equal(ref, run_model(model, f), exact=True)


def test_shape_near_miss_dynamic_dim_not_baked_in():
    model = dynamic_reshape_model(start=None)  # Shape(x) includes the symbolic N
    result, stats = apply("shape", model)
    assert not result.modified and stats == {}
    assert op_types(model)[0] == "Shape"


@pytest.mark.parametrize("attrs", [{"start": 0, "end": 2}, {"end": -1}, {"start": -3}])
def test_shape_near_miss_slices_that_include_the_dynamic_dim(attrs):
    model = build(
        [node("Shape", ["x"], ["s"], **attrs), node("ReduceSum", ["s"], ["y"], keepdims=0)],
        [vi("x", ["N", 3, 4])],
        [vi("y", None, I64)],
    )
    result, _ = apply("shape", model)
    assert not result.modified
    assert op_types(model) == ["Shape", "ReduceSum"]


def test_shape_near_miss_size_of_dynamic_tensor_and_shape_graph_output():
    model = build(
        [node("Size", ["x"], ["n"]), node("Shape", ["w"], ["ws"]), node("Neg", ["n"], ["y"])],
        [vi("x", ["N", 3]), vi("w", [2, 3])],
        [vi("y", None, I64), vi("ws", None, I64)],
    )
    result, stats = apply("shape", model)
    assert not result.modified and stats == {}
    assert op_types(model) == ["Size", "Shape", "Neg"]
    assert [v.name for v in model.graph.outputs] == ["y", "ws"]
