"""Per-node int4 settings chosen by measurement (``--block-size auto`` / ``--accuracy-level auto``):
the error model against ONNX Runtime's kernel, the choice rule, what the build writes and records."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.weight_only.blocks import q4_minmax
from llmc.weight_only.choose import TOLERANCE, candidates, int8_blocks, output_error
from llmc.weight_only.options import Int4Options
from llmc.weight_only.quantize import quantize_model
from tests.weight_only.test_int4 import _chain, _nbits

runner = CliRunner()


def _on_grid(kn: np.ndarray, block: int = 32) -> np.ndarray:
    return q4_minmax(kn, block).dequantize()


def test_candidates_follow_the_options():
    auto = Int4Options(block_size="auto", accuracy_level="auto")
    assert candidates(96, auto) == [(32, 0), (32, 4)]  # 64 and 128 do not divide 96
    assert candidates(128, auto) == [(b, lvl) for b in (32, 64, 128) for lvl in (0, 4)]
    assert candidates(128, Int4Options(block_size="auto", accuracy_level=4)) == [(32, 4), (64, 4), (128, 4)]
    assert candidates(128, Int4Options(block_size=64, accuracy_level="auto")) == [(64, 0), (64, 4)]


def test_output_error_is_float_rounding_on_a_grid_and_grows_off_it():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 128)).astype(np.float32)
    grid = _on_grid(rng.standard_normal((128, 40)).astype(np.float32))
    assert output_error(x, grid, 32, 0) < 1e-6
    assert output_error(x, grid, 64, 0) > 1e-3  # a coarser block leaves the grid
    assert 1e-4 < output_error(x, grid, 32, 4) < 2e-2  # int8 activations: small, not zero


def test_int8_activation_model_matches_the_level_4_kernel():
    """The error model's level 4 (int8 blocks of x into the symmetric kernel, float block sums
    for the offsets) is what ORT computes: within float rounding, 100x closer than the float path."""
    rng = np.random.default_rng(1)
    k, n, block = 256, 64, 32
    kn = rng.standard_normal((k, n)).astype(np.float32)
    x = (rng.standard_normal((4, k)) * np.linspace(0.1, 8, k)).astype(np.float32)  # outlier channels
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"], name="m")],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, k])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, n])],
        [onnx.numpy_helper.from_array(kn, "w")],
    )
    model = ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]))
    quantize_model(model, Int4Options(block_size=block, accuracy_level=4, embedding="float"))
    session = ort.InferenceSession(
        ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (kernel,) = session.run(None, {"x": x})
    blocks = q4_minmax(kn, block)
    weights, symmetric = blocks.dequantize(), dataclasses.replace(blocks, offsets=None).dequantize()
    modelled = int8_blocks(x, block) @ symmetric + x @ (weights - symmetric)  # offsets: float block sums
    float_path = x @ weights
    assert np.abs(kernel - modelled).max() < 0.01 * np.abs(kernel - float_path).max()


def test_auto_build_records_and_applies_each_groups_choice(tmp_path, tiny_llama_dynamo):
    options = Int4Options(
        block_size="auto", accuracy_level="auto", min_top1_agreement=0.0, max_perplexity_increase=10.0,
        kernel="ort",  # the choices are MatMulNBits settings, read back from the written nodes
    )
    art = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "o", int4=options)
    q = art.manifest["quantization"]
    choice = q["per_node_choice"]
    assert choice["groups"] and choice["tolerance"] == TOLERANCE
    nodes = {entry["node"]: entry for entry in q["nodes"]}
    written = {
        name: n
        for n in onnx.load(art.path / "model.onnx").graph.node
        if n.op_type == "MatMulNBits"
        for name in n.name.split("+")
    }
    for group in choice["groups"]:
        block, level = group["chosen"]
        measured = {(b, lvl): (err, us) for b, lvl, err, us in group["candidates"]}
        best = min(err for err, _ in measured.values())
        eligible = {key: us for key, (err, us) in measured.items() if err <= best * (1 + TOLERANCE) + 1e-7}
        assert (block, level) in eligible and eligible[block, level] == min(eligible.values())
        for name in group["nodes"]:
            assert (nodes[name]["block_size"], nodes[name]["accuracy_level"]) == (block, level)
            attrs = {a.name: a.i for a in written[name].attribute}
            assert (attrs["block_size"], attrs.get("accuracy_level", 0)) == (block, level)
    assert sum(q["int4_nodes_by_setting"].values()) == q["nodes_by_precision"]["int4"]


def test_auto_keeps_block_32_float_activations_on_weights_already_on_that_grid(tmp_path):
    model = _chain()
    for init in model.graph.initializer:
        if init.name in ("w1", "w2"):
            init.CopyFrom(onnx.numpy_helper.from_array(_on_grid(onnx.numpy_helper.to_array(init)), init.name))
    options = Int4Options(block_size="auto", accuracy_level="auto", min_top1_agreement=0.5, kernel="ort")
    art = llmc.build(model, precision="int4", output=tmp_path / "o", int4=options)
    assert [g["chosen"] for g in art.manifest["quantization"]["per_node_choice"]["groups"]] == [
        [32, 0],
        [32, 0],
    ]
    assert {a.name: a.i for a in _nbits(art.path)["up"].attribute}["block_size"] == 32


def test_auto_options_and_cli(tmp_path):
    for bad in ({"block_size": "fast"}, {"accuracy_level": "auto4"}, {"block_size": True}):
        with pytest.raises(LlmcError) as info:
            Int4Options(**bad)
        assert "\n" not in str(info.value)
    with pytest.raises(LlmcError, match="--weight-only"):
        Int4Options(body="int8", accuracy_level="auto")
    assert dataclasses.replace(Int4Options(block_size="auto"), block_size=64).block == 64
    source = _chain(tmp_path / "m.onnx")
    result = runner.invoke(
        app,
        [
            "build",
            str(source),
            "--precision",
            "int4",
            "--block-size",
            "auto",
            "--accuracy-level",
            "auto",
            "--min-top1-agreement",
            "0.5",
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "per-node int4 settings (measured)" in result.output
    result = runner.invoke(
        app, ["build", str(source), "--precision", "int4", "--block-size", "48", "-o", str(tmp_path / "p")]
    )
    assert result.exit_code == 1 and "--block-size must be one of" in result.output
