"""INT4 weight-only: MatMulNBits rewrite with its recorded settings, what stays float and why,
the top-1 agreement gate, the option checks and the CLI flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.compiler.options import BuildOptions
from llmc.errors import LlmcError
from llmc.int4.options import Int4Options
from tests.helpers import make_model

runner = CliRunner()


def _chain(path: Path | None = None) -> onnx.ModelProto | Path:
    """x (1, 8, 128) -> MatMul 128x64 -> Relu -> MatMul 64x48 -> Relu -> head MatMul 48x200 -> logits."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((128, 64)).astype(np.float32) / 8,
        "w2": rng.standard_normal((64, 48)).astype(np.float32) / 6,
        "w_head": rng.standard_normal((48, 200)).astype(np.float32),
    }
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h1"], name="up"),
        oh.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        oh.make_node("MatMul", ["r1", "w2"], ["h2"], name="down"),
        oh.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        oh.make_node("MatMul", ["r2", "w_head"], ["logits"], name="head"),
    ]
    model = make_model(
        nodes,
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 128])],
        [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 8, 200])],
        [onh.from_array(v, k) for k, v in weights.items()],
    )
    if path is None:
        return model
    onnx.save(model, path)
    return path


def _nbits(path: Path) -> dict[str, onnx.NodeProto]:
    model = onnx.load(path / "model.onnx")
    return {n.name: n for n in model.graph.node if n.op_type == "MatMulNBits" and n.domain == "com.microsoft"}


@pytest.mark.parametrize(("block", "symmetric"), [(32, True), (64, False), (128, False)])
def test_matmul_chain_settings_recorded_and_runs(tmp_path, block, symmetric):
    options = Int4Options(block_size=block, symmetric=symmetric, min_top1_agreement=0.5)
    art = llmc.build(_chain(), precision="int4", output=tmp_path / "o", int4=options)
    q = art.manifest["quantization"]
    nodes = _nbits(art.path)
    # K=128 always fits; K=64 only blocks of 32/64; the head (K=48) stays float by default.
    expected = {"up", "down"} if block <= 64 else {"up"}
    assert set(nodes) == expected
    for node in nodes.values():
        attrs = {a.name: oh.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == 4 and attrs["block_size"] == block
        assert len(node.input) == (3 if symmetric else 4)  # zero points only when asymmetric
    assert (q["precision"], q["block_size"], q["symmetric"], q["method"]) == ("int4", block, symmetric, "rtn")
    floats = {n["node"]: n["reason"] for n in q["nodes"] if n["precision"] == "float"}
    assert floats["head"].startswith("LM head")
    if block == 128:
        assert "not a multiple of --block-size 128" in floats["down"]
    assert q["weights_bytes"]["after"] < q["weights_bytes"]["before"] / 4
    assert q["gate"]["metric"] == "top1_agreement" and q["gate"]["passed"] and q["gate"]["samples"] == 4
    # The artifact loads and runs in plain ONNX Runtime.
    session = ort.InferenceSession(str(art.path / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"x": np.ones((1, 8, 128), np.float32)})
    assert logits.shape == (1, 8, 200) and np.isfinite(logits).all()


def test_head_quantized_on_request_and_accuracy_level(tmp_path):
    options = Int4Options(block_size=16, accuracy_level=4, quantize_head=True, min_top1_agreement=0.0)
    art = llmc.build(_chain(), precision="int4", output=tmp_path / "o", int4=options)
    nodes = _nbits(art.path)
    assert set(nodes) == {"up", "down", "head"}
    attrs = {a.name: oh.get_attribute_value(a) for a in nodes["head"].attribute}
    assert attrs["accuracy_level"] == 4 and attrs["K"] == 48 and attrs["N"] == 200
    assert art.manifest["quantization"]["lm_head"] == "int4"


def test_tiny_llama_rtn_and_hqq(tmp_path, tiny_llama_dynamo):
    for method in ("rtn", "hqq"):
        art = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / method, int4=Int4Options(method=method))
        q = art.manifest["quantization"]
        assert q["method"] == method and q["nodes_quantized"] == len(_nbits(art.path)) > 0
        head = [n for n in q["nodes"] if n["precision"] == "float" and n["reason"].startswith("LM head")]
        assert len(head) == 1  # the tied head: float, with its reason
        assert q["gate"]["metric"] == "top1_agreement" and q["gate"]["value"] >= 0.9
        assert art.manifest["verification"]["kv_cache_prefill_tokens"]  # the gate's feeds carry a computed cache
        manifest = json.loads((art.path / "manifest.json").read_text())
        assert manifest["precision"] == "int4"


def test_gate_fails_in_one_line(tmp_path):
    with pytest.raises(LlmcError) as info:
        llmc.build(_chain(), precision="int4", output=tmp_path / "o", int4=Int4Options(min_top1_agreement=1.01))
    message = str(info.value)
    assert "\n" not in message and "--min-top1-agreement 1.01" in message and "--precision int8" in message
    assert not (tmp_path / "o").exists()


def test_option_checks_are_one_line():
    with pytest.raises(LlmcError, match="--target ort"):
        BuildOptions(target="trt", precision="int4", no_engine=True).check()
    for bad in ({"block_size": 48}, {"accuracy_level": 5}, {"method": "gptq"}, {"method": "hqq", "symmetric": True},
                {"min_top1_agreement": float("nan")}):
        with pytest.raises(LlmcError) as info:
            Int4Options(**bad)
        assert "\n" not in str(info.value)


def test_cache_key_carries_int4_options():
    default = BuildOptions(precision="int4").key_material()
    assert default != BuildOptions(precision="int4", int4=Int4Options(block_size=64)).key_material()
    assert BuildOptions().key_material()["int4"] is None


def test_cli_flags(tmp_path):
    model = _chain(tmp_path / "chain.onnx")
    out = tmp_path / "o"
    result = runner.invoke(app, [
        "build", str(model), "-o", str(out), "--precision", "int4", "--block-size", "64", "--symmetric",
        "--accuracy-level", "4", "--int4-method", "rtn", "--min-top1-agreement", "0.5",
    ])
    assert result.exit_code == 0, result.output
    q = json.loads((out / "manifest.json").read_text())["quantization"]
    assert (q["block_size"], q["symmetric"], q["accuracy_level"]) == (64, True, 4)
    assert "int4 (rtn, block 64, symmetric" in result.output
    result = runner.invoke(app, ["build", str(model), "-o", str(tmp_path / "t"), "-t", "trt", "--precision", "int4"])
    assert result.exit_code != 0
    assert result.output.strip().count("\n") == 0 and "--target ort" in result.output
