"""The decoder I/O contract (llmc.model.decoder): one parser of (name, shape, dtype) triples, the
names ``llmc export`` writes, the legacy ``past_*`` convention, the strict reading generation
needs (one error line each) and the GroupQueryAttention shared-buffer mode."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

from llmc.errors import LlmcError
from llmc.model import decoder
from tests.helpers import make_model

FLOAT = "tensor(float)"  # ONNX Runtime's spelling


def _hf(layers=2, kv_heads=2, head_size=8, dtype=FLOAT, positions=True):
    """(inputs, outputs) triples of an ``llmc export`` decoder."""
    cache = ("batch", kv_heads, "past_sequence", head_size)
    inputs = [
        ("input_ids", ("batch", "sequence"), "tensor(int64)"),
        ("attention_mask", ("batch", "total_sequence"), "tensor(int64)"),
        *([("position_ids", ("batch", "sequence"), "tensor(int64)")] if positions else []),
        *((name, cache, dtype) for name in decoder.past_names(layers)),
    ]
    total = ("batch", kv_heads, "total_sequence", head_size)
    outputs = [("logits", ("batch", "sequence", 32), FLOAT), *((n, total, dtype) for n in decoder.present_names(layers))]
    return inputs, outputs


def _require_error(inputs, outputs) -> str:
    with pytest.raises(LlmcError) as info:
        decoder.require(inputs, outputs, "art")
    message = str(info.value)
    assert "\n" not in message
    return message


# -- names ----------------------------------------------------------------------------------------


def test_names_llmc_export_writes_in_order():
    assert decoder.input_names(2) == [
        "input_ids", "attention_mask", "position_ids",
        "past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value",
    ]
    assert decoder.output_names(1) == ["logits", "present.0.key", "present.0.value"]


def test_present_for_and_layer_of_both_conventions():
    assert decoder.present_for("past_key_values.3.value") == "present.3.value"
    assert decoder.present_for("past_0") == "present_0"
    assert decoder.present_for("past_key_0") == "present_key_0"
    assert decoder.present_for("input_ids") is None
    assert [decoder.layer_of(n) for n in ("past_key_values.3.key", "present.12.value", "past_4", "present_5")] == [3, 12, 4, 5]
    assert [decoder.layer_of(n) for n in ("past_key_values.x.key", "present.3.query", "logits", "past_")] == [None] * 4


def test_name_predicates():
    assert decoder.is_decoder(["input_ids", "past_key_values.0.key"])
    assert not decoder.is_decoder(["input_ids", "attention_mask", "past_0"])  # not llmc export's
    assert decoder.is_cache_input("past_0") and decoder.is_cache_input("past_key_values.0.key")
    assert decoder.is_cache_output("present_0") and decoder.is_cache_output("present.0.key")
    assert not decoder.is_cache_output("presents") and not decoder.is_cache_input("pastry")
    assert decoder.is_logits("logits") and decoder.is_logits("lm_logits") and not decoder.is_logits(None)


# -- parse ----------------------------------------------------------------------------------------


def test_parse_llmc_export_names():
    layout = decoder.parse(*_hf(layers=3, kv_heads=4, head_size=16))
    assert (layout.num_layers, layout.kv_heads, layout.head_size, layout.kv_dtype) == (3, 4, 16, np.float32)
    assert layout.has_position_ids and not layout.shared_cache and not layout.masks_padding
    assert layout.past_names == decoder.past_names(3) and layout.present_names == decoder.present_names(3)
    assert layout.cache_inputs == tuple(decoder.past_names(3))
    assert (layout.past_input, layout.past_symbol) == ("past_key_values.0.key", "past_sequence")
    assert (layout.sequence_symbol, layout.total_symbol, layout.symbolic) == ("sequence", "total_sequence", True)


def test_parse_legacy_names():
    cache = ("batch", 2, "past", 8)
    inputs = [("input_ids", ("batch", "seq"), None), ("attention_mask", ("batch", "seq"), None),
              ("past_0", cache, FLOAT), ("past_1", cache, FLOAT)]
    outputs = [("logits", None, FLOAT), ("present_0", cache, FLOAT), ("present_1", cache, FLOAT)]
    layout = decoder.parse(inputs, outputs)
    assert layout.num_layers == 0 and layout.cache_inputs == ("past_0", "past_1")
    assert (layout.kv_heads, layout.head_size, layout.kv_dtype) == (2, 8, np.float32)
    assert (layout.past_symbol, layout.sequence_symbol) == ("past", "seq")
    assert layout.total_symbol is None  # the mask's length is the sequence's: no cache length to add
    assert not layout.has_position_ids


def test_parse_missing_pieces():
    assert decoder.parse([("input_ids", ("b", "s"), None)], [("logits", None, None)]) is None  # no cache
    fixed = decoder.parse([("input_ids", ("b", 7), None), ("past_0", ("b", 2, 5, 8), FLOAT)])
    assert fixed is not None and not fixed.symbolic and fixed.past_input is None
    no_rank = decoder.parse([("input_ids", ("b", "s"), None), ("past_0", None, FLOAT)])
    assert no_rank.cache_inputs == () and not no_rank.symbolic and no_rank.kv_heads is None


def test_heads_from_the_present_when_the_past_is_symbolic():
    inputs, outputs = _hf(kv_heads="kv", head_size="d")
    outputs = [(n, ("batch", 2, "total", 8) if n.startswith("present") else s, t) for n, s, t in outputs]
    layout = decoder.parse(inputs, outputs)
    assert (layout.kv_heads, layout.head_size) == (2, 8)


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ("tensor(float)", np.float32), ("tensor(float16)", np.float16), ("tensor(bfloat16)", None),
        (ir.DataType.FLOAT, np.float32), (ir.DataType.FLOAT16, np.float16), (ir.DataType.BFLOAT16, None),
        (np.float16, np.float16), (np.dtype("float32"), np.float32), (np.int64, None),
        (types.SimpleNamespace(name="HALF"), np.float16),  # TensorRT's DataType.HALF
        (None, None),
    ],
)
def test_kv_dtype_however_spelled(dtype, expected):
    assert decoder.kv_dtype_of(dtype) is expected


def test_parse_an_onnx_ir_graph_without_initializer_inputs():
    float_, int64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    proto = make_model(
        [oh.make_node("Identity", ["past_key_values.0.key"], ["present.0.key"]),
         oh.make_node("Identity", ["past_key_values.0.value"], ["present.0.value"]),
         oh.make_node("Cast", ["input_ids"], ["logits"], to=float_)],
        [oh.make_tensor_value_info("input_ids", int64, ["batch", "sequence"]),
         oh.make_tensor_value_info("attention_mask", int64, ["batch", "total"]),
         *(oh.make_tensor_value_info(n, float_, ["batch", 2, "past", 4]) for n in decoder.past_names(1)),
         oh.make_tensor_value_info("bias", float_, [1])],
        [oh.make_tensor_value_info("logits", float_, ["batch", "sequence"]),
         *(oh.make_tensor_value_info(n, float_, ["batch", 2, "past", 4]) for n in decoder.present_names(1))],
        [oh.make_tensor("bias", float_, [1], [0.0])],
    )
    model = ir.serde.deserialize_model(proto)
    inputs, outputs = decoder.graph_io(model.graph)
    assert "bias" not in [t.name for t in inputs]
    assert inputs[0] == decoder.Tensor("input_ids", ("batch", "sequence"), ir.DataType.INT64)
    layout = decoder.require(inputs, outputs, "model.onnx")
    assert (layout.num_layers, layout.kv_heads, layout.head_size, layout.kv_dtype) == (1, 2, 4, np.float32)
    assert layout.total_symbol == "total" and not layout.has_position_ids


def test_parse_a_session_and_an_engine_alike():
    inputs, outputs = _hf(layers=1)
    arg = lambda t: types.SimpleNamespace(name=t[0], shape=list(t[1]), type=t[2])  # noqa: E731
    session = types.SimpleNamespace(get_inputs=lambda: [arg(t) for t in inputs], get_outputs=lambda: [arg(t) for t in outputs])
    from_session = decoder.require(*decoder.session_io(session), "art")

    tensors = [(t, "INPUT") for t in inputs] + [(t, "OUTPUT") for t in outputs]
    by_name = {t[0]: (t, mode) for t, mode in tensors}
    engine = types.SimpleNamespace(
        num_io_tensors=len(tensors),
        get_tensor_name=lambda i: tensors[i][0][0],
        get_tensor_mode=lambda n: types.SimpleNamespace(name=by_name[n][1]),
        get_tensor_shape=lambda n: [d if isinstance(d, int) else -1 for d in by_name[n][0][1]],
        get_tensor_dtype=lambda n: types.SimpleNamespace(name="FLOAT"),
    )
    engine_inputs, engine_outputs = decoder.engine_io(engine)
    assert [t.name for t in engine_inputs] == [t[0] for t in inputs]
    from_engine = decoder.require(engine_inputs, engine_outputs, "art")
    for layout in (from_session, from_engine):
        assert (layout.num_layers, layout.kv_heads, layout.head_size, layout.kv_dtype) == (1, 2, 8, np.float32)
    assert from_engine.past_symbol is None  # -1, not a named symbol


def test_empty_past_for_prefill():
    layout = decoder.require(*_hf(layers=2, kv_heads=3, head_size=4, dtype="tensor(float16)"), "art")
    past = layout.empty_past(5)
    assert list(past) == decoder.past_names(2)
    assert all(a.shape == (5, 3, 0, 4) and a.dtype == np.float16 for a in past.values())


# -- require: one error line each, as llmc generate says them -------------------------------------


def test_require_refuses_what_is_not_an_llmc_export_decoder():
    encoder = [("input_ids", ("b", "s"), None), ("attention_mask", ("b", "s"), None)]
    assert _require_error(encoder, [("last_hidden_state", None, FLOAT)]) == (
        "art is not a decoder with a KV cache (inputs input_ids, attention_mask); llmc generate needs an "
        "`llmc export` decoder"
    )
    inputs, outputs = _hf()
    assert "is not a decoder with a KV cache" in _require_error(inputs, outputs[1:])  # no logits
    assert "is not a decoder" in _require_error(inputs[1:], outputs)  # no input_ids
    legacy = [*encoder, ("past_0", ("b", 2, "p", 8), FLOAT)]
    assert "is not a decoder" in _require_error(legacy, [("logits", None, FLOAT), ("present_0", None, FLOAT)])


def test_require_names_what_is_missing_or_unexpected():
    inputs, outputs = _hf(layers=2)
    message = _require_error(inputs, [o for o in outputs if o[0] != "present.1.value"])
    assert message.endswith("(missing present.1.value); llmc generate needs an `llmc export` decoder")
    message = _require_error([*inputs, ("token_type_ids", ("b", "s"), None)], outputs)
    assert "(unexpected token_type_ids)" in message
    gap = [i for i in inputs if not i[0].startswith("past_key_values.0.")]  # layers 1 only: 0 expected
    assert "(missing past_key_values.0.key, past_key_values.0.value)" in _require_error(gap, outputs)


def test_require_needs_fixed_heads_and_a_float_cache():
    inputs, outputs = _hf(kv_heads="kv")
    outputs = [(n, ("batch", "kv", "t", 8) if n.startswith("present") else s, t) for n, s, t in outputs]
    assert _require_error(inputs, outputs) == (
        "art: the KV cache's heads/head size are symbolic or its type is tensor(float); "
        "llmc generate needs fixed kv heads and head size and a float32/float16 cache"
    )
    assert "its type is tensor(bfloat16);" in _require_error(*_hf(dtype="tensor(bfloat16)"))


# -- the GroupQueryAttention shared-buffer mode ---------------------------------------------------


@pytest.mark.parametrize(
    "fused, masking, shared, masks",
    [
        (0, 0, False, False),  # no GroupQueryAttention (or no manifest)
        (1, 0, False, False),  # not every layer
        (2, 0, True, False),  # an older build (no gqa section): lengths from positions
        (2, 1, True, False),
        (2, 2, True, True),
        (0, 2, False, False),
    ],
)
def test_gqa_shared_buffer_flags_from_the_manifest(fused, masking, shared, masks):
    # The manifest's fusions[GroupQueryAttention] and gqa.padding_from_attention_mask (their types
    # are the manifest reader's: tests/runtime/test_manifest.py).
    layout = decoder.with_gqa(decoder.require(*_hf(layers=2), "art"), fused, masking)
    assert (layout.shared_cache, layout.masks_padding) == (shared, masks)
    assert layout.batches_left_padding == (not shared or masks)


def test_the_contract_imports_no_runtime():
    code = "import sys, llmc.model.decoder; print(sorted(m for m in sys.modules if m.startswith(('onnxruntime', 'tensorrt', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
