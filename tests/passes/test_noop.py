"""The noop (and inference-mode Dropout) pass on small hand-built models: structure, numerics, near misses."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto

from llmc.runtime.ort import run_model
from tests.passes.pass_helpers import (
    F,
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

# name -> (nodes, initializers, stats key, op types left). x: float [2, 3] input, y: output.
NOOP_CASES = {
    "mul_by_1": ([node("Mul", ["x", "one"], ["a"]), node("Relu", ["a"], ["y"])],
                 [const("one", np.float32(1))], "mul_by_1", ["Relu"]),
    "1_mul": ([node("Mul", ["one", "x"], ["a"]), node("Relu", ["a"], ["y"])],
              [const("one", np.float32(1))], "mul_by_1", ["Relu"]),
    "add_0": ([node("Add", ["x", "zero"], ["a"]), node("Relu", ["a"], ["y"])],
              [const("zero", np.float32(0))], "add_0", ["Relu"]),
    "sub_0": ([node("Sub", ["x", "zero"], ["a"]), node("Relu", ["a"], ["y"])],
              [const("zero", np.float32(0))], "sub_0", ["Relu"]),
    "div_by_1": ([node("Div", ["x", "one"], ["a"]), node("Relu", ["a"], ["y"])],
                 [const("one", np.float32(1))], "div_by_1", ["Relu"]),
    "identity": ([node("Identity", ["x"], ["a"]), node("Relu", ["a"], ["y"])], [], "identity", ["Relu"]),
    "cast_same_type": ([node("Cast", ["x"], ["a"], to=F), node("Relu", ["a"], ["y"])],
                       [], "cast_same_type", ["Relu"]),
    "transpose_identity": ([node("Transpose", ["x"], ["a"], perm=[0, 1]), node("Relu", ["a"], ["y"])],
                           [], "transpose_identity", ["Relu"]),
    "transpose_transpose": ([node("Transpose", ["x"], ["a"], perm=[1, 0]),
                             node("Transpose", ["a"], ["b"], perm=[1, 0]), node("Relu", ["b"], ["y"])],
                            [], "transpose_transpose", ["Relu"]),
    "expand_same_shape": ([node("Expand", ["x", "s"], ["a"]), node("Relu", ["a"], ["y"])],
                          [const("s", np.array([2, 3], np.int64))], "expand_same_shape", ["Relu"]),
    "reshape_reshape": ([node("Reshape", ["x", "s1"], ["a"]), node("Reshape", ["a", "s2"], ["y"])],
                        [const("s1", np.array([3, 2], np.int64)), const("s2", np.array([6], np.int64))],
                        "reshape_reshape", ["Reshape"]),
    "unsqueeze_unsqueeze": ([node("Unsqueeze", ["x", "ax1"], ["a"]), node("Unsqueeze", ["a", "ax2"], ["y"])],
                            [const("ax1", np.array([0], np.int64)), const("ax2", np.array([3], np.int64))],
                            "unsqueeze_unsqueeze", ["Constant", "Unsqueeze"]),
}


def noop_model(case: str) -> ir.Model:
    nodes, inits, _, _ = NOOP_CASES[case]
    return build(nodes, [vi("x", [2, 3])], [vi("y", None)], inits)


@pytest.mark.parametrize("case", sorted(NOOP_CASES))
def test_noop_removes(case):
    _, _, rule, left = NOOP_CASES[case]
    model = noop_model(case)
    result, stats = apply("noop", model)
    assert result.modified
    assert stats == {rule: 1}
    assert op_types(model) == left
    assert [v.name for v in model.graph.outputs] == ["y"]


@pytest.mark.parametrize("case", sorted(NOOP_CASES))
def test_noop_outputs_bit_identical(case):
    check_numerics("noop", noop_model(case), exact=True)


def test_noop_keeps_output_name_when_removing_the_last_node():
    model = build([node("Relu", ["x"], ["r"]), node("Mul", ["r", "one"], ["y"])],
                  [vi("x", [2, 3])], [vi("y", None)], [const("one", np.float32(1))])
    stats = check_numerics("noop", model, exact=True)
    assert stats == {"mul_by_1": 1}
    assert op_types(model) == ["Relu"]
    assert [v.name for v in model.graph.outputs] == ["y"]


def test_noop_keeps_identity_from_input_to_output():
    model = build([node("Identity", ["x"], ["y"])], [vi("x", [2, 3])], [vi("y", None)])
    result, stats = apply("noop", model)
    assert not result.modified and stats == {}
    assert op_types(model) == ["Identity"]
    assert [v.name for v in model.graph.inputs] == ["x"]
    assert [v.name for v in model.graph.outputs] == ["y"]


NOOP_NEAR_MISSES = {
    "mul_by_2": ([node("Mul", ["x", "c"], ["y"])], [const("c", np.float32(2))]),
    "add_nonzero": ([node("Add", ["x", "c"], ["y"])], [const("c", np.float32(0.5))]),
    "sub_nonzero": ([node("Sub", ["x", "c"], ["y"])], [const("c", np.float32(-1))]),
    "zero_sub": ([node("Sub", ["c", "x"], ["y"])], [const("c", np.float32(0))]),
    "one_div": ([node("Div", ["c", "x"], ["y"])], [const("c", np.float32(1))]),
    # Close to the neutral element is not the neutral element: a LayerNorm epsilon must stay.
    "add_epsilon": ([node("Add", ["x", "c"], ["y"])], [const("c", np.float32(1e-12))]),
    "mul_almost_1": ([node("Mul", ["x", "c"], ["y"])], [const("c", np.float32(1.000001))]),
    "div_almost_1": ([node("Div", ["x", "c"], ["y"])], [const("c", np.float32(0.999999))]),
    "cast_other_type": ([node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), node("Cast", ["h"], ["y"], to=F)], []),
    # Multiplying by ones of a bigger shape broadcasts: the output is not the input.
    "mul_broadcasting_ones": ([node("Mul", ["x", "c"], ["y"])], [const("c", np.ones((4, 2, 3), np.float32))]),
    "transpose_not_inverse": ([node("Transpose", ["x"], ["a"], perm=[1, 0]), node("Relu", ["a"], ["y"])], []),
    "expand_bigger": ([node("Expand", ["x", "s"], ["y"])], [const("s", np.array([4, 2, 3], np.int64))]),
}


@pytest.mark.parametrize("case", sorted(NOOP_NEAR_MISSES))
def test_noop_near_miss_left_alone(case):
    nodes, inits = NOOP_NEAR_MISSES[case]
    model = build(nodes, [vi("x", [2, 3])], [vi("y", None)], inits)
    feeds = random_feeds(model)
    feeds["x"] = feeds["x"] * 1e3  # large values, where a factor 1.000001 shows ...
    feeds["x"][0, 0] = 0.0  # ... and a zero, where adding 1e-12 shows
    before = run_model(model, feeds)
    text = snapshot(model)
    result, stats = apply("noop", model)
    assert not result.modified and stats == {}
    assert snapshot(model) == text
    assert_outputs_equal(before, run_model(model, feeds), exact=True)


def test_noop_layernorm_epsilon_keeps_constant_rows_finite():
    """(x - mean) / sqrt(var + 1e-12): dropping the epsilon turns a constant row into NaN."""
    model = build(
        [
            node("ReduceMean", ["x", "axes"], ["mean"], keepdims=1),
            node("Sub", ["x", "mean"], ["d"]),
            node("Mul", ["d", "d"], ["d2"]),
            node("ReduceMean", ["d2", "axes"], ["var"], keepdims=1),
            node("Add", ["var", "eps"], ["ve"]),
            node("Sqrt", ["ve"], ["sd"]),
            node("Div", ["d", "sd"], ["y"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", None)],
        [const("axes", np.array([-1], np.int64)), const("eps", np.float32(1e-12))],
    )
    apply("noop", model)
    assert "Add" in op_types(model)
    out = run_model(model, {"x": np.array([[1, 1, 1], [1, 2, 3]], np.float32)})["y"]
    assert np.isfinite(out).all()


def test_noop_near_miss_mul_by_overridable_default():
    """``x * k`` where k is a graph input whose default (initializer) is 1 is no no-op."""
    import onnxruntime as ort

    model = build(
        [node("Mul", ["x", "k"], ["y"])],
        [vi("x", [3]), vi("k", [])],
        [vi("y", None)],
        [const("k", np.float32(1))],
    )
    result, stats = apply("noop", model)
    assert not result.modified and stats == {}
    assert op_types(model) == ["Mul"]
    assert model.graph.initializers["k"].const_value is not None  # default restored
    session = ort.InferenceSession(
        ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = np.array([1, 2, 3], np.float32)
    (y,) = session.run(None, {"x": x, "k": np.array(2, np.float32)})
    np.testing.assert_array_equal(y, 2 * x)

def dropout_model(training: bool | None, mask_used: bool = False) -> ir.Model:
    inputs = ["x", "ratio"] + (["training"] if training is not None else [])
    inits = [const("ratio", np.float32(0.5))]
    if training is not None:
        inits.append(const("training", np.bool_(training)))
    outputs = [vi("y", [2, 3])] + ([vi("mask", [2, 3], TensorProto.BOOL)] if mask_used else [])
    nodes = [node("Dropout", inputs, ["d", "mask"] if mask_used else ["d"]), node("Relu", ["d"], ["y"])]
    return build(nodes, [vi("x", [2, 3])], outputs, inits, opset=13)


@pytest.mark.parametrize("training", [None, False])
def test_noop_removes_inference_dropout_opset13(training):
    model = dropout_model(training)
    before = run_model(model, random_feeds(model))
    result, stats = apply("noop", model)
    assert result.modified and stats["dropout"] == 1
    assert op_types(model) == ["Relu"]
    assert_outputs_equal(before, run_model(model, random_feeds(model)), exact=True)


def test_noop_near_miss_training_dropout_and_used_mask():
    for model in (dropout_model(True), dropout_model(None, mask_used=True)):
        result, stats = apply("noop", model)
        assert not result.modified and "Dropout" in op_types(model), stats
