"""Shared IR helpers: op kinds, integer constants, dims and dims of Shape, node counts."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def is_op(node: ir.Node | None, *op_types: str) -> bool:
    """Whether ``node`` is one of the default-domain ``op_types``."""
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type in op_types


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value of a constant (initializer or folded), else None."""
    if value is None or value.const_value is None:
        return None
    return np.asarray(value.const_value.numpy())


def const_ints(value: ir.Value | None) -> list[int] | None:
    """The flattened values of an integer constant, else None."""
    if value is None or value.const_value is None:
        return None
    array = value.const_value.numpy()
    return [int(v) for v in array.reshape(-1)] if array.dtype.kind in "iu" else None


def same_dim(a: ir.SymbolicDim | int | None, b: ir.SymbolicDim | int | None) -> bool:
    """Whether two dims are provably equal: equal ints, or the same named symbolic dim."""
    if isinstance(a, int) or isinstance(b, int):
        return isinstance(a, int) and isinstance(b, int) and a == b
    if a is None or b is None or a.value is None or str(a.value).startswith("unk__"):
        return False
    return a == b


def shape_gather_dim(node: ir.Node | None) -> tuple[ir.Value, int] | None:
    """``Gather(Shape(t, start), [i])`` (axis 0) -> ``(t, axis)``: which dim of ``t`` it reads."""
    if not is_op(node, "Gather") or node.attributes.get_int("axis", 0) != 0:
        return None
    index = const_ints(node.inputs[1])
    shape = node.inputs[0].producer() if node.inputs[0] is not None else None
    if index is None or len(index) != 1 or not is_op(shape, "Shape"):
        return None
    source = shape.inputs[0]
    if source is None or source.shape is None:
        return None
    rank = source.shape.rank()
    start = shape.attributes.get_int("start", 0)
    start = start + rank if start < 0 else start
    axis = start + index[0] if index[0] >= 0 else None
    if axis is None or not 0 <= axis < rank:
        return None
    return source, axis

def count_nodes(model: ir.Model) -> int:
    """Nodes in the main graph, its subgraphs and the model's functions."""
    total = sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))
    for function in model.functions.values():
        total += sum(1 for _ in ir.traversal.RecursiveGraphIterator(function))
    return total
