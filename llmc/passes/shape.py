"""Shape-subgraph simplification: ``Shape``/``Size`` of statically known dims become constants.

Exporters compute shapes at run time (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``)
even when the dims are fixed. After ONNX shape inference, a ``Shape`` whose selected dims
(``start``/``end`` honoured) are all static ints is replaced by an int64 initializer, and
``Size`` of a fully static tensor by a scalar; the rest of the chain then folds. Dynamic dims
(batch, sequence) are never baked in.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from llmc.passes.registry import LlmcPass, PassOptions, register


def _selected_dims(node: ir.Node, shape: ir.Shape) -> list[int] | None:
    rank = len(shape)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    dims = list(shape.dims[start:end])
    if all(isinstance(d, int) for d in dims):
        return dims  # type: ignore[return-value]
    return None


def _static_value(node: ir.Node) -> np.ndarray | None:
    source = node.inputs[0] if node.inputs else None
    if source is None or source.shape is None:
        return None
    if node.op_type == "Shape":
        dims = _selected_dims(node, source.shape)
        return None if dims is None else np.array(dims, dtype=np.int64)
    if node.op_type == "Size" and source.shape.is_static():
        return np.array(int(np.prod(source.shape.numpy(), dtype=np.int64)), dtype=np.int64)
    return None


@register("shape", "replace Shape/Size of static dims with constants (after shape inference)")
class ShapeSimplificationPass(LlmcPass):
    """Turns shape computations on static dims into constants.

    Requires: nothing (runs ONNX shape inference itself, non-strict, weights not copied).
    Guarantees: only dims that are ints in the inferred shape are folded; a Shape whose output
    is a graph output is left alone. Shape annotations added by inference do not count as a
    modification.
    """

    def __init__(self, options: PassOptions | None = None) -> None:
        super().__init__()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        common_passes.ShapeInferencePass(strict_mode=False)(model)
        self.stats = {}
        outputs = frozenset(model.graph.outputs)
        for node in list(model.graph):
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("Shape", "Size"):
                continue
            if node.outputs[0] in outputs:
                continue
            array = _static_value(node)
            if array is None:
                continue
            self._replace(model.graph, node, array)
            self.stats[node.op_type] = self.stats.get(node.op_type, 0) + 1
        return ir.passes.PassResult(model, modified=bool(self.stats))

    @staticmethod
    def _replace(graph: ir.Graph, node: ir.Node, array: np.ndarray) -> None:
        old = node.outputs[0]
        value = ir.Value(
            type=ir.TensorType(ir.DataType.INT64),
            shape=ir.Shape(array.shape),
            const_value=ir.tensor(array),
        )
        old.replace_all_uses_with(value)
        graph.remove(node, safe=True)
        value.name = value.const_value.name = old.name  # the node is gone: its name is free
        graph.register_initializer(value)
