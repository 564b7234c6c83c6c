"""QKV layouts made side by side (llmc.passes.fusion.grouped_qkv): Falcon-40B's per-group packing
and Falcon-7B's split over heads become Slices of one MatMul with the same values, and what is
not that layout is left alone. The whole path (Falcon exported, fused into GroupQueryAttention,
judged against transformers) is tests/compiler/test_family_builds.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxruntime as ort
import pytest

from llmc.passes.fusion import grouped_qkv

TP = onnx.TensorProto
GROUPS, PER_GROUP, HEAD, HIDDEN = 2, 4, 8, 16  # 2 query heads a group, then its key and value


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _model(nodes: list, initializers: list, outputs: list[str]) -> ir.Model:
    """[batch, sequence, HIDDEN] in; each of ``outputs`` transposed to a graph output (a rewrite
    replaces values that are not graph outputs, as inside a model)."""
    nodes = nodes + [oh.make_node("Transpose", [o], [f"{o}_t"], perm=[0, 2, 1, 3]) for o in outputs]
    graph = oh.make_graph(
        nodes, "qkv", [oh.make_tensor_value_info("x", TP.FLOAT, ["batch", "sequence", HIDDEN])],
        [oh.make_tensor_value_info(f"{o}_t", TP.FLOAT, None) for o in outputs], initializers,
    )
    model = ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]))
    common_passes.ShapeInferencePass(check_type=False, strict_mode=False)(model)
    return model


def _grouped(bias: bool, key_index: int = PER_GROUP - 2, value_index: int = PER_GROUP - 1) -> ir.Model:
    rng = np.random.default_rng(0)
    width = GROUPS * PER_GROUP * HEAD
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((HIDDEN, width)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b"),
        _ints("shape5", [0, 0, GROUPS, PER_GROUP, HEAD]), _ints("zero", [0]), _ints("end", [-2]),
        _ints("axis", [3]), _ints("one", [1]), _ints("q_shape", [0, 0, GROUPS * (PER_GROUP - 2), HEAD]),
        onnx.numpy_helper.from_array(np.array(key_index, dtype=np.int64), "k_index"),
        onnx.numpy_helper.from_array(np.array(value_index, dtype=np.int64), "v_index"),
    ]
    nodes = [oh.make_node("MatMul", ["x", "w"], ["y0"])]
    nodes += [oh.make_node("Add", ["y0", "b"], ["y"])] if bias else [oh.make_node("Identity", ["y0"], ["y"])]
    nodes += [
        oh.make_node("Reshape", ["y", "shape5"], ["grouped"]),
        oh.make_node("Slice", ["grouped", "zero", "end", "axis", "one"], ["q5"]),
        oh.make_node("Reshape", ["q5", "q_shape"], ["q"]),
        oh.make_node("Gather", ["grouped", "k_index"], ["k"], axis=3),
        oh.make_node("Gather", ["grouped", "v_index"], ["v"], axis=3),
    ]
    model = _model(nodes, inits, ["q", "k", "v"])
    if not bias:  # the rule matches MatMul -> Reshape: drop the Identity as the pipeline would
        from llmc.passes.noop import eliminate_identities

        eliminate_identities(model)
    return model


def _run(model: ir.Model, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _rewritten(model: ir.Model) -> tuple[int, list[np.ndarray], list[np.ndarray]]:
    x = np.random.default_rng(1).standard_normal((2, 3, HIDDEN)).astype(np.float32)
    before = _run(model, x)
    count = grouped_qkv.rules().apply_to_model(model)
    common_passes.RemoveUnusedNodesPass()(model)
    return count, before, _run(model, x)


@pytest.mark.parametrize("bias", [False, True])
def test_per_group_qkv_becomes_slices_of_one_permuted_projection(bias):
    model = _grouped(bias)
    count, before, after = _rewritten(model)
    assert count == 1
    ops = [n.op_type for n in model.graph]
    assert "Gather" not in ops and ops.count("Slice") == 3 and ops.count("MatMul") == 1
    for b, a in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_another_per_group_order_is_left_alone():
    """Key and value swapped within the group: not the layout the rule permutes, so not matched."""
    model = _grouped(False, key_index=PER_GROUP - 1, value_index=PER_GROUP - 2)
    count, before, after = _rewritten(model)
    assert count == 0
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("sizes", "matched"), [([4, 1, 1], 1), ([4, 2], 0)])
def test_multi_query_split_over_heads_becomes_slices(sizes, matched):
    rng = np.random.default_rng(0)
    heads = sum(sizes)
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((HIDDEN, heads * HEAD)).astype(np.float32), "w"),
        _ints("shape4", [0, 0, heads, HEAD]), _ints("sizes", sizes),
    ]
    outputs = ["q", "k", "v"][: len(sizes)]
    nodes = [
        oh.make_node("MatMul", ["x", "w"], ["y"]),
        oh.make_node("Reshape", ["y", "shape4"], ["heads"]),
        oh.make_node("Split", ["heads", "sizes"], outputs, axis=2),
    ]
    model = _model(nodes, inits, outputs)
    count, before, after = _rewritten(model)
    assert count == matched
    assert ("Split" in [n.op_type for n in model.graph]) == (not matched)
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
