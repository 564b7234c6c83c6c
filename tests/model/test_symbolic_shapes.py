"""The one driver of ONNX Runtime's symbolic shape inference (llmc.model.symbolic_shapes)."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import pytest

from llmc.model import symbolic_shapes
from llmc.model.symbolic_shapes import INLINE_LIMIT, infer, refine_shapes
from tests.helpers import make_model

FLOAT = onnx.TensorProto.FLOAT
MS = "com.microsoft"


def _ir(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def legacy_reshape_model() -> ir.Model:
    """y = Reshape(x @ w, Concat(Shape(x)[0], 4 * Shape(x)[1], [16])) for x: [batch, sequence, 64].

    The shape is computed at run time (as the legacy exporter writes it): ONNX's inference
    leaves y's second dim unknown. w (64 x 64) is over INLINE_LIMIT elements.
    """
    x = oh.make_tensor_value_info("x", FLOAT, ["batch", "sequence", 64])
    y = oh.make_tensor_value_info("y", FLOAT, None)
    w = onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    constants = [
        onnx.numpy_helper.from_array(np.array(value, np.int64), name)
        for name, value in (("zero", 0), ("one", 1), ("four", 4), ("axes", [0]), ("tail", [16]))
    ]
    nodes = [
        oh.make_node("MatMul", ["x", "w"], ["xw"]),
        oh.make_node("Shape", ["x"], ["s"]),
        oh.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        oh.make_node("Gather", ["s", "one"], ["q"], axis=0),
        oh.make_node("Mul", ["q", "four"], ["q4"]),
        oh.make_node("Unsqueeze", ["b", "axes"], ["b1"]),
        oh.make_node("Unsqueeze", ["q4", "axes"], ["q1"]),
        oh.make_node("Concat", ["b1", "q1", "tail"], ["shape"], axis=0),
        oh.make_node("Reshape", ["xw", "shape"], ["y"]),
    ]
    return _ir(make_model(nodes, [x], [y], [w, *constants]))


def test_refine_shapes_names_the_dims_onnx_leaves_unknown():
    model = legacy_reshape_model()
    common_passes.ShapeInferencePass(check_type=False, strict_mode=False)(model)
    y = model.graph.outputs[0]
    assert str(y.shape[1]).startswith("unk__")

    assert refine_shapes(model) > 0
    assert [d if isinstance(d, int) else d.value for d in y.shape] == ["batch", "4*sequence", 16]


def test_infer_at_concrete_shapes_strips_weights_and_leaves_the_model_alone():
    model = legacy_reshape_model()
    inferred = infer(model, input_shapes={"x": (2, 5, 64)})

    assert inferred.error is None
    assert _dims(inferred.value_info["y"]) == [2, 20, 16]
    assert _dims(inferred.value_info["x"]) == [2, 5, 64]
    # The 64 x 64 weight went over as a typed input without data; small constants kept theirs.
    assert inferred.stripped == ["w"]
    assert np.ones((64, 64)).size > INLINE_LIMIT
    assert "w" not in {t.name for t in inferred.proto.graph.initializer}
    assert "tail" in {t.name for t in inferred.proto.graph.initializer}
    assert _dims(next(i for i in inferred.proto.graph.input if i.name == "w")) == [64, 64]
    # The caller's model is untouched.
    assert model.graph.initializers["w"].const_value is not None
    assert "w" not in {v.name for v in model.graph.inputs}
    assert [d if isinstance(d, int) else d.value for d in model.graph.inputs[0].shape] == ["batch", "sequence", 64]


def test_llmc_ops_are_typed():
    """The int8 op llmc emits and SkipLayerNormalization's mean / inverse-std outputs."""
    a = oh.make_tensor_value_info("a", FLOAT, [2, 3, 8])
    outputs = [oh.make_tensor_value_info(n, FLOAT, None) for n in ("y", "n", "mean", "inv_std")]
    rng = np.random.default_rng(0)
    weights = [
        onnx.numpy_helper.from_array(rng.integers(-8, 8, (8, 4)).astype(np.int8), "b"),
        onnx.numpy_helper.from_array(np.array([0.1], np.float32), "b_scale"),
        onnx.numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
    ]
    nodes = [
        oh.make_node("DynamicQuantizeMatMul", ["a", "b", "b_scale"], ["y"], domain=MS),
        oh.make_node("SkipLayerNormalization", ["a", "a", "gamma"], ["n", "mean", "inv_std"], domain=MS),
    ]
    model = _ir(make_model(nodes, [a], outputs, weights, extra_opsets=[(MS, 1)]))

    inferred = infer(model)

    assert inferred.error is None
    assert _dims(inferred.value_info["y"]) == [2, 3, 4]
    assert inferred.value_info["y"].type.tensor_type.elem_type == FLOAT
    for name in ("mean", "inv_std"):
        assert _dims(inferred.value_info[name]) == [2, 3, 1]
        assert inferred.value_info[name].type.tensor_type.elem_type == FLOAT


def test_a_failing_op_keeps_what_was_known(monkeypatch):
    def broken(self, node):
        raise RuntimeError("no MatMul today")

    monkeypatch.setattr(symbolic_shapes._inference_class(), "_infer_MatMul", broken)
    model = legacy_reshape_model()

    inferred = infer(model, input_shapes={"x": (2, 5, 64)})

    assert isinstance(inferred.error, RuntimeError)
    assert _dims(inferred.value_info["x"]) == [2, 5, 64]
    assert "y" not in inferred.value_info or not _dims(inferred.value_info["y"])
    # Fusion's refinement gives up instead (its checks then see ONNX's shapes).
    assert refine_shapes(model) == 0
    assert model.graph.outputs[0].shape is None


def test_library_logging_is_silenced_only_while_it_runs():
    library = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    library.setLevel(logging.INFO)
    try:
        infer(legacy_reshape_model())
        assert library.level == logging.INFO
    finally:
        library.setLevel(logging.NOTSET)


def mystery_model() -> ir.Model:
    """Relu, then an op of an unknown domain: the inference stops there, incomplete."""
    x = oh.make_tensor_value_info("x", FLOAT, ["batch", 8])
    y = oh.make_tensor_value_info("y", FLOAT, None)
    nodes = [oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Mystery", ["r"], ["y"], domain="test.mystery")]
    return _ir(make_model(nodes, [x], [y], extra_opsets=[("test.mystery", 1)]))


def test_no_debug_dump_is_left_in_the_current_directory(tmp_path, monkeypatch):
    """ORT's public ``infer_shapes`` writes ``sym_shape_infer_temp.onnx`` into the CWD when some
    shape stays unknown; the driver never does, neither for fusion nor for memory planning."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = mystery_model()
    public = tmp_path / "public"
    public.mkdir()
    monkeypatch.chdir(public)
    # The model does take the library's dump path (so the check below means something).
    with pytest.raises(Exception, match="Incomplete symbolic shape inference"):
        SymbolicShapeInference.infer_shapes(ir.serde.serialize_model(model), auto_merge=True)
    assert "sym_shape_infer_temp.onnx" in os.listdir(public)

    ours = tmp_path / "ours"
    ours.mkdir()
    monkeypatch.chdir(ours)
    inferred = infer(model, input_shapes={"x": (2, 8)})
    refine_shapes(model)

    assert os.listdir(ours) == []
    assert inferred.error is None
    assert _dims(inferred.value_info["r"]) == [2, 8]
