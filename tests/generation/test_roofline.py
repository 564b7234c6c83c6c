"""The decode roofline (``llmc bench --decode``): bytes counted per step, op-type times from ONNX
Runtime's profiler, the report's JSON and plot, the CLI's one-line refusals. No timing thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import numpy_helper as nh
from typer.testing import CliRunner

from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.generation.roofline import decode_roofline
from llmc.generation.roofline_report import plot_roofline, render_roofline
from llmc.generation.traffic import step_traffic
from llmc.model.decoder import graph_io, parse
from tests.cli.test_bad_inputs import _assert_one_line_error

runner = CliRunner()
VOCAB, HIDDEN, HEADS, HEAD = 50, 8, 2, 4
FLOAT = 4


def _decoder(path: Path, tied: bool = False) -> Path:
    """One layer's cache in the decoder contract: an embedding Gather, a key projection (MatMul),
    the cache concatenated, and an LM head (MatMul on its own weights or, ``tied``, the embedding's
    through a second input)."""
    rng = np.random.default_rng(0)
    weights = {
        "embed": rng.standard_normal((VOCAB, HIDDEN)), "w_k": rng.standard_normal((HIDDEN, HIDDEN)),
        "lm_head": rng.standard_normal((HIDDEN, VOCAB)),
    }
    inits = [nh.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    inits.append(nh.from_array(np.array([0, 0, HEADS, HEAD], np.int64), "kv_shape"))
    nodes = [
        oh.make_node("Gather", ["embed", "input_ids"], ["h"], name="embed_gather"),
        oh.make_node("MatMul", ["h", "w_k"], ["k"], name="k_proj"),
        oh.make_node("Reshape", ["k", "kv_shape"], ["k4"], name="k_reshape"),
        oh.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 1, 3], name="k_transpose"),
        oh.make_node("Concat", ["past_key_values.0.key", "kt"], ["present.0.key"], axis=2, name="cat_k"),
        oh.make_node("Concat", ["past_key_values.0.value", "kt"], ["present.0.value"], axis=2, name="cat_v"),
        oh.make_node("MatMul", ["h", "lm_head"], ["logits"], name="lm_head"),
    ]
    outputs = [oh.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", VOCAB])]
    extra_inputs = []
    if tied:  # the table read whole as well: by a MatMul of a [.., VOCAB] input
        nodes.append(oh.make_node("MatMul", ["probe", "embed"], ["probed"], name="tied"))
        extra_inputs.append(oh.make_tensor_value_info("probe", TensorProto.FLOAT, [1, VOCAB]))
        outputs.append(oh.make_tensor_value_info("probed", TensorProto.FLOAT, [1, HIDDEN]))

    def cache(name: str, length: str):
        return oh.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", HEADS, length, HEAD])

    graph = oh.make_graph(
        nodes, "tiny_decoder",
        [
            oh.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            oh.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
            cache("past_key_values.0.key", "past"), cache("past_key_values.0.value", "past"), *extra_inputs,
        ],
        [*outputs, cache("present.0.key", "total"), cache("present.0.value", "total")],
        inits,
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]), path)
    return path


SIZES = {"embed": VOCAB * HIDDEN * FLOAT, "w_k": HIDDEN * HIDDEN * FLOAT, "lm_head": HIDDEN * VOCAB * FLOAT, "kv_shape": 4 * 8}
ROW = HIDDEN * FLOAT  # one embedding row


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    return _decoder(tmp_path_factory.mktemp("roofline") / "decoder.onnx")


@pytest.fixture(scope="module")
def report(decoder):
    return decode_roofline(decoder, context=16, steps=6, warmup=1, threads=1, bandwidth_gbs=10.0)


def test_bytes_count_weights_read_whole_and_only_the_gathered_rows(report):
    assert report.weight_bytes == SIZES["w_k"] + SIZES["lm_head"] + SIZES["kv_shape"] + ROW
    assert report.gathered_out == SIZES["embed"] - ROW  # the embedding table, all but one row
    assert report.kv_bytes == 2 * HEADS * 16 * HEAD * FLOAT  # keys and values at 16 cached tokens
    by_op = {op.op_type: op for op in report.ops}
    assert by_op["MatMul"].bytes == SIZES["w_k"] + SIZES["lm_head"]
    assert by_op["Gather"].bytes == ROW
    assert by_op["Concat"].bytes == report.kv_bytes  # the op that reads the cache
    assert by_op["Transpose"].bytes == 0
    assert report.bytes_per_token == report.weight_bytes + report.kv_bytes
    assert report.floor_ms == pytest.approx(report.bytes_per_token / 10.0 / 1e6)


def test_a_table_read_whole_by_another_node_counts_once_and_whole(tmp_path):
    path = _decoder(tmp_path / "tied.onnx", tied=True)
    layout = parse(*graph_io(ir.load(str(path)).graph))
    traffic = step_traffic(path, layout, context=4)
    assert traffic.gathered_out == 0
    assert traffic.weights["MatMul"] == SIZES["w_k"] + SIZES["lm_head"] + SIZES["embed"]
    assert "Gather" not in traffic.weights
    assert traffic.nodes["MatMul"] == 3 and traffic.kv == {"Concat": 2 * HEADS * 4 * HEAD * FLOAT}


def test_op_type_times_come_from_the_profile_and_fit_in_the_step(report):
    by_op = {op.op_type: op for op in report.ops}
    assert {"Gather", "MatMul", "Reshape", "Transpose", "Concat"} <= set(by_op)
    assert by_op["MatMul"].nodes == 2 and by_op["MatMul"].kernels == 2 and by_op["Concat"].kernels == 2
    assert report.file_nodes == 7 and report.session_nodes == 7 and report.kernels_per_step == 7
    assert report.profiled == 6 and report.steps == 6 and report.ms_per_token > 0
    kernels = sum(op.ms for op in report.ops)
    assert 0 < kernels <= report.profiled_ms * 1.05  # the kernels run inside the profiled step
    assert sum(op.share for op in report.ops) <= 105
    assert report.between_kernels_ms == pytest.approx(max(0.0, report.profiled_ms - kernels))


def test_render_json_and_plot(report, tmp_path):
    text = render_roofline(report)
    for fragment in ("ms/token", "bytes read per token", "GB/s given", "% of floor", "nodes per step", "MatMul",
                     "(between kernels)", "only the rows read"):
        assert fragment in text, text
    markdown = render_roofline(report, markdown=True)
    assert "| op type | nodes |" in markdown and "| MatMul | 2 |" in markdown
    data = json.loads(json.dumps(report.to_dict()))
    assert data["bytes_per_token"] == report.bytes_per_token and data["ops"][0]["op_type"] == report.ops[0].op_type
    png = plot_roofline(report, tmp_path / "roofline.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bandwidth_is_measured_when_not_given():
    from llmc.runtime.bandwidth import measure_bandwidth
    from llmc.runtime.ort import SessionConfig

    assert measure_bandwidth(SessionConfig(intra_op_num_threads=1), mib=4, runs=2) > 0
    with pytest.raises(LlmcError, match="at least 1 MiB"):
        measure_bandwidth(mib=0)


def test_read_trace_assigns_kernels_to_runs(tmp_path):
    from llmc.runtime.ort import read_trace

    def node(name, op, ts, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [
        {"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 50},
        node("init_only", "Cast", 10, 1),  # outside every run
        {"cat": "Session", "name": "model_run", "ts": 100, "dur": 30},
        node("a", "MatMul", 105, 10), {"cat": "Node", "name": "a_fence_before", "ts": 104, "dur": 0},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 40},
        node("a", "MatMul", 205, 12), node("b", "Add", 220, 3),
    ]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps(events))
    runs = read_trace(trace)
    assert [r.us for r in runs] == [30, 40]
    assert [[(k.node, k.op_type, k.us) for k in r.kernels] for r in runs] == [
        [("a", "MatMul", 10)], [("a", "MatMul", 12), ("b", "Add", 3)]
    ]
    trace.write_text("{}")
    with pytest.raises(LlmcError, match="not an ONNX Runtime profile"):
        read_trace(trace)


def _invoke(*args):
    return runner.invoke(app, ["bench", *(str(a) for a in args)])


def test_cli_decode_json_and_plot(decoder, tmp_path):
    png = tmp_path / "r.png"
    result = _invoke(decoder, "--decode", "--context", 8, "--steps", 3, "--warmup", 1, "--threads", 1,
                     "--bandwidth", 5, "--plot", png, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["context"] == 8 and data["steps"] == 3 and data["bandwidth_gbs"] == 5.0
    assert data["kv_bytes"] == 2 * HEADS * 8 * HEAD * FLOAT
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = _invoke(decoder, "--decode", "--context", 8, "--steps", 2, "--warmup", 0, "--bandwidth", 5)
    assert text.exit_code == 0 and "decode roofline of" in text.output and "Concat" in text.output


def test_cli_defaults_are_the_librarys():
    from llmc.cli import bench
    from llmc.generation import roofline

    assert (bench.DEFAULT_CONTEXT, bench.DEFAULT_STEPS) == (roofline.DEFAULT_CONTEXT, roofline.DEFAULT_STEPS)


def test_cli_decode_refusals_are_one_line(decoder, relu_model, tmp_path):
    _assert_one_line_error(_invoke(relu_model, "--decode"), "not a decoder", "--decode", "without --decode")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    _assert_one_line_error(_invoke(plan, "--decode"), "TensorRT engine", "--target ort")
    _assert_one_line_error(_invoke(decoder, decoder, "--decode"), "--decode takes one decoder")
    _assert_one_line_error(_invoke(decoder, "--decode", "--shape", "input_ids=1x4"), "--shape does not apply")
    _assert_one_line_error(_invoke(decoder, "--decode", "--plot", tmp_path / "r.txt"), "write a .png")
    _assert_one_line_error(_invoke(decoder, "--context", 8), "--context is used with --decode")
    _assert_one_line_error(_invoke(decoder, "--decode", "--steps", 0, "--bandwidth", 5), "--steps must be >= 1")


def test_cli_decode_on_an_encoder_artifact_is_one_line(tiny_bert_legacy, tmp_path):
    import llmc

    out = tmp_path / "encoder"
    llmc.build(tiny_bert_legacy, output=out, cache=False)
    _assert_one_line_error(_invoke(out, "--decode", "--bandwidth", 5), str(out), "not a decoder", "--decode")


def test_rotary_caches_count_one_row(tmp_path):
    cos = nh.from_array(np.zeros((64, HEAD // 2), np.float32), "cos_cache")
    sin = nh.from_array(np.zeros((64, HEAD // 2), np.float32), "sin_cache")
    node = oh.make_node(
        "RotaryEmbedding", ["past_key_values.0.key", "position_ids", "cos_cache", "sin_cache"], ["present.0.key"],
        domain="com.microsoft", name="rope",
    )
    cache = [oh.make_tensor_value_info(n, TensorProto.FLOAT, [1, HEADS, "past", HEAD]) for n in ("past_key_values.0.key", "present.0.key")]
    graph = oh.make_graph(
        [node], "rope", [cache[0], oh.make_tensor_value_info("position_ids", TensorProto.INT64, [1, 1])], [cache[1]], [cos, sin]
    )
    path = tmp_path / "rope.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("com.microsoft", 1)]), path)
    traffic = step_traffic(path, parse(*graph_io(ir.load(str(path)).graph)), context=4)
    row = HEAD // 2 * FLOAT
    assert traffic.weights == {"RotaryEmbedding": 2 * row}
    assert traffic.gathered_out == 2 * (64 * row - row)


@pytest.fixture(scope="module")
def llama_artifact(tiny_llama_dynamo, tmp_path_factory) -> Path:
    import llmc

    out = tmp_path_factory.mktemp("roofline") / "llama"
    llmc.build(tiny_llama_dynamo, output=out, fusions={"gqa": True}, cache=False)
    return out


def test_an_artifact_with_a_shared_cache(llama_artifact):
    manifest = json.loads((llama_artifact / "manifest.json").read_text())
    report = decode_roofline(llama_artifact, context=8, steps=3, warmup=1, bandwidth_gbs=5.0)
    layers = 2
    kv_heads, head = 2, 64 // 4
    assert report.kv_bytes == layers * 2 * kv_heads * 8 * head * FLOAT
    by_op = {op.op_type: op for op in report.ops}
    assert manifest["fusions"]["GroupQueryAttention"] == layers  # the cache: one buffer per tensor, read by GQA
    assert by_op["GroupQueryAttention"].bytes == report.kv_bytes
    assert report.weight_bytes > 0 and report.gathered_out > 0
    assert report.kernels_per_step == report.session_nodes
