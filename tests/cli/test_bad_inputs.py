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


# -- issue 17: every bad input is one clean line ----------------------------------------------


def _save(tmp_path: Path, name: str, nodes, inputs=(X,), outputs=(Y,), initializers=()) -> Path:
    path = tmp_path / name
    onnx.save(make_model(list(nodes), list(inputs), list(outputs), list(initializers)), path)
    return path


def _reshape_model(tmp_path: Path, target=(4, 4), x_shape=(2, 3)) -> Path:
    """x -> Reshape(x, target) -> y: ONNX Runtime fails at run time when the sizes differ."""
    shape = onnx.numpy_helper.from_array(np.array(target, np.int64), "shape")
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x_shape))
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(target))
    node = oh.make_node("Reshape", ["x", "shape"], ["y"], name="bad_reshape")
    return _save(tmp_path, "reshape.onnx", [node], [x], [y], [shape])


def test_huge_declared_dim_is_refused_before_allocating(tmp_path):
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2**40, 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2**40, 3])
    path = _save(tmp_path, "huge.onnx", [oh.make_node("Relu", ["x"], ["y"])], [x], [y])
    result = _build(path, tmp_path)
    _assert_one_line_error(result, "input 'x'", "1099511627776x3", "TiB", "--shape x=")


def test_source_model_failing_in_onnxruntime_names_file_and_node(tmp_path):
    path = _reshape_model(tmp_path)
    result = _build(path, tmp_path)
    _assert_one_line_error(result, "reshape.onnx", "node 'bad_reshape' (Reshape)", "cannot be reshaped", "--shape")
    assert "onnxruntime_src" not in result.output


def test_check_names_the_failing_node(tmp_path):
    path = _reshape_model(tmp_path)
    result = runner.invoke(app, ["check", str(path), str(path)])
    _assert_one_line_error(result, "reshape.onnx", "node 'bad_reshape'", "ORIGINAL fails")


def test_inputs_npz_with_a_wrong_dim_names_given_and_expected_shape(tmp_path):
    model = _save(tmp_path, "relu.onnx", [oh.make_node("Relu", ["x"], ["y"])])
    path = tmp_path / "in.npz"
    np.savez(path, x=np.ones((2, 4), np.float32))
    result = _build(model, tmp_path, "--inputs", str(path))
    _assert_one_line_error(result, "in.npz", "input 'x'", "2x4", "2x3")


@pytest.mark.parametrize(
    "inputs, outputs, fragments",
    [
        ([oh.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2, 3])], [Y], ["different inputs", "x vs z"]),
        ([oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 3])], [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 3])], ["input 'x'", "[2, 3]", "[4, 3]"]),
        ([X], [oh.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2, 3])], ["different outputs", "y vs w"]),
    ],
)
def test_check_refuses_models_with_different_interfaces(tmp_path, inputs, outputs, fragments):
    original = _save(tmp_path, "a.onnx", [oh.make_node("Relu", ["x"], ["y"])])
    name_in, name_out = inputs[0].name, outputs[0].name
    other = _save(tmp_path, "b.onnx", [oh.make_node("Relu", [name_in], [name_out])], inputs, outputs)
    _assert_one_line_error(runner.invoke(app, ["check", str(original), str(other)]), *fragments)


def _int8_model(tmp_path: Path, reshape: bool = False) -> Path:
    """x [batch, 32] -> Neg -> MatMul (a weight int8 can take) [-> Reshape to 2x32] -> Relu -> y."""
    k = 32
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", k])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, k] if reshape else ["batch", k])
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, k)).astype(np.float32), "w")
    shape = onnx.numpy_helper.from_array(np.array([2, k], np.int64), "shape")
    nodes = [oh.make_node("Neg", ["x"], ["n"], name="neg"), oh.make_node("MatMul", ["n", "w"], ["h"], name="mm")]
    if reshape:
        nodes.append(oh.make_node("Reshape", ["h", "shape"], ["r"], name="to_pair"))
    nodes.append(oh.make_node("Relu", ["r" if reshape else "h"], ["y"], name="relu"))
    return _save(tmp_path, "mm.onnx", nodes, [x], [y], [w, shape] if reshape else [w])


def _calibration_dir(tmp_path: Path, n: int, bad: dict[int, float]) -> Path:
    directory = tmp_path / "calib"
    directory.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        x = rng.standard_normal((1, 32)).astype(np.float32)
        if i in bad:
            x[0, 2] = bad[i]
        np.savez(directory / f"{i:02d}.npz", x=x)
    return directory


def test_calibration_run_failing_in_onnxruntime_names_node_and_data(tmp_path):
    model = _int8_model(tmp_path, reshape=True)
    data = _calibration_dir(tmp_path, 3, {})
    result = _build(model, tmp_path, "--precision", "int8", "--calibration-data", str(data), "--shape", "x=2x32")
    _assert_one_line_error(result, "calibration on", "calib", "node 'to_pair' (Reshape)", "calibration data")


