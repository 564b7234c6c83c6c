"""``llmc.build``'s options are checked before any compiling, each bad one as one line; ONNX
Runtime failures of the compiled graph say a pass broke it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

import llmc
from llmc.compiler.request import make_request
from llmc.errors import LlmcError
from tests.helpers import make_model


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"shapes": {"x": (None, 3)}}, "axis 0 is None"),
        ({"shapes": {"x": (-1, 3)}}, "axis 0 is -1"),
        ({"shapes": {"x": (1.5, 3)}}, "axis 0 is 1.5"),
        ({"shapes": {"x": (True, 3)}}, "axis 0 is True"),
        ({"shapes": {"x": "1x3"}}, "tuple of integers"),
        ({"shapes": [("x", (1, 3))]}, "shapes must be a dict"),
        ({"tolerance": "1e-4"}, "--tolerance must be a number"),
        ({"tolerance": float("nan")}, "finite number >= 0"),
        ({"tolerance": float("inf")}, "finite number >= 0"),
        ({"tolerance": -1e-3}, "finite number >= 0"),
        ({"passes": ["prune", "fold"]}, "--passes must be pipeline text"),
        ({"passes": "  "}, "--passes is empty"),
        ({"threads": -3}, "--threads"),
        ({"threads": 1.5}, "--threads"),
        ({"seed": -1}, "--seed"),
        ({"disable_passes": (3,)}, "--disable-pass"),
        ({"alignment": 0}, "--alignment"),
    ],
)
def test_build_options_refuse_bad_values(options, fragment):
    with pytest.raises(LlmcError) as exc:
        make_request(**options).check()
    assert fragment in _one_line(exc)


def test_good_options_pass_the_check():
    make_request(shapes={"x": (np.int64(2), 3)}, tolerance=np.float32(1e-3), passes="prune", threads=2).check()


def _relu(tmp_path: Path) -> Path:
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])
    path = tmp_path / "relu.onnx"
    onnx.save(make_model([oh.make_node("Relu", ["x"], ["y"])], [x], [y]), path)
    return path


def test_build_refuses_bad_options_before_loading_the_model(tmp_path, monkeypatch):
    import llmc.compiler.stages as stages

    def no_prepare(*_args, **_kwargs):
        raise AssertionError("prepare ran")

    monkeypatch.setattr(stages, "prepare", no_prepare)
    with pytest.raises(LlmcError, match="--shape x: axis 0 is -2"):
        llmc.build(_relu(tmp_path), output=tmp_path / "out", shapes={"x": (-2, 3)})


def test_build_refuses_an_empty_input_before_the_reference_run(tmp_path, monkeypatch):
    import llmc.compiler.stages as stages

    monkeypatch.setattr(stages, "_reference_outputs", lambda *_a: pytest.fail("the reference ran"))
    with pytest.raises(LlmcError) as exc:
        llmc.build(_relu(tmp_path), output=tmp_path / "out", shapes={"x": (0, 3)})
    assert "input 'x' has no elements" in _one_line(exc)


def test_compiled_graph_failing_in_onnxruntime_blames_a_pass(tmp_path, monkeypatch):
    from llmc.passes.manager import PassManager

    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 2])
    shape = onnx.numpy_helper.from_array(np.array([3, 2], np.int64), "shape")
    nodes = [oh.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"), oh.make_node("Relu", ["r"], ["y"])]
    path = tmp_path / "reshape.onnx"
    onnx.save(make_model(nodes, [x], [y], [shape]), path)

    def broken_pipeline(self, model: ir.Model) -> None:  # a "pass" that corrupts the Reshape
        model.graph.initializers["shape"].const_value = ir.tensor(np.array([4, 4], np.int64))

    monkeypatch.setattr(PassManager, "run", broken_pipeline)
    with pytest.raises(LlmcError) as exc:
        llmc.build(path, output=tmp_path / "out")
    text = _one_line(exc)
    assert "the compiled model" in text and "node 'reshape' (Reshape)" in text
    assert "a pass broke" in text and "--diff-each" in text
