"""GroupQueryAttention that keeps the exported model's answers on padded batches.

onnxscript's GQA rule (``onnxscript.rewriter.ort_fusions.gqa``) gives ONNX Runtime's
GroupQueryAttention each row's length as ``max(position_ids)``: right for unpadded rows, wrong for
left-padded ones, whose padding sits at the start of the KV cache and would be attended to. This
rule matches the same subgraph and writes the node so that the padding comes from the model's
own ``attention_mask``, as in the graph it replaces:

* ``seqlens_k`` is ``T - 1`` for every row and ``total_sequence_length`` is ``T``, the mask's
  length (past plus new tokens): the kernel's causal window and cache positions are those of the
  unfused graph, also when the runtime binds a KV buffer larger than ``T`` as past and present;
* ``attention_bias`` is ``-65504`` where the mask is 0 (the float16 minimum: finite in float16
  graphs, and ``exp`` of it is 0 in float32 as ``finfo.min`` is), broadcast to ``[B, 1, S, T]``;
* ``position_ids`` (the RotaryEmbedding's, the model input) drive the rotation;
* ``query_seqlens`` is the new tokens' count for every row (see below).

Measured against the unfused graph on left-padded batches: equal at every real position (the
tests); positions that are padding themselves (their rows attend to nothing) differ, as they are
meaningless in both. ``query_seqlens`` is every row's count of new tokens (all valid): without
it ONNX Runtime's CPU kernel refuses a batch of several rows whose new tokens are more than one
*and* follow a past (a chunked prefill of a batch); with it the kernel takes them.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions import gqa

from llmc.passes.fusion.mask_probe import mask_window

PAD_BIAS = float(np.finfo(np.float16).min)


class PaddingAwareGroupQueryAttention(gqa.GroupQueryAttention):
    """onnxscript's match; the node written with the mask's padding (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._windows: dict[ir.Value, int | str] = {}  # a mask's window, probed once for all layers

    def cleanup(self) -> None:
        self._windows.clear()

    def check(self, context, **bindings):  # noqa: ANN001
        result = super().check(context, **bindings)
        if not result:
            return result
        self._rotary = [rotary_attributes(bindings[name]) for name in ("query_BHSDh_rope", "key_BHkvSDh_rope")]
        return self.check_inputs(context, bindings, result)

    def check_inputs(self, context, bindings: dict, result: pattern.MatchResult) -> pattern.MatchResult:  # noqa: ANN001
        """llmc's checks of a matched attention: head size, the mask, the type, the attributes."""
        query = bindings.get("query_BSHDh")
        shape = query.shape if query is not None else None
        head = shape[3] if shape is not None and len(shape) == 4 else None
        if not isinstance(head, int) or head % 16:
            return pattern.MatchResult().fail(
                f"head size {head} is not a multiple of 16 (ONNX Runtime's GroupQueryAttention needs it)", query
            )
        mask = next((v for v in context.model.graph.inputs if v.name == "attention_mask"), None)
        if mask is None or mask.shape is None or len(mask.shape) != 2:
            return pattern.MatchResult().fail("no 2-D 'attention_mask' input to take the padding from", query)
        dtype = bindings["query_BSD"].dtype
        if dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
            return pattern.MatchResult().fail(f"query is {dtype}, not float32/float16", query)
        self._attention_mask, self._dtype = mask, dtype
        self._head_sink = None  # set by llmc.passes.fusion.sinks
        self._input_ids = next((v for v in context.model.graph.inputs if v.name == "input_ids"), None)
        found = _attention_attributes(context, bindings, self._windows)
        if isinstance(found, str):
            return pattern.MatchResult().fail(found, bindings.get("mask"))
        self._attributes = found
        return result

    def rewrite(  # noqa: PLR0913
        self, op, query_BSD, key_BSDkv, value_BSDkv, past_key, past_value, position_ids, cos, sin, mask,  # noqa: ANN001
        query_BSHDh, key_BSHkvDh, query_BSHDh_normalized=None, query_BHSDh_normalized=None,  # noqa: ANN001
        key_BSHkvDh_normalized=None, key_BHkvSDh_normalized=None, **_,  # noqa: ANN001, ANN003
    ):
        query_BSD = _normalized(op, query_BSHDh, query_BHSDh_normalized or query_BSHDh_normalized, query_BSD)
        key_BSDkv = _normalized(op, key_BSHkvDh, key_BHkvSDh_normalized or key_BSHkvDh_normalized, key_BSDkv)
        attention_mask = self._attention_mask
        batch = op.Shape(attention_mask, start=0, end=1)
        total = op.Shape(attention_mask, start=1, end=2)
        # The new tokens' count from input_ids where there is one: every layer's bias is then the
        # same subgraph of model inputs, which CSE shares (from the query it is one per layer).
        new = op.Shape(self._input_ids if self._input_ids is not None else query_BSD, start=1, end=2)
        one = op.Constant(value=ir.tensor([1], dtype=ir.DataType.INT64))
        seqlens_k = op.Cast(op.Expand(op.Sub(total, one), batch), to=ir.DataType.INT32)
        total_length = op.Cast(op.Squeeze(total), to=ir.DataType.INT32)
        is_pad = op.Equal(attention_mask, op.Constant(value=ir.tensor(0, dtype=attention_mask.dtype)))
        numpy_type = np.float16 if self._dtype == ir.DataType.FLOAT16 else np.float32
        pad = op.Where(
            is_pad, op.Constant(value=ir.tensor(numpy_type(PAD_BIAS))), op.Constant(value=ir.tensor(numpy_type(0)))
        )
        axes = op.Constant(value=ir.tensor([1, 2], dtype=ir.DataType.INT64))
        bias = op.Expand(op.Unsqueeze(pad, axes), op.Concat(batch, one, new, total, axis=0))
        if self._rotary is not None:  # None: a layer without RoPE (llmc.passes.fusion.gqa_nope)
            query_BSD = op.RotaryEmbedding(
                query_BSD, position_ids, cos, sin, num_heads=self.num_heads, _domain="com.microsoft", **self._rotary[0]
            )
            key_BSDkv = op.RotaryEmbedding(
                key_BSDkv, position_ids, cos, sin, num_heads=self.kv_num_heads, _domain="com.microsoft", **self._rotary[1]
            )
        trailing: list = [None] * (QUERY_SEQLENS - TRAILING + 1)
        if self._head_sink is not None:
            trailing[0] = op.Constant(value=ir.tensor(self._head_sink.astype(numpy_type)))
        # every row's new tokens are all valid: lets the kernel take a chunk after a past in a batch
        trailing[-1] = op.Cast(op.Expand(new, batch), to=ir.DataType.INT32)
        return op.GroupQueryAttention(
            query_BSD, key_BSDkv, value_BSDkv, past_key, past_value, seqlens_k, total_length, None, None, None, bias,
            *trailing, num_heads=self.num_heads, kv_num_heads=self.kv_num_heads, _domain="com.microsoft", _outputs=3,
            **self._attributes,
        )


def _attention_attributes(context, bindings, windows: dict) -> dict | str:  # noqa: ANN001
    """GroupQueryAttention's ``scale`` and ``local_window_size`` for the matched attention, or why
    it cannot express it: the SDPA's scale when not the default ``1/sqrt(head)``; a sliding-window
    causal mask of ``W`` keys (``k > q - W``, the query's own key among them) is
    ``local_window_size = W``, as onnxruntime-genai's builder writes it (measured exact against
    the unfused graph on caches longer than the window: tests/passes/test_gqa_window.py)."""
    mask, query = bindings["mask"], bindings["query_BHSDh_rope"]
    sdpa = next(
        (u.node for u in mask.uses() if u.node.op_type in ("SDPA", "SoftcapSDPA", "SinkSDPA") and u.node.inputs[0] is query), None
    )
    if sdpa is None:
        return "the attention's SDPA node is not found beside its mask"
    attributes: dict = {}
    for name in ("scale", "softcap"):  # softcap: llmc.passes.fusion.softcap (sinks: .sinks)
        value = sdpa.attributes.get_float(name, None)
        if value is not None:
            attributes[name] = float(value)
    if mask not in windows:  # probed once per mask value, shared by every layer
        windows[mask] = mask_window(context.model, mask)
    window = windows[mask]
    if isinstance(window, str):
        return window
    if window:
        attributes["local_window_size"] = window
    return attributes


def rotary_attributes(rotated: ir.Value) -> dict:
    """The matched RotaryEmbedding's own attributes (``interleaved``, ``rotary_embedding_dim`` of a
    partial rotation, ``scale``), re-used on the 3-D node the rewrite writes."""
    node = rotated.producer()
    return {name: attr.value for name, attr in node.attributes.items() if name != "num_heads"}


def _normalized(op, unnormalized, normalized, fallback):  # noqa: ANN001, ANN202
    """onnxscript's handling of a q/k RMSNorm: applied before the head transpose, which GQA does."""
    if normalized is None:
        return fallback
    node = normalized.producer()
    applied = op.SimplifiedLayerNormalization(unnormalized, node.inputs[1], **node.attributes)
    return op.Reshape(applied, op.Constant(value=ir.tensor([0, 0, -1], dtype=ir.DataType.INT64)))


TRAILING = 11  # GroupQueryAttention's inputs from head_sink on (head_sink, ..., query_seqlens)
QUERY_SEQLENS = 16


def trailing_inputs(attention: ir.Node) -> list[ir.Value | None]:
    """The attention's inputs from ``head_sink`` on, for a rule that re-writes a GroupQueryAttention
    matched on its first 11 inputs to keep them."""
    return list(attention.inputs[TRAILING:])


def gqa_rules() -> list:
    return [pattern.RewriteRuleSet([PaddingAwareGroupQueryAttention.rule()])]
