"""Attention sinks (llmc.passes.fusion.sinks): what ONNX Runtime's ``head_sink`` computes, and
which sinks the rule takes. The whole path (GPT-OSS exported, fused, judged against transformers
on left-padded batches) is tests/compiler/test_family_builds.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest

from llmc.passes.fusion.sinks import head_sinks

TP = onnx.TensorProto
HEADS, HEAD, PAST, NEW = 2, 16, 5, 3


def _attention(query, key, value, past_key, past_value, sinks):  # noqa: ANN001, ANN202
    """GPT-OSS's attention in numpy: the sink a column of the softmax, dropped after it."""
    keys = np.concatenate([past_key, key.reshape(1, NEW, HEADS, HEAD).transpose(0, 2, 1, 3)], axis=2)
    values = np.concatenate([past_value, value.reshape(1, NEW, HEADS, HEAD).transpose(0, 2, 1, 3)], axis=2)
    q = query.reshape(1, NEW, HEADS, HEAD).transpose(0, 2, 1, 3)
    scores = q @ keys.transpose(0, 1, 3, 2) / np.sqrt(HEAD)
    total = PAST + NEW
    causal = np.arange(total)[None, :] <= (PAST + np.arange(NEW))[:, None]
    scores = np.where(causal, scores, -np.inf)
    combined = np.concatenate([scores, np.broadcast_to(sinks.reshape(1, HEADS, 1, 1), (1, HEADS, NEW, 1))], axis=-1)
    weights = np.exp(combined - combined.max(-1, keepdims=True))
    weights = (weights / weights.sum(-1, keepdims=True))[..., :-1]
    return (weights @ values).transpose(0, 2, 1, 3).reshape(1, NEW, HEADS * HEAD)


def test_head_sink_is_the_sink_column_of_the_softmax():
    node = oh.make_node(
        "GroupQueryAttention",
        ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total", "", "", "", "", "sinks"],
        ["out", "present_key", "present_value"], domain="com.microsoft", num_heads=HEADS, kv_num_heads=HEADS,
    )
    hidden = HEADS * HEAD
    inputs = [oh.make_tensor_value_info(n, TP.FLOAT, [1, NEW, hidden]) for n in ("q", "k", "v")] + [
        oh.make_tensor_value_info(n, TP.FLOAT, [1, HEADS, PAST, HEAD]) for n in ("past_key", "past_value")
    ] + [
        oh.make_tensor_value_info("seqlens_k", TP.INT32, [1]), oh.make_tensor_value_info("total", TP.INT32, []),
        oh.make_tensor_value_info("sinks", TP.FLOAT, [HEADS]),
    ]
    graph = oh.make_graph([node], "sinks", inputs, [oh.make_tensor_value_info("out", TP.FLOAT, None)])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, NEW, hidden), dtype=np.float32) for n in ("q", "k", "v")}
    feeds |= {n: rng.standard_normal((1, HEADS, PAST, HEAD), dtype=np.float32) for n in ("past_key", "past_value")}
    feeds |= {"seqlens_k": np.array([PAST + NEW - 1], np.int32), "total": np.array(PAST + NEW, np.int32)}
    for sinks in (np.array([2.0, -1.0], np.float32), np.array([8.0, 8.0], np.float32)):
        got = session.run(["out"], {**feeds, "sinks": sinks})[0]
        expected = _attention(feeds["q"], feeds["k"], feeds["v"], feeds["past_key"], feeds["past_value"], sinks)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # a large sink takes most of the weight: the output shrinks (the sink is not a no-op)
    small = session.run(["out"], {**feeds, "sinks": np.full(HEADS, -30.0, np.float32)})[0]
    assert np.abs(got).mean() < 0.5 * np.abs(small).mean()


def _value(array: np.ndarray | None) -> ir.Value:
    value = ir.Value(name="sinks")
    if array is not None:
        value.const_value = ir.tensor(array)
    return value


@pytest.mark.parametrize("shape", [(1, HEADS, 1, 1), (HEADS, 1, 1)])
def test_head_sinks_takes_one_constant_per_head(shape):
    array = np.arange(HEADS, dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(head_sinks(_value(array)), np.arange(HEADS, dtype=np.float32))


@pytest.mark.parametrize("shape", [(1, HEADS, 2, 1), (HEADS,), (1, 1, HEADS, 1)])
def test_head_sinks_refuses_other_layouts(shape):
    assert head_sinks(_value(np.zeros(shape, np.float32))) is None


def test_head_sinks_refuses_a_computed_value():
    assert head_sinks(_value(None)) is None