def test_non_finite_calibration_samples_are_skipped_and_counted(tmp_path):
    import json

    data = _calibration_dir(tmp_path, 6, {1: np.nan, 3: np.inf})
    result = _build(_int8_model(tmp_path), tmp_path, "--precision", "int8", "--calibration-data", str(data))
    assert result.exit_code == 0, result.output
    samples = json.loads((tmp_path / "out" / "manifest.json").read_text())["quantization"]["samples"]
    # 4 finite samples: too few for calibration + holdout, so a quarter (1) is held out
    assert samples["calibration"] == 3 and samples["holdout"] == 1 and samples["skipped_nonfinite"] == 2


def test_calibration_data_with_no_finite_sample_is_refused(tmp_path):
    data = _calibration_dir(tmp_path, 2, {0: np.nan, 1: -np.inf})
    result = _build(_int8_model(tmp_path), tmp_path, "--precision", "int8", "--calibration-data", str(data))
    _assert_one_line_error(result, "calib", "every sample (2)", "NaN or Inf")


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_tolerance_must_be_finite_and_not_negative(tmp_path, relu_model, value):
    result = _build(relu_model, tmp_path, "--tolerance", value)
    _assert_one_line_error(result, "--tolerance", value.replace("-1", "-1.0"))
    assert "--diff-each" not in result.output


def test_empty_passes_is_refused(tmp_path, relu_model):
    _assert_one_line_error(_build(relu_model, tmp_path, "--passes", ""), "--passes is empty", "llmc passes")


def test_negative_threads_is_refused(tmp_path, relu_model):
    _assert_one_line_error(_build(relu_model, tmp_path, "--threads", "-3"), "--threads", "-3")


def test_source_giving_nan_on_seeded_inputs_is_refused(tmp_path):
    path = _save(tmp_path, "log.onnx", [oh.make_node("Log", ["x"], ["y"])])  # log of N(0, 1) samples
    result = _build(path, tmp_path)
    _assert_one_line_error(result, "output 'y'", "NaN", "proves nothing", "--inputs")


def test_zero_sized_input_is_refused(tmp_path):
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [0, 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [0, 3])
    path = _save(tmp_path, "empty_input.onnx", [oh.make_node("Relu", ["x"], ["y"])], [x], [y])
    _assert_one_line_error(_build(path, tmp_path), "input 'x'", "no elements", "0x3")


def test_zero_dim_given_with_shape_is_refused(tmp_path, relu_model):
    _assert_one_line_error(_build(relu_model, tmp_path, "--shape", "x=0x3"), "input 'x'", "no elements")


def test_cyclic_graph_names_a_node_of_the_cycle_and_the_file(tmp_path):
    nodes = [
        oh.make_node("Add", ["x", "b"], ["a"], name="n1"),
        oh.make_node("Relu", ["a"], ["b"], name="n2"),
        oh.make_node("Relu", ["a"], ["y"], name="n3"),
    ]
    result = _build(_save(tmp_path, "cycle.onnx", nodes), tmp_path)
    _assert_one_line_error(result, "cycle.onnx", "cycle", "'n1' (Add)", "'n2' (Relu)")
    assert "'n3'" not in result.output


def test_tensor_written_by_two_nodes_names_it_and_the_file(tmp_path):
    nodes = [oh.make_node("Relu", ["x"], ["y"], name="first"), oh.make_node("Neg", ["x"], ["y"], name="second")]
    result = _build(_save(tmp_path, "twice.onnx", nodes), tmp_path)
    _assert_one_line_error(result, "twice.onnx", "tensor 'y'", "'first'", "'second'")
    assert "_deserialize_graph" not in result.output


def test_external_data_on_a_tiny_model_writes_no_empty_data_file(tmp_path, relu_model):
    import json

    result = _build(relu_model, tmp_path, "--external-data")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert not (out / "model.onnx.data").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["files"] == ["model.onnx"] and manifest["artifact"]["external_data"] is False


def test_plot_into_a_missing_directory_is_refused_without_creating_it(tmp_path, relu_model):
    plot = tmp_path / "nonexistent" / "dir" / "x.png"
    result = runner.invoke(app, ["inspect", str(relu_model), "--memory", "--plot", str(plot)])
    _assert_one_line_error(result, "--plot", "does not exist")
    assert not (tmp_path / "nonexistent").exists()


def test_hard_linked_external_data_is_refused(tmp_path):
    import os

    path = _external_model(tmp_path, "ext.data")
    os.link(tmp_path / "ext.data", tmp_path / "another-name.data")
    _assert_one_line_error(_build(path, tmp_path), "edited.onnx", "ext.data", "hard links", "copy")


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["bogus"], "No such command 'bogus'"),
        (["build", "m.onnx", "--tolerance", "abc"], "'--tolerance'"),
        (["build", "m.onnx", "--threads", "x2"], "'--threads'"),
        (["build", "m.onnx", "--bogus"], "No such option: --bogus"),
        (["build"], "Missing argument"),
        (["cache", "info", "--bogus"], "--bogus"),
    ],
)
def test_usage_errors_are_one_line_and_exit_1(args, fragment):
    """Not click's boxed usage text with exit 2: the same contract as every user error."""
    result = runner.invoke(app, args)
    _assert_one_line_error(result, fragment, "--help")


def test_no_arguments_prints_the_help():
    result = runner.invoke(app, [])
    assert result.exit_code == 0 and "Usage: llmc" in result.output
