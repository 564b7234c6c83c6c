"""INT4 weight-only quantization of MatMul weights into ``com.microsoft`` ``MatMulNBits``.

What is ONNX Runtime's: the numerics. Each weight is quantized by ORT's own
``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`` (round-to-nearest:
``DefaultWeightOnlyQuantConfig``, its C++ block quantizer; HQQ: ``HQQWeightOnlyQuantConfig``),
run on a one-node ONNX model holding that weight, so the packed blocks, scales and zero points
are exactly the layout ORT's MatMulNBits kernels read.

What is ours: which nodes are quantized and why the others are not (constant 2-D float32
weights whose K is a multiple of the block size; the LM head kept float by default), the
graph rewrite in onnx-ir (a weight shared by several MatMuls is quantized once), the
``accuracy_level`` attribute (HQQ's quantizer does not write it), and the manifest's record of
every MatMul: quantized with which settings, or kept float with the reason.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir

from llmc.int4.options import Int4Options

MS_DOMAIN = "com.microsoft"
# Ops a head's output may pass through on its way to ``logits`` (bias, reshapes, casts, scaling).
_HEAD_PATH_OPS = {"Add", "Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze", "Transpose", "Mul", "Div", "Tanh"}
HEAD_REASON = (
    "LM head (produces 'logits'): kept float by default, its error moves every token's ranking "
    "directly (int4 heads are where top-1 agreement is lost)"
)


def head_nodes(model: ir.Model) -> set[int]:
    """The MatMul/Gemm nodes (by id) whose output reaches a graph output named ``*logits*``
    through bias, reshape, cast or scaling ops only."""
    found: set[int] = set()
    stack = [(v.producer(), 0) for v in model.graph.outputs if "logits" in (v.name or "")]
    while stack:
        node, depth = stack.pop()
        if node is None or depth > 6:
            continue
        if node.op_type in ("MatMul", "Gemm") and node.domain == "":
            found.add(id(node))
        elif node.op_type in _HEAD_PATH_OPS and node.domain == "":
            stack.extend((v.producer(), depth + 1) for v in node.inputs if v is not None and v.const_value is None)
    return found


def float_reason(node: ir.Node, options: Int4Options, heads: set[int]) -> str | None:
    """Why this MatMul stays float, or None when it is quantized."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if id(node) in heads and not options.quantize_head:
        tied = weight is not None and weight.const_value is None
        return HEAD_REASON + ("; its weight is computed (a tied embedding, transposed at run time)" if tied else "")
    if weight is None or weight.const_value is None:
        return "B is computed (activation x activation), not a constant weight"
    if weight.const_value.dtype != ir.DataType.FLOAT:
        return f"weight is {weight.const_value.dtype.name}, not float32"
    shape = tuple(weight.const_value.shape)
    if len(shape) != 2:
        return f"weight has rank {len(shape)}; MatMulNBits takes a 2-D (K, N) weight"
    k = shape[0]
    if k % options.block_size:
        return (
            f"K={k} is not a multiple of --block-size {options.block_size} "
            "(a padded last block would quantize zeros); a smaller --block-size may fit"
        )
    return None


