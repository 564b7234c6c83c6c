"""Attention with per-head sinks (GPT-OSS) -> GroupQueryAttention's ``head_sink``.

transformers' GPT-OSS appends one learned logit per head to every row of scores, takes the
softmax over keys and sink together and drops the sink's column:

    combined = concat(scale * q @ k^T + mask, expand(sinks))
    weights = softmax(combined - max(combined))[..., :-1]

so each weight is ``exp(s_i) / (sum_j exp(s_j) + exp(sink_h))``: ONNX Runtime's
GroupQueryAttention with the ``head_sink`` input ("a smooth factor adding to the denominator of
softmax", one per head). onnxscript's SDPA rule matches a plain Softmax, so GPT-OSS's attention
stayed unfused (1.23x llama's ms/token). ``SinkSDPA`` is onnxscript's SDPA pattern with that
softmax, written as an intermediate ``SinkSDPA`` node that only :class:`SinkGroupQueryAttention`
consumes (onnxscript's MultiHeadAttention rules would drop the sinks); one no rule consumed is
inlined back to the nodes it matched (``as_function``), as :mod:`llmc.passes.fusion.softcap` does.

Requires: the sinks a constant of one value per head (``[1, H, 1, 1]`` or ``[H, 1, 1]``) expanded
along the rows, the softmax's max subtracted over the last axis, the slice ``[..., 0:-1]`` of the
last axis. Ensures: GroupQueryAttention with ``head_sink`` (float32 ``[H]``), or the original
nodes.
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions import sdpa

from llmc.model.values import const_ints
from llmc.passes.fusion.gqa import PaddingAwareGroupQueryAttention

FUSION_DOMAIN = "ai.onnxruntime._fusion"
_LAST = (-1, 3)


class _SoftmaxWithSinks:
    """Builds onnxscript's SDPA pattern with ``Softmax(scores)`` read as the sink softmax."""

    def __init__(self, op, sinks, sink_shape, max_axes, starts, ends, axes, steps) -> None:  # noqa: ANN001, PLR0913
        self._op, self._sinks, self._sink_shape = op, sinks, sink_shape
        self._max_axes, self._slice = max_axes, (starts, ends, axes, steps)

    def __getattr__(self, name: str):  # noqa: ANN204
        if name != "Softmax":
            return getattr(self._op, name)
        op = self._op

        def softmax(scores, **kwargs):  # noqa: ANN001, ANN003, ANN202
            combined = op.Concat(scores, op.Expand(self._sinks, self._sink_shape), axis=-1)
            shifted = op.Sub(combined, op.ReduceMax(combined, self._max_axes, keepdims=1, _allow_other_attributes=True))
            return op.Slice(op.Softmax(shifted, **kwargs), *self._slice)

        return softmax


class SinkSDPA(sdpa.SDPA):
    def __init__(self) -> None:
        super().__init__(name="SinkSDPA", as_function=True)

    def pattern(  # noqa: PLR0913
        self, op, query, key, value, mask, query_scale, key_scale, qk_scale,  # noqa: ANN001
        sinks, sink_shape, max_axes, starts, ends, axes, steps,  # noqa: ANN001
    ):  # noqa: ANN201
        ops = _SoftmaxWithSinks(op, sinks, sink_shape, max_axes, starts, ends, axes, steps)
        return super().pattern(ops, query, key, value, mask, query_scale, key_scale, qk_scale)

    def check(self, context, sinks, max_axes, starts, ends, axes, steps, **bindings) -> pattern.MatchResult:  # noqa: ANN001, PLR0913
        result = pattern.MatchResult()
        heads = head_sinks(sinks)
        if heads is None:
            return result.fail("the sinks are not a constant of one value per head", sinks)
        if (const_ints(max_axes) or [None])[0] not in _LAST or len(const_ints(max_axes) or []) != 1:
            return result.fail("the softmax's max is not taken over the last axis", max_axes)
        if const_ints(starts) != [0] or const_ints(ends) != [-1] or (const_ints(axes) or [None])[0] not in _LAST:
            return result.fail("the sink's column is not dropped by [..., 0:-1]", starts)
        if steps is not None and const_ints(steps) != [1]:
            return result.fail("the slice dropping the sink's column has a step", steps)
        return super().check(context, **bindings)

    def rewrite(self, op, query, key, value, mask, key_format, sinks, sink_shape, **_):  # noqa: ANN001, ANN201
        attributes = {"key_format": key_format}
        if self._scale is not None:
            attributes["scale"] = self._scale
        return op.SinkSDPA(query, key, value, mask, sinks, sink_shape, _domain=FUSION_DOMAIN, **attributes)


def head_sinks(sinks) -> np.ndarray | None:  # noqa: ANN001
    """The sinks as a float32 ``[H]`` vector, or None when they are not one constant per head."""
    if sinks is None or sinks.const_value is None:
        return None
    array = sinks.const_value.numpy()
    if array.ndim not in (3, 4) or any(d != 1 for i, d in enumerate(array.shape) if i != array.ndim - 3):
        return None
    return array.reshape(-1).astype(np.float32)


class _SinkOps:
    """onnxscript's GroupQueryAttention pattern with its ``SDPA`` read as ``SinkSDPA``."""

    def __init__(self, op, sinks, sink_shape) -> None:  # noqa: ANN001
        self._op, self._sinks, self._sink_shape = op, sinks, sink_shape

    def __getattr__(self, name: str):  # noqa: ANN204
        if name != "SDPA":
            return getattr(self._op, name)
        op = self._op
        return lambda q, k, v, mask, **kwargs: op.SinkSDPA(q, k, v, mask, self._sinks, self._sink_shape, **kwargs)


class SinkGroupQueryAttention(PaddingAwareGroupQueryAttention):
    """:class:`PaddingAwareGroupQueryAttention` of a ``SinkSDPA``: the node gets ``head_sink``."""

    def pattern(  # noqa: PLR0913
        self, op, query_BSD, key_BSDkv, value_BSDkv, past_key, past_value, position_ids, cos, sin, mask,  # noqa: ANN001, N803
        sinks, sink_shape,  # noqa: ANN001
    ):  # noqa: ANN201
        return super().pattern(
            _SinkOps(op, sinks, sink_shape), query_BSD, key_BSDkv, value_BSDkv, past_key, past_value, position_ids,
            cos, sin, mask,
        )

    def check(self, context, sinks=None, **bindings):  # noqa: ANN001
        result = super().check(context, **bindings)
        if not result:
            return result
        heads = head_sinks(sinks)
        if heads is None or heads.size != self.num_heads:
            return pattern.MatchResult().fail(f"the sinks are not one constant per each of {self.num_heads} heads", sinks)
        self._head_sink = heads
        return result


def rules() -> list[pattern.RewriteRuleSet]:
    return [pattern.RewriteRuleSet([SinkSDPA.rule()])]


def gqa_rules() -> list[pattern.RewriteRuleSet]:
    return [pattern.RewriteRuleSet([SinkGroupQueryAttention.rule()])]
