"""Query, key and value packed per key/value group (Falcon's new decoder architecture) put side
by side, the layout the attention fusions know (Phi-3's packed QKV); Falcon-7B's multi-query
split over heads made a split over columns (:class:`HeadSplitQkv`).

Falcon-40B/180B-style models project QKV in one MatMul whose columns run group by group: each
key/value group's query heads, then its key, then its value ([..., groups, heads per group + 2,
head]); the attention takes the queries with a Slice over the middle axis and the key and value
with a Gather each. No attention rule matches that (the model stayed MultiHeadAttention, the
cache concatenated and transposed outside the kernel). Permuting the weight's columns (and the
bias) to all queries, then all keys, then all values makes each a Slice of the MatMul's last
axis reshaped to heads, as in Phi-3's graph: GroupQueryAttention then fuses. A column
permutation is exact: every output is the same dot product, moved.

Requires: ``MatMul(x, W)`` (optionally ``+ b``) with constant 2-D ``W`` [K, groups * per group *
head], reshaped (once or twice) to rank 5 [batch, sequence, groups, per group, head] with
the batch and sequence dims provably the MatMul's; queries ``Slice(0:per group - 2:1)`` of axis 3
reshaped to [batch, sequence, groups * (per group - 2), head]; key and value ``Gather`` of
indices ``per group - 2`` and ``per group - 1`` on axis 3. Ensures: the same three values,
from ``MatMul(x, W[:, permutation])`` sliced on its last axis.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from llmc.model.values import const_ints, same_dim


def _axis(node: ir.Node, rank: int = 5) -> int:
    axis = node.attributes.get_int("axis", 0)
    return axis + rank if axis < 0 else axis


def _index(value: ir.Value, size: int) -> int | None:
    """A scalar index constant, made non-negative against ``size``; None otherwise."""
    if value.const_value is None or value.const_value.numpy().ndim != 0:
        return None
    (index,) = const_ints(value) or [None]
    return None if index is None else index + size if index < 0 else index


class GroupedQkvSplit(pattern.RewriteRuleClassBase):
    """Falcon's per-group QKV -> queries, keys, values side by side (see the module)."""

    def __init__(self, bias: bool, reshapes: int) -> None:
        super().__init__(f"GroupedQkvSplit{'Bias' if bias else ''}{reshapes}")
        self._bias, self._reshapes = bias, reshapes

    def pattern(self, op, x, w, b, s1, s2, starts, ends, axes, steps, q_shape, k_index, v_index):  # noqa: ANN001, ANN201
        y = op.MatMul(x, w, _outputs=["y"])
        if self._bias:
            y = op.Add(y, b, _outputs=["y_bias"])
        if self._reshapes == 2:
            y = op.Reshape(y, s1)
        grouped = op.Reshape(y, s2, _outputs=["grouped"])
        q = op.Reshape(op.Slice(grouped, starts, ends, axes, steps, _outputs=["q_slice"]), q_shape, _outputs=["q"])
        k = op.Gather(grouped, k_index, _outputs=["k"])
        v = op.Gather(grouped, v_index, _outputs=["v"])
        return q, k, v

    def check(self, context, w, b, y, grouped, starts, ends, axes, steps, q, k, v, k_index, v_index, **_) -> pattern.MatchResult:  # noqa: ANN001, PLR0911
        result = pattern.MatchResult()
        if w.const_value is None or len(w.const_value.shape) != 2:
            return result.fail("the projection weight is not a constant 2-D tensor", w)
        if self._bias and (b.const_value is None or tuple(b.const_value.shape) != (w.const_value.shape[1],)):
            return result.fail("the bias is not a constant of the projection's width", b)
        shape, out = grouped.shape, y.shape
        if shape is None or shape.rank() != 5 or out is None or out.rank() != 3:
            return result.fail("not a rank-3 projection reshaped to rank 5", grouped)
        groups, per_group, head = shape[2], shape[3], shape[4]
        if not all(isinstance(d, int) for d in (groups, per_group, head)) or per_group < 3:
            return result.fail(f"groups/per-group/head dims {groups}, {per_group}, {head} are not static, >= 3 a group", grouped)
        if groups * per_group * head != w.const_value.shape[1]:
            return result.fail("the rank-5 shape does not split the projection's width", grouped)
        if not (same_dim(shape[0], out[0]) and same_dim(shape[1], out[1])):
            return result.fail("batch and sequence dims not provably kept by the reshape", grouped)
        if const_ints(starts) != [0] or const_ints(axes) not in ([3], [-2]) or const_ints(steps) != [1]:
            return result.fail("queries are not a slice from 0 on the per-group axis", starts)
        if (const_ints(ends) or [None])[0] not in (per_group - 2, -2):
            return result.fail("queries do not end two before the group's end", ends)
        heads = groups * (per_group - 2)
        if q.shape is None or q.shape.rank() != 4 or q.shape[2] != heads or q.shape[3] != head:
            return result.fail(f"queries not reshaped to [batch, sequence, {heads}, {head}]", q)
        for value, index, expected in ((k, k_index, per_group - 2), (v, v_index, per_group - 1)):
            if _axis(value.producer()) != 3 or _index(index, per_group) != expected:
                return result.fail(f"{value.name} is not element {expected} of the per-group axis", value)
        self._dims = (groups, per_group, head)
        return result

    def rewrite(self, op, x, w, b, **_):  # noqa: ANN001, ANN201
        groups, per_group, head = self._dims
        columns = np.arange(groups * per_group * head).reshape(groups, per_group, head)
        permutation = np.concatenate([
            columns[:, : per_group - 2].reshape(-1), columns[:, per_group - 2].reshape(-1),
            columns[:, per_group - 1].reshape(-1),
        ])
        weight = w.const_value.numpy()[:, permutation]
        y = op.MatMul(x, op.initializer(ir.tensor(weight, name=f"{w.name}_qkv"), name=f"{w.name}_qkv"))
        if self._bias:
            bias = b.const_value.numpy()[permutation]
            y = op.Add(y, op.initializer(ir.tensor(bias, name=f"{b.name}_qkv"), name=f"{b.name}_qkv"))
        heads = groups * (per_group - 2)
        bounds = [0, heads * head, (heads + groups) * head, (heads + 2 * groups) * head]
        outputs = []
        for (start, end), count in zip(itertools.pairwise(bounds), (heads, groups, groups), strict=True):
            part = op.Slice(y, _ints(op, [start]), _ints(op, [end]), _ints(op, [2]))
            outputs.append(op.Reshape(part, _ints(op, [0, 0, count, head])))
        return tuple(outputs)


