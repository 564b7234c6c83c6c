"""Evaluate a float16 graph faithfully on a CPU: float32 compute, float16 rounding after each node.

ONNX Runtime's CPU provider runs most float16 nodes by casting to float32 around them and then
drops the casts between neighbours, so a value that overflows float16 inside a chain never
becomes Inf there (a MatMul giving 3e5, scaled by 1e-3, reads 300 instead of Inf). A GPU would
give Inf. ``emulate_float16`` rewrites the graph into float32 with an explicit
``Cast(float16) -> Cast(float32)`` pair after every node that produces float16; ONNX Runtime keeps
lossy cast pairs, so every float16 value is rounded (and overflows) exactly where the GPU's
would. Each op is computed in float32 from float16-rounded inputs, which is how GPU kernels
accumulate. Values keep their names, so they can be compared one by one with the float32 graph.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from llmc.fp16.convert import retype_attributes, set_dtype

FLOAT = ir.DataType.FLOAT
HALF = ir.DataType.FLOAT16


def emulate_float16(model: ir.Model) -> ir.Model:
    """A float32 copy of ``model`` whose float16 values are rounded where the graph rounds them."""
    model = model.clone()
    graph = model.graph
    for value in graph.initializers.values():
        if value.dtype == HALF and value.const_value is not None:
            value.const_value = ir.tensor(value.const_value.numpy().astype(np.float32), name=value.name)
            set_dtype(value, FLOAT)
    for value in graph.inputs:
        if value.dtype == HALF:
            set_dtype(value, FLOAT)  # fed float16-representable values by the caller
    for node in list(graph):
        retype_attributes(node, HALF, FLOAT)
        for out in node.outputs:
            if out.dtype == HALF:
                _round_after(graph, node, out)
    return model


def _round_after(graph: ir.Graph, node: ir.Node, out: ir.Value) -> None:
    name = out.name
    out.name = f"{name}__exact"
    set_dtype(out, FLOAT)
    down = ir.node("Cast", [out], {"to": HALF}, name=f"{name}__round16")
    up = ir.node("Cast", [down.outputs[0]], {"to": FLOAT}, name=f"{name}__round32")
    down.outputs[0].name = f"{name}__half"
    set_dtype(down.outputs[0], HALF)
    rounded = up.outputs[0]
    set_dtype(rounded, FLOAT)
    rounded.shape = out.shape
    graph.insert_after(node, [down, up])
    ir.convenience.replace_all_uses_with(out, rounded, replace_graph_outputs=True)
    down.replace_input_with(0, out)  # replace_all_uses_with also rewired the rounding Cast
    rounded.name = name
