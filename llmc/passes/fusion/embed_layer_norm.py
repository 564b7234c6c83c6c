"""BERT embeddings -> ONNX Runtime's EmbedLayerNormalization.

Rewrites ``LayerNormalization(Gather(W, ids) + Gather(P, positions) [+ Gather(T, segments)])``
(any order and grouping of the sum) into one ``com.microsoft::EmbedLayerNormalization``.
onnxscript has no rule for it, and ONNX Runtime's own fusions (the transformers optimizer and the
session's EmbedLayerNormFusion) look for the legacy exporter's shape arithmetic, so neither
fuses the dynamo export, which writes positions as a slice of the ``position_ids`` buffer and
token types as a gather from the all-zero ``token_type_ids`` buffer.

Every embedding is classified by what its indices provably are, never by names:

- a graph input of rank 2 (``input_ids``, ``token_type_ids``, ``position_ids``): passed to the
  op, cast to int32 (the op's index type);
- ``arange(S)`` as ``[1, S]``, S being the ids' sequence length (``Slice`` of a constant
  ``[[0, 1, ...]]`` up to ``Shape(x)[1]``, or ``Unsqueeze(Range(0, S, 1))``): the op's default
  positions, so no ``position_ids`` input;
- a constant broadcast (every index the same value k, through Expand/Gather/Slice/...): row k of
  that table is added to every row of the position table, offline.

EmbedLayerNormalization computes word[ids] + position[positions] + segment[segments] then the
layer norm over the last axis; the three gathers are symmetric, so which of two index inputs
is called "word" and which "segment" does not matter, only their shapes: word and segment
indices must have the ids' shape, positions may also be ``[1, S]``. Out-of-range indices (and
negative ones, which Gather wraps) are an error in the fused op.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from llmc.model.values import const_array, is_op, same_dim, shape_gather_dim

_DATA_MOVEMENT = ("Expand", "Reshape", "Unsqueeze", "Squeeze", "Slice", "Transpose", "Identity", "Tile")
_GATHERS = ("Gather", "GatherElements", "GatherND")


def _uniform_index(value: ir.Value) -> int | None:
    """The one value every element of ``value`` has, if that is provable from constants."""
    array = const_array(value)
    if array is not None:
        flat = array.reshape(-1)
        return int(flat[0]) if flat.size and np.all(flat == flat[0]) else None
    node = value.producer()
    if is_op(node, "ConstantOfShape"):
        attr = node.attributes.get("value")
        fill = np.asarray(attr.as_tensor().numpy()).reshape(-1) if attr is not None else np.zeros(1)
        return int(fill[0])
    if is_op(node, *_DATA_MOVEMENT, *_GATHERS) and node.inputs[0] is not None:
        # Moving or gathering elements of a tensor whose elements are all k gives elements all k.
        return _uniform_index(node.inputs[0])
    return None


def _sequence_dim_of(value: ir.Value) -> object | None:
    """The dim ``value`` (a 1-element int tensor) provably holds: ``Shape(x)[1]`` -> x.shape[1]."""
    node = value.producer()
    if is_op(node, "Squeeze", "Unsqueeze", "Reshape", "Identity", "Cast"):
        return _sequence_dim_of(node.inputs[0])
    if is_op(node, "Shape"):
        source = node.inputs[0]
        if source.shape is None:
            return None
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", source.shape.rank())
        rank = source.shape.rank()
        start, end = start % rank if start < 0 else start, end % rank if end < 0 else min(end, rank)
        return source.shape[start] if end - start == 1 else None
    if (read := shape_gather_dim(node)) is not None:
        source, axis = read
        return source.shape[axis]
    array = const_array(value)
    if array is not None and array.size == 1:
        return int(array.reshape(-1)[0])
    return None


def _is_arange_to(value: ir.Value, sequence) -> str | None:
    """None when ``value`` is provably ``[[0, 1, ..., S-1]]`` with S == ``sequence``; else why not."""
    node = value.producer()
    if is_op(node, "Slice"):
        data, starts, ends = (const_array(node.inputs[0]), const_array(node.inputs[1]), node.inputs[2])
        axes = const_array(node.inputs[3]) if len(node.inputs) > 3 else None
        steps = const_array(node.inputs[4]) if len(node.inputs) > 4 else None
        if data is None or data.ndim != 2 or data.shape[0] != 1:
            return "the positions are a slice of something other than a constant [1, N] table"
        if not np.array_equal(data[0], np.arange(data.shape[1])):
            return "the sliced position table is not 0, 1, 2, ..."
        if axes is None or axes.reshape(-1).tolist() not in ([1], [-1]):
            return "the positions are not sliced along the sequence axis"
        if starts is None or starts.reshape(-1).tolist() != [0]:
            return "the position slice does not start at 0"
        if steps is not None and steps.reshape(-1).tolist() != [1]:
            return "the position slice has a step other than 1"
        end = _sequence_dim_of(ends) if ends is not None else None
        if end is None or not same_dim(end, sequence):
            return "the position slice does not provably end at the ids' sequence length"
        return None
    if is_op(node, "Unsqueeze"):
        axes = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        inner = node.inputs[0].producer()
        if axes is None or axes.reshape(-1).tolist() != [0] or not is_op(inner, "Range"):
            return "the positions are not Unsqueeze(Range(...), 0)"
        start, limit, delta = (const_array(inner.inputs[0]), inner.inputs[1], const_array(inner.inputs[2]))
        if start is None or int(start) != 0 or delta is None or int(delta) != 1:
            return "the position range does not go 0, 1, 2, ..."
        end = _sequence_dim_of(limit)
        if end is None or not same_dim(end, sequence):
            return "the position range does not provably end at the ids' sequence length"
        return None
    return "the positions are neither a graph input nor arange(sequence)"


class EmbedLayerNormFusion(pattern.RewriteRuleClassBase):
    """Two or three embedding gathers summed, then LayerNormalization -> EmbedLayerNormalization."""

    def __init__(self, grouping: str) -> None:
        super().__init__(f"EmbedLayerNorm_{grouping}")
        self._grouping = grouping

    def pattern(self, op, t1, i1, t2, i2, t3, i3, gamma, beta):
        g1 = op.Gather(t1, i1, _outputs=["g1"])
        g2 = op.Gather(t2, i2, _outputs=["g2"])
        if self._grouping == "two":
            total = op.Add(g1, g2)
        else:
            g3 = op.Gather(t3, i3, _outputs=["g3"])
            total = op.Add(op.Add(g1, g2), g3) if self._grouping == "left" else op.Add(g1, op.Add(g2, g3))
        return op.LayerNormalization(total, gamma, beta, _outputs=["out"])

    # -- check -------------------------------------------------------------------------------

    def check(self, context, out, gamma, beta, **bindings) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._plan = None
        ln = out.producer()
        rank = out.shape.rank() if out.shape is not None else None
        axis = ln.attributes.get_int("axis", -1)
        if rank is None or axis not in (-1, rank - 1):
            return result.fail(f"the LayerNormalization is over axis {axis}, not the last one", out)
        if out.dtype != ir.DataType.FLOAT:
            return result.fail("EmbedLayerNormalization is fused for float32 only", out)
        leaves = []
        for k in ("1", "2", "3"):
            if f"g{k}" not in bindings:
                continue
            table, indices, gathered = bindings[f"t{k}"], bindings[f"i{k}"], bindings[f"g{k}"]
            if gathered.producer().attributes.get_int("axis", 0) != 0:
                return result.fail("an embedding Gather is not along axis 0", gathered)
            array = const_array(table)
            if array is None or array.ndim != 2 or array.dtype != np.float32:
                return result.fail("an embedding table is not a constant float32 [N, H] tensor", table)
            leaves.append((table, indices))
        widths = {table.const_value.shape[1] for table, _ in leaves}
        if len(widths) != 1:
            return result.fail("the embedding tables have different widths", out)
        width = widths.pop()
        for name, value in (("scale", gamma), ("bias", beta)):
            array = const_array(value)
            if array is None or array.shape != (width,) or array.dtype != np.float32:
                return result.fail(f"the LayerNormalization {name} is not a constant float32 [H] vector", value)
        plan_or_reason = self._classify(leaves)
        if isinstance(plan_or_reason, str):
            return result.fail(plan_or_reason, out)
        self._plan = plan_or_reason
        return result

    @staticmethod
    def _classify(leaves) -> dict | str:
        inputs, aranges, uniforms = [], [], []
        for table, indices in leaves:
            if indices.is_graph_input():
                if indices.shape is None or indices.shape.rank() != 2 or not indices.dtype.is_integer():
                    return f"the indices '{indices.name}' are not a rank-2 integer tensor"
                inputs.append((table, indices))
            elif (k := _uniform_index(indices)) is not None:
                uniforms.append((table, k))
            else:
                aranges.append((table, indices))
        if not inputs:
            return "no embedding is indexed by a graph input (the token ids)"
        word = next(
            (leaf for leaf in inputs if not isinstance(leaf[1].shape[0], int) or leaf[1].shape[0] != 1),
            inputs[0],
        )
        ids = word[1]
        others = [leaf for leaf in inputs if leaf is not word]
        position, position_ids, segment = None, None, None
        if aranges:
            if len(aranges) > 1:
                return "more than one embedding has computed indices"
            reason = _is_arange_to(aranges[0][1], ids.shape[1])
            if reason:
                return reason
            position = aranges[0][0]
        for table, indices in others:
            same = all(same_dim(a, b) for a, b in zip(indices.shape, ids.shape, strict=True))
            broadcast = indices.shape[0] == 1 and same_dim(indices.shape[1], ids.shape[1])
            if position is None and (same or broadcast):
                position, position_ids = table, indices
            elif segment is None and same:
                segment = (table, indices)
            else:
                return f"the indices '{indices.name}' do not have the token ids' shape"
        if position is None:
            return "no position embedding (indices arange(sequence) or a position_ids input)"
        if len(uniforms) > 1:
            return "more than one embedding has constant indices"
        if uniforms and uniforms[0][1] < 0:
            return "a constant embedding index is negative"
        return {
            "ids": ids,
            "word": word[0],
            "position": position,
            "position_ids": position_ids,
            "segment": segment,
            "constant_row": uniforms[0] if uniforms else None,
        }

    # -- rewrite -----------------------------------------------------------------------------

    def rewrite(self, op, out, gamma, beta, **_):
        plan = self._plan
        ln = out.producer()
        position = plan["position"]
        if plan["constant_row"] is not None:
            table, k = plan["constant_row"]
            row = table.const_value.numpy()[k]
            merged = position.const_value.numpy() + row[None, :]
            position = op.initializer(ir.tensor(merged.astype(np.float32)), name=f"{position.name}_plus_row{k}")
        def int32(value):
            return op.Cast(value, to=ir.DataType.INT32) if value.dtype != ir.DataType.INT32 else value

        segment_ids, segment_table = (None, None)
        if plan["segment"] is not None:
            segment_table, segment_ids = plan["segment"][0], int32(plan["segment"][1])
        position_ids = int32(plan["position_ids"]) if plan["position_ids"] is not None else None
        # Two outputs: ONNX Runtime's shape inference of the op writes mask_index (unused here).
        output, _mask_index = op.EmbedLayerNormalization(
            int32(plan["ids"]),
            segment_ids,
            plan["word"],
            position,
            segment_table,
            gamma,
            beta,
            None,
            position_ids,
            epsilon=ln.attributes.get_float("epsilon", 1e-5),
            _domain="com.microsoft",
            _outputs=2,
        )
        return output


def rules() -> list[pattern.RewriteRuleSet]:
    # Three gathers before two: a two-gather match inside a three-gather sum would not fuse
    # (the inner Add's output has another use), but it would be tried first for nothing.
    return [
        pattern.RewriteRuleSet(
            [EmbedLayerNormFusion.rule(grouping) for grouping in ("left", "right", "two")]
        )
    ]
