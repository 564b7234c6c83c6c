"""The bytes one decode step reads, by op type, counted on a graph (the decode roofline's
numerator, :mod:`llmc.generation.roofline`).

Weights: every initializer a node reads, once per step however many nodes read it (a tied
embedding read whole by the LM head's MatMul counts once, for the op type that read it first).
Gather and GatherBlockQuantized read only the rows their indices name: a table they alone read
(the token embedding) counts as the rows one decode token gathers, one per index (a dynamic
index axis is one token at batch 1), and the rest of it is reported apart (``gathered_out``).
The rotary cos/sin caches of GroupQueryAttention and RotaryEmbedding (com.microsoft) are read
the same way: one row, the new token's position.
KV cache: every ``past_key_values.*`` tensor at ``context`` cached tokens, batch 1, for the op
type that consumes it. Nodes inside subgraphs (If, Loop) are not counted: a decoder's step has
none.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from llmc.model.decoder import DecoderLayout

# Ops that read only the rows their indices name: op -> (axis attribute, inputs read by row).
GATHERS = {"Gather": ("axis", (0,)), "GatherBlockQuantized": ("gather_axis", (0, 2, 3))}
# Ops that read one row (the new token's position) of their rotary cos/sin caches: op -> inputs.
POSITION_ROWS = {("com.microsoft", "GroupQueryAttention"): (7, 8), ("com.microsoft", "RotaryEmbedding"): (2, 3)}


@dataclasses.dataclass
class StepTraffic:
    """Per op type: nodes and bytes read per decode step."""

    nodes: dict[str, int]
    weights: dict[str, int]
    kv: dict[str, int]
    gathered_out: int  # bytes of tables read by row that a step does not read

    def bytes_by_op(self) -> dict[str, int]:
        return {op: self.weights.get(op, 0) + self.kv.get(op, 0) for op in {*self.weights, *self.kv}}


def step_traffic(path: str | Path, layout: DecoderLayout | None, context: int) -> StepTraffic:
    """What one decode step at ``context`` cached tokens reads in the model at ``path`` (its
    weights are not loaded: sizes come from shapes and types); no ``layout``: weights only."""
    import onnx_ir as ir

    graph = ir.load(str(path)).graph
    nodes: dict[str, int] = {}
    whole: dict[str, tuple[str, int]] = {}  # initializer -> (first op type reading it whole, bytes)
    rows: dict[str, tuple[str, int, int]] = {}  # Gather-only initializer -> (op type, bytes gathered, size)
    for node in graph:
        nodes[node.op_type] = nodes.get(node.op_type, 0) + 1
        for index, value in enumerate(node.inputs):
            tensor = value.const_value if value is not None and value.is_initializer() else None
            if tensor is None:
                continue
            gathered = _gathered_bytes(node, index, tensor)
            if gathered is None:
                whole.setdefault(value.name, (node.op_type, tensor.nbytes))
            elif value.name not in rows or rows[value.name][1] < gathered:
                rows[value.name] = (node.op_type, gathered, tensor.nbytes)
    weights: dict[str, int] = {}
    for op_type, size in whole.values():
        weights[op_type] = weights.get(op_type, 0) + size
    gathered_out = 0
    for name, (op_type, size, full) in rows.items():
        if name not in whole:
            weights[op_type] = weights.get(op_type, 0) + size
            gathered_out += full - size
    return StepTraffic(nodes, weights, _kv_reads(graph, layout, context) if layout else {}, gathered_out)


def _gathered_bytes(node: Any, index: int, tensor: Any) -> int | None:
    """Bytes ``node`` reads of initializer input ``index`` if it gathers rows of it, else None."""
    gather = GATHERS.get(node.op_type)
    shape = list(tensor.shape)
    if index in POSITION_ROWS.get((node.domain, node.op_type), ()) and shape:
        return tensor.nbytes // max(shape[0], 1)
    if gather is None or index not in gather[1] or not shape or len(node.inputs) < 2:
        return None
    axis = node.attributes.get_int(gather[0], 0) % len(shape)
    indices = node.inputs[1]
    dims = list(indices.shape) if indices is not None and indices.shape is not None else []
    count = math.prod(d if isinstance(d, int) else 1 for d in dims)
    return min(tensor.nbytes, tensor.nbytes // max(shape[axis], 1) * count)


def _kv_reads(graph: Any, layout: DecoderLayout, context: int) -> dict[str, int]:
    """The cache read at ``context`` tokens, by the op type consuming each past tensor."""
    itemsize = np.dtype(layout.kv_dtype).itemsize if layout.kv_dtype is not None else 4
    each = (layout.kv_heads or 0) * context * (layout.head_size or 0) * itemsize
    out: dict[str, int] = {}
    for value in graph.inputs:
        if value.name not in layout.past_names:
            continue
        users = [use.node.op_type for use in value.uses()]
        op_type = users[0] if users else "(unused)"
        out[op_type] = out.get(op_type, 0) + each
    return out


def file_nodes(path: str | Path) -> int:
    """Nodes in the top graph of the ONNX file at ``path`` (its weights are not read)."""
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)
