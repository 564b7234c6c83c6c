"""2:4 sparsity: the magnitude mask, the zeros held through distillation, the export and the
int8/fp16 builds checked by the graph lint (llmc.model.sparsity), TensorRT's flag turned on."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.model import sparsity

torch = pytest.importorskip("torch")
runner = CliRunner()


def test_mask_keeps_the_two_largest_of_every_four():
    from llmc.compression.sparsity import mask_2_4

    weight = torch.tensor([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -0.2, 1.0]])
    assert mask_2_4(weight).tolist() == [[False, True, True, False, True, False, False, True]]


def test_is_2_4_reads_the_reduction_axis():
    dense = np.arange(1, 33, dtype=np.float32).reshape(8, 4)
    along_k = dense.copy()
    along_k[0::4] = along_k[1::4] = 0.0  # rows 0,1 of every 4 rows zero: 2:4 along axis 0 (K of a [K, N] MatMul B)
    assert sparsity.is_2_4(along_k, 0) and not sparsity.is_2_4(along_k, 1) and not sparsity.is_2_4(dense, 0)
    assert not sparsity.is_2_4(np.zeros((6, 4)), 0)  # K not a multiple of 4


def _graph(weight: np.ndarray, op: str, **attributes) -> ir.Model:
    x = ir.Value(name="x", shape=ir.Shape([2, weight.shape[0] if op == "MatMul" else weight.shape[1]]),
                 type=ir.TensorType(ir.DataType.FLOAT))
    w = ir.Value(name="w", const_value=ir.tensor(weight))
    node = ir.node(op, [x, w], attributes=attributes, name="mm")
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=[w], opset_imports={"": 21})
    return ir.Model(graph, ir_version=10)


def test_report_finds_weights_of_matmul_and_transposed_gemm():
    weight = np.ones((8, 4), np.float32)
    weight[0::4] = weight[1::4] = 0.0
    assert sparsity.report(_graph(weight, "MatMul")).sparse == ["mm"]
    assert sparsity.report(_graph(weight.T.copy(), "Gemm", transB=1)).sparse == ["mm"]
    assert sparsity.report(_graph(weight.T.copy(), "Gemm")).dense == ["mm"]


@pytest.fixture(scope="module")
def sparse_bert(bert4_dir, text, tmp_path_factory):
    out = tmp_path_factory.mktemp("sparse") / "bert"
    result = runner.invoke(app, ["compress", str(bert4_dir), "--data", str(text), "-o", str(out), "--sparsity", "2:4",
                                 "--minutes", "0.03", "--allow-loss"])
    assert result.exit_code == 0, result.output
    return out


def test_compress_2_4_holds_the_zeros_through_distillation_and_export(sparse_bert):
    from transformers import AutoModel

    report = json.loads((sparse_bert / "compress_report.json").read_text())
    assert report["sparsity"] == "2:4" and report["ffn_neurons"]["after"] == report["ffn_neurons"]["before"]
    assert report["distillation"]["steps"] >= 2
    assert report["sparsity_check"]["sparse_2_4"] >= 12  # q, k, v, o, FFN in and out, 2 layers
    student = AutoModel.from_pretrained(str(sparse_bert / "hf"))
    weight = student.encoder.layer[0].intermediate.dense.weight.detach()
    assert int((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1).max()) <= 2


PROFILES = ["input_ids:1x4:1x16:2x32", "attention_mask:1x4:1x16:2x32"]


def _trt_engine():
    from llmc.targets.trt.config import EngineSettings
    from llmc.targets.trt.profiles import parse_profile_specs

    return EngineSettings(profiles=parse_profile_specs(PROFILES))


@pytest.mark.parametrize(("target", "precision"), [("ort", "fp32"), ("ort", "int8"), ("trt", "int8"), ("trt", "fp16")])
def test_builds_keep_the_pattern_and_record_it(sparse_bert, target, precision, text, bert4_dir, tmp_path):
    extra = {"calibration_data": text, "tokenizer": bert4_dir} if precision == "int8" else {}
    if target == "trt":
        extra.update(no_engine=True, engine=_trt_engine())
    manifest = llmc.build(sparse_bert / "model.onnx", target=target, precision=precision, output=tmp_path / "a",
                          shapes={"input_ids": (1, 16)}, **extra).manifest
    found = manifest["sparsity"]
    assert found["source"]["sparse_2_4"] >= 12 and found["artifact"]["weights"] >= 1
    assert found["artifact"]["dense"] == [] and found["artifact"]["sparse_2_4"] == found["artifact"]["weights"]


def test_trt_build_turns_sparse_weights_on_and_dense_models_leave_it_off(sparse_bert, bert4_dir, tmp_path):
    from llmc.export.hf import export_pretrained

    engine = _trt_engine()
    sparse = llmc.build(sparse_bert / "model.onnx", target="trt", no_engine=True, output=tmp_path / "t",
                        shapes={"input_ids": (1, 16)}, engine=engine).manifest
    assert sparse["engine"]["flags"]["sparse_weights"] is True
    export_pretrained(bert4_dir, tmp_path / "dense")
    dense = llmc.build(tmp_path / "dense" / "model.onnx", target="trt", no_engine=True, output=tmp_path / "u",
                       shapes={"input_ids": (1, 16)}, engine=engine).manifest
    assert dense["engine"]["flags"]["sparse_weights"] is False and "sparsity" not in dense


def test_inspect_lints_the_pattern(sparse_bert):
    result = runner.invoke(app, ["inspect", str(sparse_bert / "model.onnx")])
    assert result.exit_code == 0 and "2:4 sparse matrix-product weights: 12 of 12" in result.output, result.output
    info = json.loads(runner.invoke(app, ["inspect", str(sparse_bert / "model.onnx"), "--json"]).output)
    assert info["sparsity"]["sparse_2_4"] == 12 and info["sparsity"]["dense"] == []
