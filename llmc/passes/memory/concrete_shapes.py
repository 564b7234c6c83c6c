"""Concrete shapes and byte sizes of every tensor of a graph for one set of input shapes.

Shape inference is ONNX Runtime's symbolic shape inference (``onnxruntime.tools.
symbolic_shape_infer``), the one its transformers optimizer uses: unlike ONNX's, it knows the
com.microsoft ops llmc's fusions emit (Attention, MultiHeadAttention, SkipLayerNormalization,
RotaryEmbedding...) and propagates shape arithmetic (Shape -> Gather -> Concat -> Reshape). It
runs on a weightless copy of the graph (large initializers become inputs of the same shape), so
it takes tens of milliseconds. llmc adds the int8 ops it emits that the library lacks
(DynamicQuantizeMatMul, MatMulIntegerToFloat, QAttention).

Dims that depend on input *values* (a rotary cache sized by ``ReduceMax(position_ids) + 1``)
stay symbolic there; those tensors are then evaluated for real: the cone of ops that computes
them runs in ONNX Runtime on the seeded inputs of :mod:`llmc.model.feeds` (for decoders,
``position_ids`` count on from the cache, as in generation).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from llmc.errors import LlmcError

# Initializers up to this many elements keep their values (shape arithmetic reads them).
_KEEP_VALUES_MAX_ELEMENTS = 1024


def tensor_shapes(
    model: ir.Model, shapes: dict[str, tuple[int, ...]], feeds: dict[str, np.ndarray] | None = None
) -> dict[str, tuple[tuple[int, ...], ir.DataType]]:
    """``{tensor name: (concrete shape, dtype)}`` of the graph's inputs, weights and node outputs."""
    proto, stripped = _weightless_proto(model, shapes)
    known = _symbolic_inference(proto)
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
        result.update(_evaluate(model, proto, stripped, unresolved, shapes, feeds))
    return result


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


def _weightless_proto(model: ir.Model, shapes: dict[str, tuple[int, ...]]) -> tuple[onnx.ModelProto, list[str]]:
    """The model as a proto with concrete input shapes and its large weights turned into inputs."""
    clone = model.clone()
    stripped = []
    for name, value in list(clone.graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or tensor.size <= _KEEP_VALUES_MAX_ELEMENTS:
            continue
        clone.graph.initializers.pop(name)
        value.const_value = None
        if value not in clone.graph.inputs:
            clone.graph.inputs.append(value)
        stripped.append(name)
    for value in clone.graph.inputs:
        if value.name in shapes:
            value.shape = ir.Shape(shapes[value.name])
    return ir.serde.serialize_model(clone), stripped


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _symbolic_inference(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    from onnxruntime.tools import symbolic_shape_infer as ssi

    class Inference(ssi.SymbolicShapeInference):
        """ONNX Runtime's symbolic shape inference plus the int8 contrib ops llmc emits."""

        def __init__(self) -> None:
            super().__init__(int_max=2**31 - 1, auto_merge=True, guess_output_rank=False, verbose=0)
            self.dispatcher_["DynamicQuantizeMatMul"] = self._float_matmul
            self.dispatcher_["MatMulIntegerToFloat"] = self._float_matmul
            self.dispatcher_["QAttention"] = self._qattention
            self.dispatcher_["SkipLayerNormalization"] = self._skip_layer_norm
            self.dispatcher_["SkipSimplifiedLayerNormalization"] = self._skip_layer_norm

        def _skip_layer_norm(self, node: onnx.NodeProto) -> None:
            # The library types outputs 0 and 3; 1 and 2 (mean, inverse std) are [..., 1] float.
            self._infer_SkipLayerNormalization(node)
            shape = self._get_shape(node, 0)
            for index in (1, 2):
                if len(node.output) > index and node.output[index]:
                    vi = self.known_vi_[node.output[index]]
                    vi.CopyFrom(
                        helper.make_tensor_value_info(node.output[index], onnx.TensorProto.FLOAT, [*shape[:-1], 1])
                    )

        def _float_matmul(self, node: onnx.NodeProto) -> None:
            self._compute_matmul_shape(node, onnx.TensorProto.FLOAT)

        def _qattention(self, node: onnx.NodeProto) -> None:
            # input [batch, sequence, hidden], weight [hidden, 3 * hidden] -> [batch, sequence, hidden]
            shape = self._get_shape(node, 0)
            weight = self._get_shape(node, 1)
            sizes = ssi.get_attribute(node, "qkv_hidden_sizes")
            shape[2] = int(sizes[2]) if sizes else weight[1] // 3
            dtype = self.known_vi_[node.input[3]].type.tensor_type.elem_type  # input_scale's type
            vi = self.known_vi_[node.output[0]]
            vi.CopyFrom(helper.make_tensor_value_info(node.output[0], dtype, shape))

    inference = Inference()
    with _quiet(ssi.__name__):
        inference._preprocess(proto)
        try:
            while inference.run_:
                inference._infer_impl()
        except Exception:
            # An op the library cannot infer stops it; what it knows so far is kept and the
            # rest is evaluated (see _evaluate).
            pass
    return dict(inference.known_vi_)


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
    import onnxruntime as ort

    from llmc.model.feeds import make_feeds

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
            run_feeds[value.name] = model.graph.initializers[value.name].const_value.numpy()
        else:
            run_feeds[value.name] = feeds[value.name]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            cone_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
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
