"""Our block quantizers (llmc.weight_only.blocks) against llama.cpp's formats and ONNX Runtime's kernels:
Q4_1 / Q8_0 grids come back exactly, and MatMulNBits (+ the offset term) and GatherBlockQuantized
compute with exactly the weights the blocks stand for."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
import onnxruntime as ort
import pytest

from llmc.weight_only.blocks import hqq_offsets, pack, q4_minmax, q8_digits, q8_symmetric, unpack
from llmc.weight_only.rewrite import Rewriter, register

K, N, BLOCK = 128, 48, 32


def _q4_1_grid(rng: np.random.Generator) -> np.ndarray:
    """A (K, N) weight as a dequantized Q4_1 tensor: fp16 scale and minimum per block of 32 along K,
    each block using codes 0 and 15 (as Q4_1's rounding always does)."""
    d = rng.uniform(0.001, 0.05, size=(N, K // BLOCK)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.4, 0.1, size=(N, K // BLOCK)).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, size=(N, K // BLOCK, BLOCK))
    q[..., 0], q[..., 1] = 0, 15
    return np.ascontiguousarray((d[..., None] * q + m[..., None]).reshape(N, K).T.astype(np.float32))


def test_q4_minmax_round_trips_a_q4_1_grid():
    weight = _q4_1_grid(np.random.default_rng(0))
    restored = q4_minmax(weight, BLOCK).dequantize()
    assert np.abs(restored - weight).max() <= 1e-6 * np.abs(weight).max()


def test_q4_minmax_on_float_weights_is_within_half_a_step():
    weight = np.random.default_rng(1).standard_normal((K, N)).astype(np.float32)
    blocks = q4_minmax(weight, BLOCK)
    step = np.repeat(blocks.scales, BLOCK, axis=1).T
    assert (np.abs(blocks.dequantize() - weight) <= step / 2 + 1e-6).all()
    constant = np.ones((K, N), np.float32)  # a constant block has no range: all of it is the offset
    assert np.array_equal(q4_minmax(constant, BLOCK).dequantize(), constant)


def test_q8_symmetric_is_exact_on_a_q8_0_grid():
    rng = np.random.default_rng(2)
    d = rng.uniform(0.001, 0.02, size=(N, K // BLOCK)).astype(np.float16).astype(np.float32)
    q = rng.integers(-127, 128, size=(N, K // BLOCK, BLOCK))
    q[..., 0] = 127
    weight = np.ascontiguousarray((d[..., None] * q).reshape(N, K).T.astype(np.float32))
    assert np.array_equal(q8_symmetric(weight, BLOCK).dequantize(), weight)


def test_pack_unpack_and_hqq_offsets():
    rng = np.random.default_rng(3)
    q = rng.integers(0, 16, size=(N, K // BLOCK, BLOCK)).astype(np.uint8)
    assert np.array_equal(unpack(pack(q, 4), 4), q)
    scales = rng.uniform(0.01, 0.1, size=(N, K // BLOCK)).astype(np.float32)
    zero = rng.uniform(0, 15, size=(N, K // BLOCK)).astype(np.float32)
    blocks = hqq_offsets(pack(q, 4), scales, zero, BLOCK, N)
    expected = (scales[..., None] * (q - zero[..., None])).reshape(N, K).T
    np.testing.assert_allclose(blocks.dequantize(), expected, atol=1e-6)


def _one_matmul(weight: np.ndarray) -> ir.Model:
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, K])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3, N])],
        [onh.from_array(weight, "w")],
    )
    return ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]))


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    model.opset_imports["com.microsoft"] = 1
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize(("bits", "level"), [(4, 0), (4, 4), (8, 4)])
def test_matmulnbits_with_offsets_computes_with_the_dequantized_weight(bits, level):
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((K, N)).astype(np.float32)
    blocks = q4_minmax(weight, BLOCK) if bits == 4 else q8_symmetric(weight, BLOCK)
    model = _one_matmul(weight)
    graph = model.graph
    values = [register(graph, "w_q", blocks.packed), register(graph, "w_scales", blocks.scales)]
    offsets = register(graph, "w_offsets", blocks.offsets.T.copy()) if blocks.offsets is not None else None
    Rewriter(graph).matmul([next(iter(graph))], values, offsets, bits, BLOCK, K, [N], level)
    x = rng.standard_normal((2, 3, K)).astype(np.float32)
    got = _run(model, {"x": x})
    expected = x @ blocks.dequantize()
    # accuracy_level 4 quantizes the activations to int8 per block: within ~1% of the output scale.
    tolerance = 1e-4 if level == 0 else 2e-2
    assert np.abs(got - expected).max() <= tolerance * np.abs(expected).max()


def test_gather_block_quantized_returns_the_dequantized_rows():
    rng = np.random.default_rng(5)
    table = rng.standard_normal((N, K)).astype(np.float32)  # N rows of width K
    blocks = q8_symmetric(table.T, BLOCK)
    graph = oh.make_graph(
        [oh.make_node("Gather", ["table", "ids"], ["rows"], name="embed")], "g",
        [oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2, 5])],
        [oh.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, [2, 5, K])],
        [onh.from_array(table, "table")],
    )
    model = ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]))
    packed = register(model.graph, "table_q", blocks.packed)
    scales = register(model.graph, "table_scales", blocks.scales.reshape(N, K // BLOCK, 1))
    Rewriter(model.graph).gather(next(iter(model.graph)), packed, scales, BLOCK, K)
    ids = rng.integers(0, N, size=(2, 5))
    got = _run(model, {"ids": ids})
    assert np.array_equal(got, blocks.dequantize().T[ids])


def test_q8_digits_are_exact_on_the_4bit_kernel():
    rng = np.random.default_rng(6)
    weight = rng.standard_normal((K, N)).astype(np.float32)
    blocks = q8_symmetric(weight, BLOCK)
    high, low = q8_digits(blocks)
    np.testing.assert_allclose(high.dequantize() + low.dequantize(), blocks.dequantize(), rtol=0, atol=1e-6)
    model = _one_matmul(weight)
    graph = model.graph
    zero = np.zeros((N, (K // BLOCK + 1) // 2), np.uint8)
    Rewriter(graph).matmul_digits(
        next(iter(graph)),
        [register(graph, "h", high.packed), register(graph, "hs", high.scales)],
        [register(graph, "l", low.packed), register(graph, "ls", low.scales), register(graph, "lz", zero)],
        BLOCK, K, N,
    )
    x = rng.standard_normal((2, 3, K)).astype(np.float32)
    expected = x @ blocks.dequantize()
    assert np.abs(_run(model, {"x": x}) - expected).max() <= 1e-5 * np.abs(expected).max()
