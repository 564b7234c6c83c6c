"""Attention with logit soft-capping (Gemma 2): ``softcap * tanh(scores / softcap)`` before the mask.

onnxscript's SDPA rule matches ``softmax(scale * q @ k^T + mask) @ v``; Gemma 2 caps the scaled
scores first, so nothing matched and its attention stayed unfused (56 nodes a layer against
llama's 18). ``SoftcapSDPA`` is onnxscript's SDPA pattern with the cap inserted before the mask's
Add (the same constant divides and multiplies), written as an intermediate ``SoftcapSDPA`` node
(``scale``, ``softcap``) that only :class:`SoftcapGroupQueryAttention` consumes: onnxscript's
MultiHeadAttention rules match ``SDPA`` nodes and would drop the cap, so the node has its own
name, and one no rule consumed is inlined back to the nodes it matched (``as_function``: the
fusion pass inlines ``ai.onnxruntime._fusion`` functions).

ONNX Runtime's GroupQueryAttention applies ``softcap`` to the scaled scores and adds the
attention bias (the padding) after it, as the exported graph does: exact (tests).

Requires: a positive constant cap. Ensures: GroupQueryAttention with ``softcap``, or the
original nodes.
"""

from __future__ import annotations

from onnxscript.rewriter import _ir_utils, pattern
from onnxscript.rewriter.ort_fusions import sdpa

from llmc.passes.fusion.gqa import PaddingAwareGroupQueryAttention

FUSION_DOMAIN = "ai.onnxruntime._fusion"


class _CappedBeforeMask:
    """Builds onnxscript's SDPA pattern with ``Add(scores, mask)`` read as
    ``Add(softcap * tanh(scores / softcap), mask)``; every other op as it is."""

    def __init__(self, op, softcap) -> None:  # noqa: ANN001
        self._op, self._softcap = op, softcap

    def __getattr__(self, name: str):  # noqa: ANN204
        if name != "Add":
            return getattr(self._op, name)
        op, cap = self._op, self._softcap
        return lambda scores, mask, **kwargs: op.Add(op.Mul(op.Tanh(op.Div(scores, cap)), cap), mask, **kwargs)


class SoftcapSDPA(sdpa.SDPA):
    def __init__(self) -> None:
        super().__init__(name="SoftcapSDPA", as_function=True)

    def pattern(self, op, query, key, value, mask, query_scale, key_scale, qk_scale, softcap):  # noqa: ANN001, ANN201
        return super().pattern(_CappedBeforeMask(op, softcap), query, key, value, mask, query_scale, key_scale, qk_scale)

    def check(self, context, softcap=None, **bindings) -> pattern.MatchResult:  # noqa: ANN001
        if softcap is None:
            return pattern.MatchResult().fail("no soft-capping before the mask")
        cap = _ir_utils.get_singleton_value(softcap)
        if not isinstance(cap, float) or cap <= 0:
            return pattern.MatchResult().fail(f"the soft-cap {cap!r} is not a positive constant", softcap)
        result = super().check(context, **bindings)
        if result:
            self._softcap = cap
        return result

    def rewrite(self, op, query, key, value, mask, key_format, **_):  # noqa: ANN001, ANN201
        attributes = {"softcap": self._softcap, "key_format": key_format}
        if self._scale is not None:
            attributes["scale"] = self._scale
        return op.SoftcapSDPA(query, key, value, mask, _domain=FUSION_DOMAIN, **attributes)


class _SoftcapOps:
    """onnxscript's GroupQueryAttention pattern with its ``SDPA`` read as ``SoftcapSDPA``."""

    def __init__(self, op) -> None:  # noqa: ANN001
        self._op = op

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._op, "SoftcapSDPA" if name == "SDPA" else name)


class SoftcapGroupQueryAttention(PaddingAwareGroupQueryAttention):
    """:class:`PaddingAwareGroupQueryAttention` of a ``SoftcapSDPA``: the node gets ``softcap``."""

    def pattern(self, op, query_BSD, key_BSDkv, value_BSDkv, past_key, past_value, position_ids, cos, sin, mask):  # noqa: ANN001, ANN201, N803
        return super().pattern(
            _SoftcapOps(op), query_BSD, key_BSDkv, value_BSDkv, past_key, past_value, position_ids, cos, sin, mask
        )


def rules() -> list[pattern.RewriteRuleSet]:
    return [pattern.RewriteRuleSet([SoftcapSDPA.rule()])]


def gqa_rules() -> list[pattern.RewriteRuleSet]:
    return [pattern.RewriteRuleSet([SoftcapGroupQueryAttention.rule()])]