def ort_quantize_weight(weight: np.ndarray, options: Int4Options) -> dict[str, Any]:
    """ORT's MatMulNBits quantization of one (K, N) float32 weight: attributes and the packed
    ``B``, ``scales`` and (asymmetric) ``zero_points`` arrays, by MatMulNBits input position."""
    ort = _ort_quantizer()
    DefaultWeightOnlyQuantConfig = ort.DefaultWeightOnlyQuantConfig  # noqa: N806
    HQQWeightOnlyQuantConfig = ort.HQQWeightOnlyQuantConfig  # noqa: N806
    MatMulNBitsQuantizer = ort.MatMulNBitsQuantizer  # noqa: N806
    k, n = weight.shape
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["A", "W"], ["Y"], name="matmul")], "one_weight",
        [oh.make_tensor_value_info("A", onnx.TensorProto.FLOAT, ["m", k])],
        [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["m", n])],
        [onh.from_array(np.ascontiguousarray(weight), "W")],
    )
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    if options.method == "hqq":
        config = HQQWeightOnlyQuantConfig(block_size=options.block_size, bits=4)
    else:
        config = DefaultWeightOnlyQuantConfig(block_size=options.block_size, is_symmetric=options.symmetric, bits=4)
    quantizer_logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantizer_logger.level
    quantizer_logger.setLevel(logging.WARNING)  # ORT logs every node at INFO
    try:
        with warnings.catch_warnings():  # HQQ hands torch a read-only array it only reads
            warnings.simplefilter("ignore", UserWarning)
            quantizer = MatMulNBitsQuantizer(proto, algo_config=config)
            quantizer.process()
    finally:
        quantizer_logger.setLevel(level)
    result = quantizer.model.model
    (node,) = [x for x in result.graph.node if x.op_type == "MatMulNBits"]
    tensors = {t.name: onh.to_array(t) for t in result.graph.initializer}
    attrs = {a.name: oh.get_attribute_value(a) for a in node.attribute}
    return {"attributes": attrs, "inputs": [tensors[name] for name in node.input[1:]]}


def _ort_quantizer():
    """ORT's quantizer module, imported without the root logging setup it does on import
    (``logging.basicConfig(level=INFO)``, which would print every library's INFO lines)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    return matmul_nbits_quantizer


def quantize_model(model: ir.Model, options: Int4Options) -> dict[str, Any]:
    """Replace the selected MatMuls by MatMulNBits in place; return the manifest's record."""
    graph = model.graph
    heads = head_nodes(model)
    quantized: dict[str, dict[str, Any]] = {}
    kept: dict[str, str] = {}
    done: dict[int, list[ir.Value]] = {}  # weight value id -> its quantized inputs (shared weights)
    before = after = 0
    for node in list(graph):
        if node.op_type != "MatMul" or node.domain != "":
            continue
        name = node.name or node.outputs[0].name
        reason = float_reason(node, options, heads)
        if reason is not None:
            kept[name] = reason
            continue
        weight = node.inputs[1]
        k, n = (int(d) for d in weight.const_value.shape)
        if id(weight) not in done:
            result = ort_quantize_weight(weight.const_value.numpy(), options)
            done[id(weight)] = _register(graph, weight.name, result["inputs"])
            before += weight.const_value.nbytes
            after += sum(int(v.const_value.nbytes) for v in done[id(weight)])
        _replace(graph, node, done[id(weight)], k, n, options)
        quantized[name] = {"K": k, "N": n, "weight": weight.name}
    for value in list(graph.initializers.values()):
        if not value.uses() and value not in graph.outputs:
            del graph.initializers[value.name]
    if quantized:
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    return {
        "quantized": quantized,
        "kept_float": kept,
        "weights_bytes": {"before": before, "after": after},
    }


def _register(graph: ir.Graph, base: str, arrays: list[np.ndarray]) -> list[ir.Value]:
    values = []
    for suffix, array in zip(("_Q4", "_scales", "_zero_points"), arrays, strict=False):
        name = base + suffix
        index = 1
        while name in graph.initializers:
            name, index = f"{base}{suffix}_{index}", index + 1
        tensor = ir.tensor(np.ascontiguousarray(array), name=name)
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
        graph.register_initializer(value)
        values.append(value)
    return values


def _replace(graph: ir.Graph, node: ir.Node, inputs: list[ir.Value], k: int, n: int, options: Int4Options) -> None:
    attributes = [
        ir.AttrInt64("K", k), ir.AttrInt64("N", n), ir.AttrInt64("bits", 4),
        ir.AttrInt64("block_size", options.block_size),
    ]
    if options.accuracy_level:  # unset means 0 (float32 compute); ORT writes it only when set too
        attributes.append(ir.AttrInt64("accuracy_level", options.accuracy_level))
    new = ir.Node(MS_DOMAIN, "MatMulNBits", [node.inputs[0], *inputs], attributes, name=node.name, num_outputs=1)
    old = node.outputs[0]
    out = new.outputs[0]
    out.shape, out.type = old.shape, old.type
    graph.insert_before(node, new)
    ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
    name = old.name
    graph.remove(node, safe=True)
    out.name = name