class HeadSplitQkv(pattern.RewriteRuleClassBase):
    """Falcon-7B's multi-query QKV: the projection reshaped to [batch, sequence, heads + 2 * kv
    heads, head] and ``Split`` on the heads axis -> three Slices of the projection's last axis,
    each reshaped to its heads (the same values: a split over heads is a split over columns).

    Requires: the reshape keeps the (provably equal) batch and sequence dims of a rank-3 value and
    has a static head size; a three-way Split of axis 2 with constant sizes."""

    def pattern(self, op, y, shape, sizes):  # noqa: ANN001, ANN201
        return op.Split(op.Reshape(y, shape, _outputs=["heads"]), sizes, _outputs=["q", "k", "v"])

    def check(self, context, y, heads, sizes, q, **_) -> pattern.MatchResult:  # noqa: ANN001
        result = pattern.MatchResult()
        split = q.producer()
        shape, source = heads.shape, y.shape
        if shape is None or shape.rank() != 4 or source is None or source.rank() != 3 or not isinstance(shape[3], int):
            return result.fail("not a rank-3 value reshaped to [batch, sequence, heads, static head]", heads)
        if not (same_dim(shape[0], source[0]) and same_dim(shape[1], source[1])):
            return result.fail("batch and sequence dims not provably kept by the reshape", heads)
        if _axis(split, 4) != 2 or len(const_ints(sizes) or []) != 3:
            return result.fail("not a three-way split of the heads axis with constant sizes", split)
        self._sizes, self._head = const_ints(sizes), shape[3]
        return result

    def rewrite(self, op, y, **_):  # noqa: ANN001, ANN201
        bounds = np.cumsum([0, *self._sizes]) * self._head
        return tuple(
            op.Reshape(op.Slice(y, _ints(op, [int(start)]), _ints(op, [int(end)]), _ints(op, [2])), _ints(op, [0, 0, count, self._head]))
            for start, end, count in zip(bounds, bounds[1:], self._sizes, strict=False)
        )


def _ints(op, values: list[int]) -> ir.Value:  # noqa: ANN001
    return op.Constant(value=ir.tensor(np.array(values, dtype=np.int64)))


def rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet(
        [GroupedQkvSplit.rule(bias, reshapes) for bias in (False, True) for reshapes in (1, 2)]
        + [HeadSplitQkv.rule()]
    )
