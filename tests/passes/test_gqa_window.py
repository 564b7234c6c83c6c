"""The attention mask judged by running it (llmc.passes.fusion.mask_probe) and what the
GroupQueryAttention rewrite takes from it: a sliding window, the SDPA's scale, partial rotation."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

from llmc.passes.fusion.mask_probe import mask_window

TP = onnx.TensorProto


def _mask_model(
    window: int | None, causal: bool = True, padding: bool = True, as_int_attribute: bool = False
) -> tuple[ir.Model, ir.Value]:
    """A boolean [B, 1, S, T] mask from the decoder inputs: causal (k <= P + q), the
    attention_mask's padding, and k > P + q - window when a window is given."""
    c = lambda name, value: oh.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.array(value, dtype=np.int64)))  # noqa: E731
    nodes = [
        c("zero", 0), c("one", 1), c("ax1", [1]), c("ax02", [0, 1]), c("ax0", [0]),
        oh.make_node("Constant", [], ["win"], value_int=window or 0) if as_int_attribute else c("win", window or 0),
        oh.make_node("Shape", ["attention_mask"], ["t1"], start=1, end=2),
        oh.make_node("Shape", ["input_ids"], ["s1"], start=1, end=2),
        oh.make_node("Squeeze", ["t1"], ["t"]), oh.make_node("Squeeze", ["s1"], ["s"]),
        oh.make_node("Sub", ["t", "s"], ["p"]),
        oh.make_node("Range", ["zero", "t", "one"], ["keys"]),
        oh.make_node("Range", ["p", "t", "one"], ["queries"]),
        oh.make_node("Unsqueeze", ["queries", "ax1"], ["qcol"]),
        oh.make_node("LessOrEqual", ["keys", "qcol"], ["causal"]),
        oh.make_node("Sub", ["qcol", "win"], ["low"]),
        oh.make_node("Greater", ["keys", "low"], ["inside"]),
        oh.make_node("And", ["causal", "inside"] if window else ["causal", "causal"], ["shape_ok"]),
        oh.make_node("Identity" if causal else "Not", ["shape_ok"], ["qk"]),
        oh.make_node("Unsqueeze", ["qk", "ax02"], ["qk4"]),
        oh.make_node("Cast", ["attention_mask"], ["pad_bool"], to=TP.BOOL),
        oh.make_node("Unsqueeze", ["pad_bool", "ax1"], ["pad3"]),
        oh.make_node("Unsqueeze", ["pad3", "ax1"], ["pad4"]),
        oh.make_node("And" if padding else "Or", ["qk4", "pad4"], ["mask"]),
    ]
    graph = oh.make_graph(
        nodes, "mask",
        [
            oh.make_tensor_value_info("input_ids", TP.INT64, ["batch", "sequence"]),
            oh.make_tensor_value_info("attention_mask", TP.INT64, ["batch", "total_sequence"]),
            oh.make_tensor_value_info("position_ids", TP.INT64, ["batch", "sequence"]),
            oh.make_tensor_value_info("past_key_values.0.key", TP.FLOAT, ["batch", 2, "past_sequence", 16]),
            oh.make_tensor_value_info("past_key_values.0.value", TP.FLOAT, ["batch", 2, "past_sequence", 16]),
        ],
        [oh.make_tensor_value_info("mask", TP.BOOL, None)],
    )
    model = ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]))
    mask = next(v for n in model.graph for v in n.outputs if v.name == "mask")
    return model, mask


@pytest.mark.parametrize("window", [None, 3, 8, 300])
def test_mask_window_reads_the_window_off_the_probes(window):
    model, mask = _mask_model(window)
    assert mask_window(model, mask) == (window or 0)


def test_a_mask_that_is_not_causal_is_refused():
    model, mask = _mask_model(None, causal=False)
    assert "not causal" in mask_window(model, mask)


def test_a_mask_without_the_padding_is_refused():
    model, mask = _mask_model(None, padding=False)
    assert "not causal" in mask_window(model, mask)


def test_a_window_beyond_the_probes_is_refused():
    model, mask = _mask_model(1 << 16)
    assert "larger than the probes reach" in mask_window(model, mask)


def test_a_window_no_tensor_constant_shows_is_still_found():
    # the window as a Constant's value_int: the long probe (MAX_WINDOW + 8 cached tokens) shows it
    model, mask = _mask_model(300, as_int_attribute=True)
    assert mask_window(model, mask) == 300
