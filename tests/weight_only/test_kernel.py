"""llmc's 4-bit kernel (ai.llmc::MatMulInt4): the same products as MatMulNBits, a row's output the
same alone or batched and on either path, the build's rewrite (offsets folded, reasons kept),
``--int4-kernel`` and the one-line error where the library is missing."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
import onnxruntime as ort
import pytest

import llmc
import llmc.kernels as kernels
from llmc.errors import LlmcError
from llmc.runtime.ort.loader import SessionConfig, create_session
from llmc.weight_only.kernel import check, pack, resolve, use_kernels
from llmc.weight_only.options import Int4Options
from tests.weight_only.test_int4 import _chain

pytestmark = pytest.mark.skipif(kernels.unavailable() is not None, reason=f"{kernels.unavailable()}")
vector_path = pytest.mark.skipif(
    not kernels.fast_path(), reason=kernels.unavailable() or "this CPU has neither AVX-512 nor AVX2 with FMA"
)


def _nbits_model(k: int, n: int, block: int, zero_points: bool, seed: int = 0, **attrs: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    blocks = k // block
    b = rng.integers(0, 256, size=(n, blocks, block // 2), dtype=np.uint8)
    scales = (rng.random((n, blocks), dtype=np.float32) * 0.02 + 0.001).astype(np.float32)
    inits = [onh.from_array(b, "B"), onh.from_array(scales, "S")]
    inputs = ["A", "B", "S"]
    if zero_points:
        inits.append(onh.from_array(rng.integers(0, 256, size=(n, (blocks + 1) // 2), dtype=np.uint8), "Z"))
        inputs.append("Z")
    node = oh.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", name="mm", K=k, N=n, bits=4,
                        block_size=block, **attrs)
    graph = oh.make_graph(
        [node], "g", [oh.make_tensor_value_info("A", onnx.TensorProto.FLOAT, ["M", k])],
        [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["M", n])], inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)])


def _session(model: onnx.ModelProto | ir.Model):
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    return create_session(proto.SerializeToString(), SessionConfig(intra_op_num_threads=2))


@pytest.mark.parametrize(("k", "n", "block", "zero_points"), [(576, 960, 32, False), (64, 40, 16, True),
                                                             (128, 17, 32, True), (256, 33, 64, False),
                                                             (64, 80, 32, False)])
def test_same_products_as_matmulnbits_alone_or_batched_on_either_path(k, n, block, zero_points):
    proto = _nbits_model(k, n, block, zero_points)
    reference = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    model = ir.serde.deserialize_model(proto)
    assert use_kernels(model)["nodes"] == 1
    assert [node.op_type for node in model.graph] == ["MatMulInt4"]
    session = _session(model)
    initializers = {init.name: onh.to_array(init) for init in proto.graph.initializer}
    packed = pack(initializers["B"], initializers["S"], initializers.get("Z"), n, k, block)
    rng = np.random.default_rng(1)
    for rows in (1, 3, 8, 10, 13):  # 10 and 13: a chunk of 8 rows, then 2 or 5
        a = rng.standard_normal((rows, k), dtype=np.float32)
        expected = reference.run(None, {"A": a})[0]
        (got,) = session.run(None, {"A": a})
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
        alone = np.concatenate([session.run(None, {"A": a[i : i + 1]})[0] for i in range(rows)])
        assert np.array_equal(alone, got)  # bitwise: the row count changes nothing
        for path in kernels.PATHS[: kernels.PATHS.index(kernels.path()) + 1]:  # each path this CPU has
            assert np.array_equal(kernels.int4_matmul(a, *packed, n, block, on=path), got), path


def test_what_the_kernel_does_not_take_keeps_its_reason():
    def reason(**attrs: int) -> str:
        model = ir.serde.deserialize_model(_nbits_model(64, 16, 16, False, **attrs))
        return check(next(iter(model.graph)))

    assert reason(accuracy_level=4) == "accuracy level 4 (the kernel computes in float32)"
    assert not isinstance(reason(accuracy_level=1), str)
    model = ir.serde.deserialize_model(_nbits_model(64, 16, 16, False))
    node = next(iter(model.graph))
    node.attributes["bits"] = ir.AttrInt64("bits", 8)
    assert check(node) == "8-bit weights (the kernel is 4-bit)"
    record = use_kernels(model)
    assert record["nodes"] == 0 and record["kept"] == {"8-bit weights (the kernel is 4-bit)": 1}


def test_minmax_offsets_fold_into_the_kernel(tmp_path):
    options = Int4Options(min_top1_agreement=0.5, kernel="ort")
    art = llmc.build(_chain(), precision="int4", output=tmp_path / "o", int4=options)
    proto = onnx.load(art.path / "model.onnx")
    model = ir.serde.deserialize_model(proto)
    record = use_kernels(model)
    assert (record["nodes"], record["offsets_folded"]) == (2, 2)
    ops = [node.op_type for node in model.graph]
    assert ops.count("MatMulInt4") == 2 and "MatMulNBits" not in ops and ops.count("MatMul") == 1  # the float head
    x = np.random.default_rng(2).standard_normal((1, 8, 128), dtype=np.float32)
    expected = _session(proto).run(None, {"x": x})[0]
    got = _session(model).run(None, {"x": x})[0]
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


@vector_path
def test_build_runs_the_kernel_and_a_prompt_decodes_the_same_alone_or_batched(tmp_path, tiny_llama_dynamo):
    art = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "o", int4=Int4Options(kernel="llmc"))
    kernel = art.manifest["quantization"]["kernel"]
    assert kernel["op"] == "ai.llmc::MatMulInt4" and kernel["nodes"] > 0 and kernel["offsets_folded"] == kernel["nodes"]
    ops = {n.op_type for n in onnx.load(art.path / "model.onnx").graph.node}
    assert "MatMulInt4" in ops
    runner = llmc.load(art.path)
    prompts = [[5, 17, 9, 40, 22, 7], [3, 8, 1], [11, 12, 13, 14]]
    batched = runner.generate(prompts, max_new_tokens=12, min_new_tokens=12)
    for prompt, together in zip(prompts, batched, strict=True):
        assert runner.generate(prompt, max_new_tokens=12, min_new_tokens=12).tokens == together.tokens
    ort_art = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "ort", int4=Int4Options(kernel="ort"))
    assert ort_art.manifest["quantization"]["kernel"] == {"op": "com.microsoft::MatMulNBits", "nodes": 0,
                                                          "reason": "--int4-kernel ort"}
    x = [5, 17, 9, 40, 22, 7]
    theirs, ours = llmc.load(ort_art.path).logits(x), runner.logits(x)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_int4_kernel_option_is_checked_before_any_work():
    assert resolve("ort", "cpu") == "--int4-kernel ort"
    assert resolve("auto", "cpu") is None if kernels.fast_path() else resolve("auto", "cpu")
    assert "CPU kernels" in resolve("auto", "cuda")
    with pytest.raises(LlmcError, match="--int4-kernel llmc cannot be used: llmc's kernels are CPU kernels"):
        resolve("llmc", "cuda")
    with pytest.raises(LlmcError, match="--int4-kernel must be one of auto, llmc, ort"):
        Int4Options(kernel="fast")


@vector_path
def test_an_artifact_with_the_kernel_names_the_fix_where_the_library_is_missing(tmp_path, monkeypatch):
    art = llmc.build(_chain(), precision="int4", output=tmp_path / "o",
                     int4=Int4Options(min_top1_agreement=0.5, kernel="llmc"))
    monkeypatch.setattr(kernels, "library", lambda: None)
    with pytest.raises(LlmcError) as error:
        llmc.load(art.path).run({"x": np.zeros((1, 8, 128), np.float32)})
    message = str(error.value)
    assert "MatMulInt4 is llmc's own CPU kernel and cannot run here: llmc's kernel library was not built" in message
    assert "--int4-kernel ort" in message and "\n" not in message


def _offset_graph(term_from_block_sums: bool, output_too: bool = False) -> onnx.ModelProto:
    """MatMulNBits(A) + MatMul(h, C), h = A @ S (the 0/1 block-sum matrix) or an unrelated input H of
    the same shape (a low-rank update whose rank is K / block); unused graph input U with a default."""
    proto = _nbits_model(64, 16, 32, False)
    rng = np.random.default_rng(3)
    graph = proto.graph
    graph.node[0].output[0] = "P"
    ones = np.kron(np.eye(2, dtype=np.float32), np.ones((32, 1), np.float32))
    graph.initializer.extend([onh.from_array(ones, "Ssum"), onh.from_array(rng.standard_normal((2, 16)).astype(np.float32), "C"),
                              onh.from_array(np.ones(3, np.float32), "U")])
    h = "h"
    if term_from_block_sums:
        graph.node.append(oh.make_node("MatMul", ["A", "Ssum"], ["h"], name="sums"))
    else:
        graph.input.append(oh.make_tensor_value_info("H", onnx.TensorProto.FLOAT, ["M", 2]))
        h = "H"
    graph.node.extend([oh.make_node("MatMul", [h, "C"], ["T"], name="term"), oh.make_node("Add", ["P", "T"], ["Y"], name="add")])
    graph.input.append(oh.make_tensor_value_info("U", onnx.TensorProto.FLOAT, [3]))
    if output_too:
        graph.output.append(oh.make_tensor_value_info("P", onnx.TensorProto.FLOAT, ["M", 16]))
    return proto


@pytest.mark.parametrize(("from_sums", "output_too", "folded"), [(True, False, 1), (False, False, 0), (True, True, 0)])
def test_only_a_block_sum_offset_term_folds_and_nothing_else_goes(from_sums, output_too, folded):
    proto = _offset_graph(from_sums, output_too)
    model = ir.serde.deserialize_model(proto)
    assert use_kernels(model)["offsets_folded"] == folded
    assert "U" in model.graph.initializers  # an unread graph input keeps its default
    rng = np.random.default_rng(4)
    feeds = {"A": rng.standard_normal((3, 64), dtype=np.float32)}
    if not from_sums:
        feeds["H"] = rng.standard_normal((3, 2), dtype=np.float32)
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = _session(model).run(None, feeds)
    for e, g in zip(expected, got, strict=True):
        assert np.abs(g - e).max() <= 1e-5 * np.abs(e).max()


def test_a_library_that_does_not_load_is_not_registered(monkeypatch, tmp_path):
    broken = tmp_path / "_ops.so"
    broken.write_bytes(b"not a library")
    monkeypatch.setattr(kernels, "library", lambda: broken)
    monkeypatch.setattr(kernels, "_handle", lambda: kernels.ctypes.CDLL(str(broken)))
    assert "does not load" in kernels.unavailable()
    relu = oh.make_model(oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g",
                                       [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                                       [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])]),
                         opset_imports=[oh.make_opsetid("", 17)])
    assert _session(relu).run(None, {"x": np.array([-1, 2], np.float32)})[0].tolist() == [0, 2]


def test_a_library_an_older_llmc_built_is_reported_not_called(monkeypatch):
    class Old:  # its exports before llmc_kernels_abi
        pass

    monkeypatch.setattr(kernels, "_handle", lambda: Old())
    assert "built by another llmc version" in kernels.unavailable()
    assert kernels.path() is None and kernels.state().startswith("none (")


@vector_path
def test_per_node_choice_times_float_settings_on_the_kernel_the_build_runs(tmp_path, monkeypatch):
    import llmc.weight_only.choose as choose

    timed = []
    real = choose.use_kernels
    monkeypatch.setattr(choose, "use_kernels", lambda model: timed.append(real(model)))
    options = Int4Options(block_size="auto", accuracy_level="auto", min_top1_agreement=0.5, kernel="llmc")
    art = llmc.build(_chain(), precision="int4", output=tmp_path / "o", int4=options)
    assert art.manifest["quantization"]["per_node_choice"]["groups"]
    assert any(record["nodes"] for record in timed)  # level-0 candidates were timed as MatMulInt4
    timed.clear()
    llmc.build(_chain(), precision="int4", output=tmp_path / "ort", int4=dataclasses.replace(options, kernel="ort"))
    assert timed == []
