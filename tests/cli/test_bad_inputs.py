"""Every bad input gets one clear line and exit code 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from typer.testing import CliRunner

from llmc.cli.main import app
from tests.helpers import make_model

runner = CliRunner()
X = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
Y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])


def _build(path: Path, tmp_path: Path, *extra: str):
    return runner.invoke(app, ["build", str(path), "-o", str(tmp_path / "out"), *extra])


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_file(tmp_path):
    _assert_one_line_error(_build(tmp_path / "nope.onnx", tmp_path), "nope.onnx", "no such file")


def test_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("hello, this is not a model\n" * 20)
    _assert_one_line_error(_build(path, tmp_path), "notes.onnx", "corrupt")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    _assert_one_line_error(_build(path, tmp_path), "empty file")


def test_truncated_protobuf(tmp_path, relu_model):
    data = relu_model.read_bytes()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        result = _build(path, tmp_path)
        _assert_one_line_error(result, f"cut{cut}.onnx")


def test_graph_reading_undefined_tensor(tmp_path):
    model = make_model([oh.make_node("Relu", ["missing"], ["y"])], [X], [Y])
    path = tmp_path / "undefined.onnx"
    onnx.save(model, path)
    _assert_one_line_error(_build(path, tmp_path), "missing", "truncated or malformed")


def _external_model(tmp_path: Path, location: str) -> Path:
    w = onnx.numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    model = make_model([oh.make_node("Add", ["x", "w"], ["y"])], [X], [Y], [w])
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data",
              size_threshold=0)
    proto = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path = tmp_path / "edited.onnx"
    onnx.save(proto, path)
    return path


@pytest.mark.parametrize("location", ["../outside.data", "/etc/passwd", "sub/../../x.data"])
def test_external_data_outside_model_dir_is_refused(tmp_path, location):
    path = _external_model(tmp_path, location)
    _assert_one_line_error(_build(path, tmp_path), "'w'", "outside the model's directory")


def test_external_data_missing(tmp_path):
    path = _external_model(tmp_path, "gone.data")
    _assert_one_line_error(_build(path, tmp_path), "gone.data", "missing")


def test_external_data_inside_dir_loads(tmp_path):
    path = _external_model(tmp_path, "ext.data")
    result = _build(path, tmp_path)
    assert result.exit_code == 0, result.output


def test_opset_onnxruntime_cannot_run(tmp_path):
    path = tmp_path / "opset99.onnx"
    onnx.save(make_model([oh.make_node("Relu", ["x"], ["y"])], [X], [Y], opset=99), path)
    _assert_one_line_error(_build(path, tmp_path), "opset 99", "re-export")


def test_unknown_domain_names_node_and_domain(tmp_path):
    node = oh.make_node("Foo", ["x"], ["y"], domain="my.custom", name="my_foo")
    path = tmp_path / "custom.onnx"
    onnx.save(make_model([node], [X], [Y], extra_opsets=[("my.custom", 1)]), path)
    _assert_one_line_error(_build(path, tmp_path), "my_foo", "my.custom")


def test_unknown_pass_lists_valid_ones(tmp_path, relu_model):
    result = _build(relu_model, tmp_path, "--disable-pass", "nosuch")
    _assert_one_line_error(result, "nosuch", "fold", "prune")


def test_bad_pipeline_text(tmp_path, relu_model):
    _assert_one_line_error(_build(relu_model, tmp_path, "--passes", "prune,(fold"), "missing ')'")


def test_bad_shape_spec(tmp_path, relu_model):
    _assert_one_line_error(_build(relu_model, tmp_path, "--shape", "x=2by3"), "x=2by3")
    _assert_one_line_error(_build(relu_model, tmp_path, "--shape", "z=2x3"), "z")
    _assert_one_line_error(_build(relu_model, tmp_path, "--shape", "x=2x4"), "axis 1")


def test_missing_provider(tmp_path, relu_model):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA provider installed")
    _assert_one_line_error(_build(relu_model, tmp_path, "--device", "cuda"), "CUDAExecutionProvider", "onnxruntime-gpu")


def test_trt_target_says_not_available(tmp_path, relu_model):
    _assert_one_line_error(_build(relu_model, tmp_path, "--target", "trt"), "TensorRT")


def test_load_refuses_tampered_artifact(tmp_path, relu_model):
    import llmc

    artifact = llmc.build(relu_model, output=tmp_path / "a")
    with open(artifact.model_path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(llmc.LlmcError, match="sha256"):
        llmc.load(artifact.path)


def test_load_not_an_artifact(tmp_path):
    import llmc

    with pytest.raises(llmc.LlmcError, match="not an llmc artifact"):
        llmc.load(tmp_path)


def test_bad_inputs_npz(tmp_path, relu_model):
    path = tmp_path / "in.npz"
    np.savez(path, x=np.ones((2, 3), np.int64))
    _assert_one_line_error(_build(relu_model, tmp_path, "--inputs", str(path)), "int64", "float32")
    np.savez(path, q=np.ones((2, 3), np.float32))
    _assert_one_line_error(_build(relu_model, tmp_path, "--inputs", str(path)), "missing: x")
