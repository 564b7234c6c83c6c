"""Split-halves RoPE (GPT-OSS) -> ``RotaryEmbedding``.

transformers' GPT-OSS rotates without ``rotate_half``: it splits the head into its two halves and
writes both products out, with cos/sin of ``freqs`` itself (half the head wide, not concatenated
twice), times YaRN's attention factor:

    first, second = split(x, 2, axis=-1)
    out = concat(first * cos - second * sin, second * cos + first * sin)

which is ONNX Runtime's ``RotaryEmbedding`` (``interleaved=0``) with a ``[positions, D/2]`` cache
of ``cos(p * inv_freq) * scale``. onnxscript's rotary rule matches only the rotate-half form, so
GPT-OSS's rotation stayed 10 float nodes per tensor and its attention got no GroupQueryAttention.
The cache is computed in the graph as :mod:`llmc.passes.fusion.rotary` computes it (the same
float32 products), so the rewrite keeps the graph's values.

Requires: ``inv_freq`` a constant vector of ``E`` values, ``x`` ``[batch, heads, sequence, 2E]``
split in two equal halves on its last axis, the positions the ``[batch, sequence]`` graph input,
cos and sin scaled alike (or not at all). Ensures: one ``RotaryEmbedding`` per rotated tensor, one
cos/sin cache per ``inv_freq`` and scale.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from llmc.model.values import const_ints
from llmc.passes.fusion.rotary import TableRotary

_LAST = (-1, 3)


class SplitHalvesRotary(TableRotary):
    def pattern(self, op, x, position_ids, axes, inv_freq, scale, cos_axes, sin_axes):  # noqa: ANN001, ANN201
        freqs = op.Mul(op.Cast(op.Unsqueeze(position_ids, axes), to=ir.DataType.FLOAT), inv_freq)
        cos = pattern.OrValue([op.Cos(freqs), op.Mul(op.Cos(freqs), scale)], tag_var="scaled", tag_values=[False, True])
        sin = pattern.OrValue(
            [op.Sin(freqs), op.Mul(op.Sin(freqs), scale)], tag_var="sin_scaled", tag_values=[False, True]
        )
        cos, sin = op.Unsqueeze(cos, cos_axes), op.Unsqueeze(sin, sin_axes)
        first, second = op.Split(x, num_outputs=2, _allow_other_attributes=True, _outputs=["first", "second"])
        return op.Concat(
            op.Sub(op.Mul(first, cos), op.Mul(second, sin)), op.Add(op.Mul(second, cos), op.Mul(first, sin)), axis=-1
        )

    def check(  # noqa: PLR0911
        self, context, x, position_ids, axes, inv_freq, cos_axes, sin_axes, first,  # noqa: ANN001
        scale=None, scaled=False, sin_scaled=False, **_,  # noqa: ANN001, ANN003
    ) -> pattern.MatchResult:
        result = pattern.MatchResult()
        why = self.inputs_problem(context, position_ids, axes, inv_freq)
        if why:
            return result.fail(why, position_ids)
        if scaled != sin_scaled:
            return result.fail("cos and sin are not scaled alike", x)
        if scaled and (scale.const_value is None or scale.const_value.size != 1):
            return result.fail("the cos/sin scale is not a constant scalar", scale)
        if const_ints(cos_axes) != [1] or const_ints(sin_axes) != [1]:
            return result.fail("cos/sin are not broadcast over the heads axis", cos_axes)
        split = first.producer()
        if split.attributes.get_int("axis", 0) not in _LAST or len(split.inputs) > 1:
            return result.fail("x is not split in two equal halves on its last axis", x)
        why = self.rotated_problem(x, inv_freq)
        return result.fail(why, x) if why else result


def rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([SplitHalvesRotary.rule()])
