"""MultiHeadAttention rules that also hold when the attention output is flattened to 2-D.

onnxscript's ``MultiHeadAttention`` rule matches ``Reshape(Transpose(attention), shape)`` and
replaces the Reshape's output with MHA's ``[B, S, D]`` output without looking at ``shape`` (a gap
its source notes). llmc's Reshape folding merges the exporter's ``[B, S, D]`` reshape with the following
``[B*S, D]`` one that feeds a 2-D Gemm (GPT-2's Conv1D), so the unchecked rewrite hands the Gemm a
3-D tensor. These subclasses keep the rule and re-apply the matched Reshape to MHA's output when
its target shape is not ``[B, S, D]``: the row-major element order of ``[B, S, H, Dh]`` and
``[B, S, H*Dh]`` is the same, so the result is unchanged. A Reshape that copies (``0``) a dim past
axis 1 is refused with a reason, since that dim differs between the two layouts.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
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


_ATTENTION_BIAS_INPUT = {"MultiHeadAttention": 5, "Attention": 5}


_LAYOUT_OPS = ("Expand", "Reshape", "Unsqueeze", "Squeeze", "Slice", "Transpose")


def _only_attention_bias(value: ir.Value) -> bool:
    """Whether every use of ``value`` (through layout-only ops) is a fused attention's bias."""
    uses = list(value.uses())
    if not uses or value.is_graph_output():
        return False
    for use in uses:
        node = use.node
        if node.domain == "com.microsoft" and _ATTENTION_BIAS_INPUT.get(node.op_type) == use.idx:
            continue
        if node.domain in ("", "ai.onnx") and node.op_type in _LAYOUT_OPS and use.idx == 0:
            if _only_attention_bias(node.outputs[0]):
                continue
        return False
    return True


class FiniteMaskFill(pattern.RewriteRuleClassBase):
    """``Where(mask, 0, -inf)`` feeding only fused attention biases (directly or through layout
    ops) -> ``Where(mask, 0, float_min)``.

    The legacy exporter fills masked scores with -inf. A query row with every key masked (the
    padding of a left-padded batch) then makes a NaN row in ONNX Runtime's CPU
    MultiHeadAttention, and the NaN reaches the other batch rows' outputs (measured: a
    left-padded row 1 turned row 0's logits to NaN, where the unfused graph gives NaN only in
    row 1's padding). With the dtype's lowest finite value every score that is not masked gives
    the same softmax (exp(min - max) is 0), and a fully masked row stays finite.
    """

    def pattern(self, op, condition, zero, fill):
        return op.Where(condition, zero, fill, _outputs=["bias"])

    def check(self, context, zero, fill, bias, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        value = fill.const_value
        if value is None or value.size != 1 or not np.isneginf(value.numpy()).all():
            return result.fail("the fill is not the constant -inf", fill)
        if zero.const_value is None or np.any(zero.const_value.numpy() != 0):
            return result.fail("the kept value is not the constant 0", zero)
        if not _only_attention_bias(bias):
            return result.fail("the mask feeds something other than a fused attention's bias", bias)
        return result

    def rewrite(self, op, condition, zero, fill, **_):
        dtype = fill.const_value.numpy().dtype
        lowest = ir.tensor(np.array(np.finfo(dtype).min, dtype=dtype))
        return op.Where(condition, zero, op.Constant(value=lowest))


def finite_mask_rules() -> list[pattern.RewriteRuleSet]:
    return [pattern.RewriteRuleSet([FiniteMaskFill.rule()])]
