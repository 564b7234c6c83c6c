"""Interleaved RoPE (Cohere, GPT-J style "rotate every two") -> ``RotaryEmbedding(interleaved=1)``.

transformers' Cohere rotates pairs of neighbouring features: ``cos``/``sin`` are
``repeat_interleave(freqs, 2)`` and ``rotate_every_two(x)`` stacks ``-x[..., 1::2]`` and
``x[..., ::2]`` on a new last axis and flattens it back:

    out[2i]   = x[2i] cos_i - x[2i+1] sin_i
    out[2i+1] = x[2i+1] cos_i + x[2i] sin_i

which is ONNX Runtime's ``RotaryEmbedding`` with ``interleaved=1`` and a ``[positions, D/2]``
cache of ``cos(p * inv_freq)``. onnxscript's rotary rule matches only the rotate-half form, so
Cohere's attention stayed MatMul-Softmax-MatMul with the rotation in 13 float nodes per tensor
and no GroupQueryAttention. The cache is computed in the graph as
:mod:`llmc.passes.fusion.rotary` computes it (the same float32 products), so the rewrite is exact.

Requires: ``inv_freq`` a constant vector of ``E`` values and ``x`` ``[batch, heads, sequence,
2E]`` (full rotation), the two slices start 0 and 1 with step 2 on the last axis, the
repeat-interleave expands a new last axis by 2. Ensures: one ``RotaryEmbedding`` per rotated
tensor, one cos/sin cache per ``inv_freq``.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from llmc.model.values import const_ints
from llmc.passes.fusion.rotary import TableRotary

_LAST = (-1, 3)


class InterleavedRotary(TableRotary):
    interleaved = 1

    def pattern(  # noqa: PLR0913
        self, op, x, position_ids, axes, inv_freq, pair, emb_shape, cos_axes, sin_axes,  # noqa: ANN001
        odd_start, odd_end, odd_axes, odd_step, even_start, even_end, even_axes, even_step,  # noqa: ANN001
        last_odd, last_even, rotated_shape,  # noqa: ANN001
    ):  # noqa: ANN201
        freqs = op.Mul(op.Cast(op.Unsqueeze(position_ids, axes), to=ir.DataType.FLOAT), inv_freq)
        emb = op.Reshape(op.Expand(op.Unsqueeze(freqs, [3]), pair), emb_shape, _allow_other_attributes=True)
        cos = op.Unsqueeze(op.Cos(emb), cos_axes)
        sin = op.Unsqueeze(op.Sin(emb), sin_axes)
        odd = op.Neg(op.Slice(x, odd_start, odd_end, odd_axes, odd_step))
        even = op.Slice(x, even_start, even_end, even_axes, even_step)
        stacked = op.Concat(op.Unsqueeze(odd, last_odd), op.Unsqueeze(even, last_even), axis=-1)
        rotated = op.Reshape(stacked, rotated_shape, _allow_other_attributes=True)
        return op.Add(op.Mul(x, cos), op.Mul(rotated, sin))

    def check(  # noqa: PLR0911
        self, context, x, position_ids, axes, inv_freq, pair, cos_axes, sin_axes,  # noqa: ANN001
        odd_start, odd_axes, odd_step, even_start, even_axes, even_step, last_odd, last_even, **_,  # noqa: ANN001, ANN003
    ) -> pattern.MatchResult:
        result = pattern.MatchResult()
        why = self.inputs_problem(context, position_ids, axes, inv_freq)
        if why:
            return result.fail(why, position_ids)
        if const_ints(pair) != [1, 1, 1, 2]:
            return result.fail("the frequencies are not repeated twice on a new last axis", pair)
        if const_ints(cos_axes) != [1] or const_ints(sin_axes) != [1]:
            return result.fail("cos/sin are not broadcast over the heads axis", cos_axes)
        for start, axis, step, want in ((odd_start, odd_axes, odd_step, 1), (even_start, even_axes, even_step, 0)):
            if const_ints(start) != [want] or const_ints(step) != [2] or (const_ints(axis) or [None])[0] not in _LAST:
                return result.fail("the rotated halves are not x[..., 1::2] and x[..., ::2]", x)
        if (const_ints(last_odd) or [None])[0] not in (-1, 4) or (const_ints(last_even) or [None])[0] not in (-1, 4):
            return result.fail("the halves are not stacked on a new last axis", x)
        why = self.rotated_problem(x, inv_freq)
        return result.fail(why, x) if why else result


def rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([InterleavedRotary.rule()])

