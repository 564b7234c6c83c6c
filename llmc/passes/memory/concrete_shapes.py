"""Concrete shapes and byte sizes of every tensor of a graph for one set of input shapes.

Shapes come from ONNX Runtime's symbolic shape inference run at the concrete input shapes
(:func:`llmc.model.symbolic_shapes.infer`: it knows the com.microsoft ops llmc's fusions emit
and llmc's int8 ops, propagates shape arithmetic, and runs on a weightless copy of the graph, so
it takes tens of milliseconds).

Dims that depend on input *values* (a rotary cache sized by ``ReduceMax(position_ids) + 1``)
stay symbolic there; those tensors are then evaluated for real: the cone of ops that computes
them runs in ONNX Runtime on the seeded inputs of :mod:`llmc.model.feeds` (for decoders,
``position_ids`` count on from the cache, as in generation).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from llmc.errors import LlmcError
from llmc.model.symbolic_shapes import infer


def tensor_shapes(
    model: ir.Model, shapes: dict[str, tuple[int, ...]], feeds: dict[str, np.ndarray] | None = None
) -> dict[str, tuple[tuple[int, ...], ir.DataType]]:
    """``{tensor name: (concrete shape, dtype)}`` of the graph's inputs, weights and node outputs."""
    # An op the inference cannot handle stops it; what it knew is kept and the rest is evaluated.
    inferred = infer(model, input_shapes=shapes)
    known = inferred.value_info
    result: dict[str, tuple[tuple[int, ...], ir.DataType]] = {}
    unresolved = []
    values = _values(model)
    for name in _tensor_names(model):
        if values[name].type is not None and not isinstance(values[name].type, ir.TensorType):
            result[name] = ((0,), ir.DataType.UNDEFINED)  # sequences and optionals: not sized
            continue
        vi = known.get(name)
        dims = _concrete_dims(vi) if vi is not None else None
        if dims is None:
            unresolved.append(name)
        else:
            result[name] = (dims, ir.DataType(vi.type.tensor_type.elem_type))
    if unresolved:
        result.update(_evaluate(model, inferred.proto, inferred.stripped, unresolved, shapes, feeds))
    _grouped_attention_present(model, result, shapes)
    return result


def _grouped_attention_present(
    model: ir.Model, result: dict[str, tuple[tuple[int, ...], ir.DataType]], shapes: dict[str, tuple[int, ...]]
) -> None:
    """GroupQueryAttention's present key/value hold ``max(past, total)`` positions, the total being
    the ``attention_mask``'s length: the inference gives them the past's length (it assumes one
    buffer bound as past and present, which a run feeding a shorter past does not have)."""
    total = shapes.get("attention_mask")
    if total is None or len(total) != 2:
        return
    for node in model.graph:
        if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft":
            continue
        for value in node.outputs[1:3]:
            known = result.get(value.name)
            if known is not None and len(known[0]) == 4 and known[0][2] < total[1]:
                dims = known[0]
                result[value.name] = ((dims[0], dims[1], int(total[1]), dims[3]), known[1])


def nbytes(shape: tuple[int, ...], dtype: ir.DataType) -> int:
    if dtype == ir.DataType.UNDEFINED or dtype == ir.DataType.STRING:
        return 0  # not known, or not a fixed size
    return int(math.ceil(math.prod(shape) * dtype.itemsize))


def _values(model: ir.Model) -> dict[str, ir.Value]:
    values = {v.name: v for v in model.graph.inputs}
    values.update(model.graph.initializers)
    for node in model.graph:
        values.update((v.name, v) for v in node.outputs if v.name)
    return values


def _tensor_names(model: ir.Model) -> list[str]:
    names = [v.name for v in model.graph.inputs]
    names += [n for n in model.graph.initializers if n not in set(names)]
    for node in model.graph:
        names += [v.name for v in node.outputs if v.name]
    return names


def _concrete_dims(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    if vi.type.tensor_type.elem_type == 0:
        return None
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return tuple(dims)


def _evaluate(
    model: ir.Model,
    proto: onnx.ModelProto,
    stripped: list[str],
    names: list[str],
    shapes: dict[str, tuple[int, ...]],
    feeds: dict[str, np.ndarray] | None,
) -> dict[str, tuple[tuple[int, ...], ir.DataType]]:
    """Run the ops that compute ``names`` in ONNX Runtime and read their shapes."""
    from llmc.model.feeds import make_feeds
    from llmc.runtime.ort import SessionConfig, create_session

    graph = proto.graph
    needed = set(names)
    nodes = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(i for i in node.input if i)
    nodes.reverse()
    weights = set(stripped)
    inputs = [i for i in graph.input if i.name in needed]
    cone = helper.make_graph(
        nodes,
        "llmc_shape_cone",
        inputs,
        [helper.make_empty_tensor_value_info(n) for n in names],
        [t for t in graph.initializer if t.name in needed],
    )
    cone_model = helper.make_model(cone, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    cone_model.functions.extend(proto.functions)
    if feeds is None:
        feeds = make_feeds(model, shapes)
    run_feeds = {}
    for value in inputs:
        if value.name in weights:
            run_feeds[value.name] = _weight_array(model, value.name)
        else:
            run_feeds[value.name] = feeds[value.name]
    try:
        session = create_session(cone_model.SerializeToString(), SessionConfig(graph_optimization_level="disable"))
        arrays = session.run(names, run_feeds)
    except Exception as exc:
        first = " ".join(str(exc).split())[:300]
        raise LlmcError(
            f"cannot determine the shape of tensor '{names[0]}' at these input shapes: shape "
            f"inference does not resolve it and running the ops that compute it failed ({first}); "
            "check the --shape values"
        ) from None
    out = {}
    for n, a in zip(names, arrays, strict=True):
        if isinstance(a, np.ndarray) and a.dtype != object:
            out[n] = (tuple(int(d) for d in a.shape), ir.DataType.from_numpy(a.dtype))
        else:
            out[n] = ((0,), ir.DataType.UNDEFINED)
    return out


def _weight_array(model: ir.Model, name: str) -> np.ndarray:
    """An initializer's values; one line if they cannot be materialized (absurd dims, no data)."""
    tensor = model.graph.initializers[name].const_value
    try:
        return tensor.numpy()
    except (MemoryError, ValueError) as exc:
        raise LlmcError(
            f"initializer '{name}' ({tensor.dtype.name} {list(tensor.shape)}) cannot be read "
            f"({type(exc).__name__}); its dims or data are wrong: re-export the model"
        ) from None
