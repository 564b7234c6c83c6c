"""ONNX Runtime's failures at run time become one line naming the model, the node and a fix."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from llmc.errors import LlmcError
from llmc.model import io as model_io
from llmc.runtime.ort import REFERENCE_CONFIG, OrtRunner, create_session, run_model
from llmc.runtime.ort.errors import explain_run_error, is_ort_error, run_context
from tests.helpers import make_model

RESHAPE_FAILURE = (
    "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. "
    "Name:'bad_reshape' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/"
    "reshape_helper.h:91 onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, "
    "onnxruntime::TensorShapeVector&, bool) input_shape_size == requested_shape_size was false. The input "
    "tensor cannot be reshaped to the requested shape. Input shape:{2,3}, requested shape:{4,4}\n"
)


def _reshape_proto(target=(4, 4)) -> onnx.ModelProto:
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(target))
    shape = onnx.numpy_helper.from_array(np.array(target, np.int64), "shape")
    return make_model([oh.make_node("Reshape", ["x", "shape"], ["y"], name="bad_reshape")], [x], [y], [shape])


def test_message_keeps_node_and_reason_without_the_cpp_prefix():
    text = str(explain_run_error(RuntimeError(RESHAPE_FAILURE), "m.onnx"))
    assert text.startswith("m.onnx: node 'bad_reshape' (Reshape) fails in onnxruntime: The input tensor cannot")
    assert "requested shape:{4,4}" in text and "onnxruntime_src" not in text and "was false" not in text
    assert "\n" not in text and "--shape" in text


def test_message_without_a_node_and_with_an_unnamed_node():
    dims = (
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x for the following "
        "indices\n index: 1 Got: 4 Expected: 3\n Please fix either the inputs/outputs or the model."
    )
    text = str(explain_run_error(RuntimeError(dims)))
    assert text.startswith("the model: onnxruntime cannot run it: Got invalid dimensions for input: x")
    assert "Please fix" not in text
    unnamed = "Non-zero status code returned while running Gather node. Name:'' Status Message: indices out of range"
    assert "a Gather node (unnamed) fails in onnxruntime: indices out of range" in str(explain_run_error(RuntimeError(unnamed)))


def test_context_gives_the_hint_and_may_rename_the_model():
    with run_context("a pass broke it", "the compiled model"):
        text = str(explain_run_error(RuntimeError(RESHAPE_FAILURE), "/tmp/work/model.onnx"))
    assert text.startswith("the compiled model: node 'bad_reshape'") and text.endswith("; a pass broke it")
    with run_context("fix the data"):
        assert str(explain_run_error(RuntimeError(RESHAPE_FAILURE), "m.onnx")).startswith("m.onnx: ")
    assert "a pass broke it" not in str(explain_run_error(RuntimeError(RESHAPE_FAILURE)))


def test_sessions_map_run_failures_and_name_the_file(tmp_path):
    path = tmp_path / "reshape.onnx"
    onnx.save(_reshape_proto(), path)
    session = create_session(path, REFERENCE_CONFIG)
    feeds = {"x": np.ones((2, 3), np.float32)}
    with pytest.raises(LlmcError, match=r"reshape.onnx: node 'bad_reshape' \(Reshape\) fails in onnxruntime"):
        OrtRunner(session).run(feeds)
    with pytest.raises(LlmcError, match=r"^the model: node 'bad_reshape'"):  # bytes: no file to name
        create_session(_reshape_proto().SerializeToString(), REFERENCE_CONFIG).run(None, feeds)
    with pytest.raises(ValueError):  # Python errors (bugs) keep their type and traceback
        session.run(None, {"nope": feeds["x"]})


def test_in_memory_models_never_name_their_temporary_copy(monkeypatch):
    import onnx_ir as ir

    monkeypatch.setattr(model_io, "IN_MEMORY_LIMIT_BYTES", 0)  # force the temporary-file path
    model = ir.serde.deserialize_model(_reshape_proto())
    with run_context("hint", None), pytest.raises(LlmcError, match=r"^the model: node 'bad_reshape'"):
        run_model(model, {"x": np.ones((2, 3), np.float32)})


def test_session_creation_errors_name_the_file(tmp_path):
    path = tmp_path / "opset99.onnx"
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    onnx.save(make_model([oh.make_node("Relu", ["x"], ["x2"])], [x], [oh.make_tensor_value_info("x2", 1, [2])], opset=99), path)
    with pytest.raises(LlmcError, match=r"opset99.onnx: the model uses opset 99"):
        create_session(path, REFERENCE_CONFIG)


def test_ort_errors_are_told_from_python_errors():
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

    assert is_ort_error(Fail("x")) and is_ort_error(InvalidArgument("x"))
    assert not is_ort_error(ValueError("x")) and not is_ort_error(LlmcError("x"))
