"""MultiHeadAttention rules that also hold when the attention output is flattened to 2-D.

onnxscript's ``MultiHeadAttention`` rule matches ``Reshape(Transpose(attention), shape)`` and
replaces the Reshape's output with MHA's ``[B, S, D]`` output without looking at ``shape`` (its
own TODO). llmc's Reshape folding merges the exporter's ``[B, S, D]`` reshape with the following
``[B*S, D]`` one that feeds a 2-D Gemm (GPT-2's Conv1D), so the unchecked rewrite hands the Gemm a
3-D tensor. These subclasses keep the rule and re-apply the matched Reshape to MHA's output when
its target shape is not ``[B, S, D]``: the row-major element order of ``[B, S, H, Dh]`` and
``[B, S, H*Dh]`` is the same, so the result is unchanged. A Reshape that copies (``0``) a dim past
axis 1 is refused with a reason, since that dim differs between the two layouts.
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions import mha


class _FlattenSafeMHA(mha.MultiHeadAttention):
    def check(self, op, **bindings) -> pattern.MatchResult:
        result = super().check(op, **bindings)
        if not result:
            return result
        self._out_shape = None
        output = bindings.get("attention_reshaped")
        if output is None or output.producer() is None:
            return result
        shape = output.producer().inputs[1]
        if output.shape is not None and output.shape.rank() == 3:
            return result
        value = shape.const_value if shape is not None else None
        if value is None:
            return result.fail("the attention output Reshape's target shape is not a constant", shape)
        dims = np.asarray(value.numpy()).reshape(-1)
        if any(d == 0 for d in dims[2:]):
            return result.fail(f"attention output Reshape to {dims.tolist()} copies a head dim", shape)
        self._out_shape = shape
        return result

    def rewrite(self, op, **bindings):
        outputs = super().rewrite(op, **bindings)
        if self._out_shape is None or outputs is None:
            return outputs
        if isinstance(outputs, tuple):
            return (op.Reshape(outputs[0], self._out_shape), *outputs[1:])
        return op.Reshape(outputs, self._out_shape)


def _rule_set(has_past_present: bool) -> pattern.RewriteRuleSet:
    rules = []
    for rotary in (False, True):
        for cross in (False,) if has_past_present else (False, True):
            name = "MHA" + "_Rotary" * rotary + "_Past" * has_past_present
            name += "_CrossAttention" * cross
            rules.append(
                _FlattenSafeMHA.rule(
                    name, is_rotary=rotary, has_past_present=has_past_present, is_cross_attention=cross
                )
            )
    return pattern.RewriteRuleSet(rules)


def mha_rules() -> list[pattern.RewriteRuleSet]:
    """With-past rules first (they match more), then the plain ones, as onnxscript orders them."""
    return [_rule_set(True), _rule_set(False)]


__all__ = ["mha_rules"]
