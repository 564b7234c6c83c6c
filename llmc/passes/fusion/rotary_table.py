"""GPT-J's rotary (a sin/cos table gathered by position, rotate-every-two, partial) ->
``RotaryEmbedding(interleaved=1, rotary_embedding_dim=R)``.

transformers' GPT-J keeps ``embed_positions``, a [positions, R] table of ``sin`` then ``cos`` of
``p * inv_freq``; each layer gathers its rows by ``position_ids``, splits them, repeats each value
twice (``repeat_interleave``) and rotates the first ``R`` features of the query and key, laid out
[batch, sequence, heads, head], by ``rotate_every_two``, before the heads are transposed:

    out[2i]   = x[2i] cos_i - x[2i+1] sin_i
    out[2i+1] = x[2i+1] cos_i + x[2i] sin_i      (i < R/2; features R.. pass through)

which is ONNX Runtime's ``RotaryEmbedding`` with ``interleaved=1``, ``rotary_embedding_dim=R``
and the table's halves as its caches (the same float32 values, so the rewrite is exact). No rule
matched this form: GPT-J's rotation stayed in 13 float nodes per tensor outside the attention.

Requires: the table a constant [positions, R] gathered (``GatherND``) by the graph input
``position_ids`` unsqueezed on its last axis and split in two on the last axis; ``x`` [batch,
sequence, heads, head] with heads and head static, its first ``R`` features sliced, rotated
pairwise (slices from 1 and 0 with step 2, the odd ones negated, stacked on a new last axis) and
concatenated with the rest. Ensures: one ``RotaryEmbedding`` on ``x`` seen as [batch, sequence,
heads * head], reshaped back; one pair of caches per table.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from llmc.model.values import const_ints, is_op

_LAST = ([3], [-1])
_NEW_LAST = ([4], [-1])


def _repeated(op, half, first, second, two, shape):  # noqa: ANN001, ANN202
    """``repeat_interleave(half[:, :, None, :], 2, 3)`` as the dynamo exporter writes it."""
    return op.Reshape(op.Expand(op.Unsqueeze(op.Unsqueeze(half, first), second), two), shape, _allow_other_attributes=True)


class GatheredTableRotary(pattern.RewriteRuleClassBase):
    """GPT-J's rotation of the first R features (see the module)."""

    def __init__(self) -> None:
        super().__init__("GatheredTableRotary", remove_nodes=False)  # the table's gather is every layer's
        self._caches: dict[int, tuple[ir.Value, ir.Value]] = {}

    def cleanup(self) -> None:
        self._caches.clear()

    def pattern(  # noqa: PLR0913
        self, op, x, sincos, rs, re, ra, rt, ps, pe, pa, pt, c1, c2, c_two, c_shape, s1, s2, s_two, s_shape,  # noqa: ANN001
        os_, oe, oa, ot, es, ee, ea, et, last_odd, last_even, rotated_shape,  # noqa: ANN001
    ):  # noqa: ANN201
        x_rot = op.Slice(x, rs, re, ra, rt, _outputs=["x_rot"])
        sin, cos = op.Split(sincos, _outputs=["sin", "cos"], _allow_other_attributes=True)
        cos_r = _repeated(op, cos, c1, c2, c_two, c_shape)
        sin_r = _repeated(op, sin, s1, s2, s_two, s_shape)
        odd = op.Neg(op.Slice(x_rot, os_, oe, oa, ot))
        even = op.Slice(x_rot, es, ee, ea, et)
        stacked = op.Concat(op.Unsqueeze(odd, last_odd), op.Unsqueeze(even, last_even), axis=-1)
        rotated = op.Reshape(stacked, rotated_shape, _allow_other_attributes=True)
        out = op.Add(op.Mul(x_rot, cos_r), op.Mul(rotated, sin_r))
        return op.Concat(out, op.Slice(x, ps, pe, pa, pt), axis=-1)

    def check(  # noqa: PLR0911, PLR0913
        self, context, x, sincos, sin, rs, re, ra, rt, ps, pe, pa, pt, c1, c2, c_two, s1, s2, s_two,  # noqa: ANN001
        os_, oa, ot, es, ea, et, last_odd, last_even, **_,  # noqa: ANN001, ANN003
    ) -> pattern.MatchResult:
        result = pattern.MatchResult()
        table, position_ids = self._gathered(context, sincos)
        if table is None:
            return result.fail("sin/cos are not a constant [positions, R] table gathered by the position_ids input", sincos)
        split = sin.producer()
        if split.attributes.get_int("axis", 0) not in (-1, 2) or len(split.inputs) != 1:
            return result.fail("the gathered rows are not split in two halves on the last axis", sincos)
        width = int(table.shape[1])
        shape = x.shape
        if shape is None or shape.rank() != 4 or not all(isinstance(d, int) for d in (shape[2], shape[3])):
            return result.fail("the rotated tensor is not [batch, sequence, heads, head] with heads and head known", x)
        if width % 2 or width > shape[3]:
            return result.fail(f"the table's width {width} is not an even part of the head {shape[3]}", x)
        if (const_ints(rs), const_ints(re), const_ints(rt)) != ([0], [width], [1]) or const_ints(ra) not in _LAST:
            return result.fail(f"the rotated part is not x[..., :{width}]", x)
        if const_ints(ps) != [width] or (const_ints(pe) or [0])[0] < shape[3] or const_ints(pa) not in _LAST:
            return result.fail(f"the passed part is not x[..., {width}:]", x)
        if const_ints(pt) != [1]:
            return result.fail("the passed part is not a unit-step slice", x)
        for first, second, two in ((c1, c2, c_two), (s1, s2, s_two)):
            if const_ints(first) != [2] or const_ints(second) not in _NEW_LAST or const_ints(two) != [1, 1, 1, 1, 2]:
                return result.fail("sin/cos are not repeated twice each over the heads axis", sincos)
        for start, axis, step, want in ((os_, oa, ot, 1), (es, ea, et, 0)):
            if const_ints(start) != [want] or const_ints(step) != [2] or const_ints(axis) not in _LAST:
                return result.fail("the rotated pairs are not x[..., 1::2] and x[..., ::2]", x)
        if const_ints(last_odd) not in _NEW_LAST or const_ints(last_even) not in _NEW_LAST:
            return result.fail("the pairs are not stacked on a new last axis", x)
        self._match = (table, position_ids, width)
        return result

    @staticmethod
    def _gathered(context, sincos: ir.Value) -> tuple[ir.Value | None, ir.Value | None]:  # noqa: ANN001
        gather = sincos.producer()
        if not is_op(gather, "GatherND") or gather.attributes.get_int("batch_dims", 0) != 0:
            return None, None
        table, index = gather.inputs
        unsqueeze = index.producer() if index is not None else None
        if table is None or table.const_value is None or len(table.shape or ()) != 2 or not is_op(unsqueeze, "Unsqueeze"):
            return None, None
        position_ids = unsqueeze.inputs[0]
        if position_ids not in context.model.graph.inputs or const_ints(unsqueeze.inputs[1]) not in ([-1], [2]):
            return None, None
        return table, position_ids

    def rewrite(self, op, x, **_):  # noqa: ANN001, ANN201
        table, position_ids, width = self._match
        if id(table) not in self._caches:
            values = table.const_value.numpy().astype(np.float32)
            half = width // 2
            self._caches[id(table)] = tuple(  # (cos, sin): the table is sin, then cos
                op.initializer(ir.tensor(np.ascontiguousarray(part), name=f"{table.name}_{name}"), name=f"{table.name}_{name}")
                for name, part in (("cos", values[:, half:]), ("sin", values[:, :half]))
            )
        cos_cache, sin_cache = self._caches[id(table)]
        heads, head = int(x.shape[2]), int(x.shape[3])
        flat = op.Reshape(x, op.Constant(value=ir.tensor(np.array([0, 0, heads * head], dtype=np.int64))))
        rotated = op.RotaryEmbedding(
            flat, position_ids, cos_cache, sin_cache, interleaved=1, num_heads=heads, rotary_embedding_dim=width,
            _domain="com.microsoft",
        )
        return op.Reshape(rotated, op.Constant(value=ir.tensor(np.array([0, 0, heads, head], dtype=np.int64))))


def rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([GatheredTableRotary.rule()])
