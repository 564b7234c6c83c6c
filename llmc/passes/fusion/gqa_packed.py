"""Packed QKV for GroupQueryAttention: the query, key and value projections of one input become
one MatMul on their weights side by side, fed to the attention as its packed ``query`` (key and
value absent), as onnxruntime-genai's builder writes it: two nodes fewer per layer, the same
bytes read. A later weight-only quantization sees one MatMul and writes one MatMulNBits (blocks
run along K, so each column's blocks are those of its own projection).

Requires: three MatMuls of the same activation with constant 2-D weights of the same K, their
only use the attention's inputs 0, 1, 2. Ensures: the packed weight is
``concat([Wq, Wk, Wv], axis=1)``, the output columns in that order (the kernel's layout).

A model that projects QKV in one MatMul already (Phi-3, Falcon after
:mod:`llmc.passes.fusion.grouped_qkv`) gives the attention three Slices of its output:
:class:`SlicedQkvGroupQueryAttention` hands the attention the whole output instead (three copies
fewer a layer). Requires: unit-step Slices of one value's last axis, back to back from 0 to its
end, of widths heads * head, kv heads * head, kv heads * head, used only by the attention.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from llmc.model.values import const_ints
from llmc.passes.fusion.gqa import trailing_inputs

MS = "com.microsoft"


class PackedQkvGroupQueryAttention(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, wq, wk, wv, past_key, past_value, seqlens_k, total, cos, sin, bias):  # noqa: ANN001, ANN201
        return op.GroupQueryAttention(
            op.MatMul(x, wq, _outputs=["q"]), op.MatMul(x, wk, _outputs=["k"]), op.MatMul(x, wv, _outputs=["v"]),
            past_key, past_value, seqlens_k, total, cos, sin, None, bias,
            _domain=MS, _outputs=3, _allow_other_attributes=True, _allow_other_inputs=True,  # head_sink, query_seqlens
        )

    def check(self, context, wq, wk, wv, q, k, v, **_) -> pattern.MatchResult:  # noqa: ANN001
        result = pattern.MatchResult()
        arrays = [w.const_value for w in (wq, wk, wv)]
        if any(a is None for a in arrays):
            return result.fail("a projection weight is not a constant", wq)
        shapes = [tuple(a.shape) for a in arrays]
        if any(len(s) != 2 for s in shapes) or len({s[0] for s in shapes}) != 1:
            return result.fail(f"projection weights {shapes} are not 2-D with one K", wq)
        if len({a.dtype for a in arrays}) != 1:
            return result.fail("projection weights of different types", wq)
        if any(len(value.uses()) != 1 for value in (q, k, v)):
            return result.fail("a projection has other consumers", q)
        return result

    def rewrite(self, op, x, wq, wk, wv, past_key, past_value, seqlens_k, total, cos, sin, bias, q, **_):  # noqa: ANN001, ANN201
        attention = q.uses()[0].node
        packed = np.concatenate([w.const_value.numpy() for w in (wq, wk, wv)], axis=1)
        weight = op.initializer(ir.tensor(packed, name=f"{wq.name}_qkv"), name=f"{wq.name}_qkv")
        attributes = {name: attr.value for name, attr in attention.attributes.items()}
        return op.GroupQueryAttention(
            op.MatMul(x, weight), None, None, past_key, past_value, seqlens_k, total, cos, sin, None, bias,
            *trailing_inputs(attention), _domain=MS, _outputs=3, **attributes,
        )


class SlicedQkvGroupQueryAttention(pattern.RewriteRuleClassBase):
    def __init__(self, steps: bool) -> None:
        super().__init__(f"SlicedQkvGroupQueryAttention{'Steps' if steps else ''}")
        self._steps = steps  # whether the Slices have their optional steps input

    def pattern(self, op, y, sq, eq, aq, tq, sk, ek, ak, tk, sv, ev, av, tv, past_key, past_value, seqlens_k, total, cos, sin, bias):  # noqa: ANN001, ANN201, PLR0913
        return op.GroupQueryAttention(
            *(op.Slice(y, s, e, a, *([t] if self._steps else []), _outputs=[name])
              for name, s, e, a, t in (("q", sq, eq, aq, tq), ("k", sk, ek, ak, tk), ("v", sv, ev, av, tv))),
            past_key, past_value, seqlens_k, total, cos, sin, None, bias,
            _domain=MS, _outputs=3, _allow_other_attributes=True, _allow_other_inputs=True,
        )

    def check(self, context, y, q, k, v, **_) -> pattern.MatchResult:  # noqa: ANN001
        result = pattern.MatchResult()
        attention = q.uses()[0].node
        heads, kv_heads = attention.attributes.get_int("num_heads"), attention.attributes.get_int("kv_num_heads")
        rank = y.shape.rank() if y.shape is not None else None
        width = y.shape[-1] if rank else None
        if rank != 3 or not isinstance(width, int) or not heads or not kv_heads or width % (heads + 2 * kv_heads):
            return result.fail(f"the sliced value {y.name} is not [batch, sequence, static width] of the heads", y)
        head = width // (heads + 2 * kv_heads)
        bounds = [0, heads * head, (heads + kv_heads) * head, width]
        for value, start, end in zip((q, k, v), bounds, bounds[1:], strict=False):
            node = value.producer()
            starts, ends, axes = (const_ints(node.inputs[i]) for i in (1, 2, 3))
            steps = const_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
            if axes not in ([2], [-1]) or steps != [1] or starts != [start] or not ends or min(ends[0], width) != end:
                return result.fail(f"{value.name} is not columns {start}:{end} of {y.name}", value)
            if len(value.uses()) != 1:
                return result.fail(f"{value.name} has other consumers", value)
        return result

    def rewrite(self, op, y, past_key, past_value, seqlens_k, total, cos, sin, bias, q, **_):  # noqa: ANN001, ANN201
        attention = q.uses()[0].node
        attributes = {name: attr.value for name, attr in attention.attributes.items()}
        return op.GroupQueryAttention(
            y, None, None, past_key, past_value, seqlens_k, total, cos, sin, None, bias,
            *trailing_inputs(attention), _domain=MS, _outputs=3, **attributes,
        )


def rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([PackedQkvGroupQueryAttention.rule(), *(SlicedQkvGroupQueryAttention.rule(steps) for steps in (True, False))])
