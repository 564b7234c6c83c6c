"""RoPE cos/sin cache: the rotary-embedding form recent ``transformers`` exports.

onnxscript's rotary rule turns the rotate-half arithmetic into an intermediate
``RotaryEmbedding(x, cos, sin)``; its cos/sin-cache rules then turn that into ONNX Runtime's
``com.microsoft.RotaryEmbedding(x, position_ids, cos_cache, sin_cache)``, but they expect
``freqs = Transpose(MatMul(inv_freq[1,E,1], pos[B,1,S]))``. transformers 5 computes
``freqs = pos[B,S,1].float() * inv_freq[E]`` (a broadcast Mul), so nothing matched and neither
rotary nor GroupQueryAttention fused on LLaMA. This rule matches the Mul form.

The caches are computed in the graph from the largest position id seen (``ReduceMax + Range``,
then the same float32 product, Cos and Sin), so they hold exactly the values the original graph
computed for each position, for any sequence length (times YaRN's attention factor where the
graph scales cos and sin by one constant). Requires ``inv_freq`` to be a constant or one computed
vector of known length (LongRoPE's choice of long or short factors by the sequence's length).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from llmc.model.values import const_ints


class CosSinCacheMul(pattern.RewriteRuleClassBase):
    def __init__(self) -> None:
        # The cos/sin values are shared by every layer's q and k: keep them until all are
        # rewritten (unused nodes are removed after the rule set).
        super().__init__("CosSinCacheMul", remove_nodes=False)
        self._cache: dict[int, tuple[ir.Value, ir.Value]] = {}

    def cleanup(self) -> None:
        self._cache.clear()

    def pattern(self, op, x, position_ids, axes, inv_freq, interleaved, num_heads, scale):
        positions = op.Cast(op.Unsqueeze(position_ids, axes), to=ir.DataType.FLOAT)
        freqs = op.Mul(positions, inv_freq)
        emb = op.Concat(freqs, freqs, axis=-1)
        # YaRN (and LongRoPE) scale both by an attention factor: cos(emb) * scale
        cos = pattern.OrValue([op.Cos(emb), op.Mul(op.Cos(emb), scale)], tag_var="scaled", tag_values=[False, True])
        sin = pattern.OrValue([op.Sin(emb), op.Mul(op.Sin(emb), scale)], tag_var="sin_scaled", tag_values=[False, True])
        cos = op.Unsqueeze(cos, [1])
        sin = op.Unsqueeze(sin, [1])
        return op.RotaryEmbedding(
            x,
            cos,
            sin,
            interleaved=interleaved,
            num_heads=num_heads,
            _domain="ai.onnxruntime._fusion",
        )

    def check(self, context, x, position_ids, axes, inv_freq, scale=None, scaled=False, sin_scaled=False, **_) -> pattern.MatchResult:  # noqa: E501
        result = pattern.MatchResult()
        if scaled != sin_scaled:
            return result.fail("cos and sin are not scaled alike", x)
        if scaled and (scale.const_value is None or scale.const_value.size != 1):
            return result.fail("the cos/sin scale is not a constant scalar", scale)
        if position_ids.shape is None or position_ids.shape.rank() != 2:
            return result.fail("position_ids is not [batch, sequence]", position_ids)
        if const_ints(axes) not in ([-1], [2]):
            return result.fail("position ids are not unsqueezed on the last axis", axes)
        if inv_freq.const_value is not None:
            if inv_freq.const_value.numpy().squeeze().ndim != 1:
                return result.fail("inv_freq is not a vector", inv_freq)
        elif inv_freq.shape is None or inv_freq.shape.rank() != 1 or not isinstance(inv_freq.shape[0], int):
            # computed (LongRoPE picks its long or short factors by the sequence's length): one
            # vector for the whole batch, or the cache would not be one table
            return result.fail("inv_freq is computed and not one vector of known length", inv_freq)
        if x.shape is None or x.shape.rank() != 4:
            return result.fail("the rotated tensor is not [batch, heads, sequence, head]", x)
        return result

    def rewrite(self, op, x, position_ids, inv_freq, interleaved, num_heads, scale=None, scaled=False, **_):
        key = (id(inv_freq), id(scale) if scaled else None)
        if key not in self._cache:
            self._cache[key] = caches(op, position_ids, inv_freq, scale if scaled else None)
        cos_cache, sin_cache = self._cache[key]
        return op.RotaryEmbedding(
            x,
            position_ids,
            cos_cache,
            sin_cache,
            interleaved=interleaved,
            num_heads=num_heads,
            _domain="com.microsoft",
        )


def caches(op, position_ids: ir.Value, inv_freq: ir.Value, scale: ir.Value | None) -> tuple[ir.Value, ir.Value]:  # noqa: ANN001
    """``cos`` and ``sin`` of ``p * inv_freq`` for every position ``p`` up to the largest of
    ``position_ids`` ([positions, E], computed in the graph), times ``scale`` when given."""
    if inv_freq.const_value is not None:
        row = op.Constant(value=ir.tensor(inv_freq.const_value.numpy().astype(np.float32).reshape(1, -1)))
    else:
        row = op.Unsqueeze(inv_freq, op.Constant(value=ir.tensor(np.array([0], dtype=np.int64))))
    largest = op.ReduceMax(position_ids, keepdims=0)
    count = op.Add(largest, op.Constant(value=ir.tensor(np.array(1, dtype=np.int64))))
    span = op.Range(
        op.Constant(value=ir.tensor(np.array(0, dtype=np.int64))),
        count,
        op.Constant(value=ir.tensor(np.array(1, dtype=np.int64))),
    )
    column = op.Cast(
        op.Unsqueeze(span, op.Constant(value=ir.tensor(np.array([1], dtype=np.int64)))),
        to=ir.DataType.FLOAT,
    )
    angles = op.Mul(column, row)  # [positions, E]
    cos, sin = op.Cos(angles), op.Sin(angles)
    if scale is not None:  # the same float32 product as the graph's cos(emb) * scale
        cos, sin = op.Mul(cos, scale), op.Mul(sin, scale)
    return cos, sin


class TableRotary(pattern.RewriteRuleClassBase):
    """A rule turning one rotation form into ``com.microsoft.RotaryEmbedding`` with a cos/sin cache
    computed in the graph (:func:`caches`), shared by every layer: the rules of
    :mod:`llmc.passes.fusion.rotary_interleaved` and :mod:`llmc.passes.fusion.rotary_split`."""

    interleaved = 0

    def __init__(self) -> None:
        super().__init__(type(self).__name__, remove_nodes=False)  # the caches are shared by every layer
        self._cache: dict[tuple, tuple[ir.Value, ir.Value]] = {}

    def cleanup(self) -> None:
        self._cache.clear()

    @staticmethod
    def inputs_problem(context, position_ids: ir.Value, axes: ir.Value, inv_freq: ir.Value) -> str | None:  # noqa: ANN001
        """Why the positions and frequencies are not the graph input ``[batch, sequence]`` (on the
        last axis) and one constant vector, or None."""
        if position_ids not in context.model.graph.inputs or position_ids.shape is None or position_ids.shape.rank() != 2:
            return "the positions are not the [batch, sequence] graph input"
        if const_ints(axes) not in ([-1], [2]):
            return "position ids are not unsqueezed on the last axis"
        if inv_freq.const_value is None or inv_freq.const_value.numpy().squeeze().ndim != 1:
            return "inv_freq is not a constant vector"
        return None

    @staticmethod
    def rotated_problem(x: ir.Value, inv_freq: ir.Value) -> str | None:
        """Why ``x`` is not ``[batch, heads, sequence, 2E]`` with the heads known (E frequencies)."""
        width = int(inv_freq.const_value.numpy().size)
        if x.shape is None or x.shape.rank() != 4 or x.shape[3] != 2 * width:
            return f"the rotated tensor is not [batch, heads, sequence, {2 * width}]"
        if not isinstance(x.shape[1], int):
            return "the number of heads is not known"
        return None

    def rewrite(self, op, x, position_ids, inv_freq, scale=None, scaled=False, **_):  # noqa: ANN001, ANN201
        key = (id(inv_freq), id(scale) if scaled else None)
        if key not in self._cache:
            self._cache[key] = caches(op, position_ids, inv_freq, scale if scaled else None)
        cos_cache, sin_cache = self._cache[key]
        return op.RotaryEmbedding(
            x, position_ids, cos_cache, sin_cache, interleaved=self.interleaved, num_heads=int(x.shape[1]),
            _domain="com.microsoft",
        )


def rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([CosSinCacheMul.rule()])
