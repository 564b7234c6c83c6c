"""Weight-only quantization of MatMul weights into ``com.microsoft`` ``MatMulNBits`` (int4 blocks
for the body, int8 blocks for the LM head) and of the token embedding into ``GatherBlockQuantized``.

Numerics by method (``Int4Options.method``):

* ``rtn`` and ``hqq`` are ONNX Runtime's: each weight is quantized by
  ``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`` (``DefaultWeightOnlyQuantConfig``,
  its C++ block quantizer; ``HQQWeightOnlyQuantConfig``) on a one-node model holding that weight, so
  the packed blocks and scales are the layout ORT's kernels read. HQQ's float zero points are then
  moved into offsets (``llmc.weight_only.blocks.hqq_offsets``) so that its blocks run on the fast kernel.
* ``minmax`` (llama.cpp's Q4_1 rounding) and every 8-bit block (Q8_0's) are ours, in
  ``llmc.weight_only.blocks`` (why: its docstring).

What is ours besides: which nodes are quantized to what and why the others are not (constant 2-D
float32 weights, or the transpose of one, whose K is a multiple of the block size), per-node
overrides (the accuracy gate's fallback), the graph rewrite in onnx-ir (``llmc.weight_only.rewrite``; a
weight shared by several MatMuls, such as a tied embedding and head, is quantized once), and the
manifest's record of every MatMul: quantized with which settings, or kept float with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir

from llmc.model.decoder import is_logits
from llmc.weight_only.blocks import hqq_offsets, q4_minmax, q8_digits, q8_symmetric
from llmc.weight_only.options import Int4Options
from llmc.weight_only.rewrite import MS_DOMAIN, Rewriter, register

# Ops a head's output may pass through on its way to ``logits`` (bias, reshapes, casts, scaling).
_HEAD_PATH_OPS = {"Add", "Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze", "Transpose", "Mul", "Div", "Tanh"}
# 8-bit MatMulNBits has no fast float-activation path in ONNX Runtime 1.32's CPU kernels (measured,
# 576x1536 at batch 1: 1.7 ms at accuracy_level 0, 0.1 ms at 4), so 8-bit blocks always run at 4.
INT8_ACCURACY_LEVEL = 4
# The ``done`` key of a weight stored as two 4-bit digits of its 8-bit blocks (an int8 head at level 0).
DIGITS = 82
# An override: int4 blocks with float32 activations (accuracy_level 0), whatever the build's level.
ACCURATE_INT4 = "int4@0"
HEAD_REASON = (
    "LM head (produces 'logits'): kept float (--lm-head float); its error moves every token's ranking directly"
)


def head_nodes(model: ir.Model) -> set[int]:
    """The MatMul/Gemm nodes (by id) whose output reaches a graph output named ``*logits*``
    through bias, reshape, cast or scaling ops only."""
    found: set[int] = set()
    stack = [(v.producer(), 0) for v in model.graph.outputs if is_logits(v.name)]
    while stack:
        node, depth = stack.pop()
        if node is None or depth > 6:
            continue
        if node.op_type in ("MatMul", "Gemm") and node.domain == "":
            found.add(id(node))
        elif node.op_type in _HEAD_PATH_OPS and node.domain == "":
            stack.extend((v.producer(), depth + 1) for v in node.inputs if v is not None and v.const_value is None)
    return found


def constant_weight(node: ir.Node) -> tuple[ir.Value, bool] | str:
    """The constant behind a MatMul's B: ``(value, transposed)`` (B is ``Transpose(value)``, as a
    tied LM head's is), or why there is none."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is not None and weight.const_value is None:
        producer = weight.producer()
        if producer is not None and producer.op_type == "Transpose" and producer.domain == "":
            source = producer.inputs[0]
            perm = producer.attributes.get("perm")
            if source is not None and source.const_value is not None and perm is not None and list(perm.value) == [1, 0]:
                return source, True
    if weight is None or weight.const_value is None:
        return "B is computed (activation x activation), not a constant weight"
    return weight, False


def float_reason(node: ir.Node, precision: str, block: int) -> str | None:
    """Why this MatMul stays float at ``precision`` ("int4", "int4@0", "int8" or "float"), or None."""
    if precision == "float":
        return "kept float (per-node override)"
    found = constant_weight(node)
    if isinstance(found, str):
        return found
    weight, transposed = found
    if weight.const_value.dtype != ir.DataType.FLOAT:
        return f"weight is {weight.const_value.dtype.name}, not float32"
    shape = tuple(weight.const_value.shape)
    if len(shape) != 2:
        return f"weight has rank {len(shape)}; MatMulNBits takes a 2-D (K, N) weight"
    k = shape[1] if transposed else shape[0]
    if k % block:
        return (
            f"K={k} is not a multiple of --block-size {block} "
            "(a padded last block would quantize zeros); a smaller --block-size may fit"
        )
    return None


def node_name(node: ir.Node) -> str:
    return node.name or node.outputs[0].name


def node_precisions(model: ir.Model, options: Int4Options, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Every MatMul's precision before checks: ``options.body`` (int4 or int8), ``options.head``
    for the LM head, then ``overrides`` (node name -> "int4" | "int8" | "float")."""
    heads = head_nodes(model)
    result = {
        node_name(node): options.head if id(node) in heads else options.body
        for node in model.graph
        if node.op_type == "MatMul" and node.domain == ""
    }
    result.update({k: v for k, v in (overrides or {}).items() if k in result})
    return result


def ort_quantize_weight(weight: np.ndarray, options: Int4Options, block: int | None = None) -> dict[str, Any]:
    """ORT's MatMulNBits quantization of one (K, N) float32 weight: attributes and the packed
    ``B``, ``scales`` and (asymmetric) ``zero_points`` arrays, by MatMulNBits input position."""
    ort = _ort_quantizer()
    DefaultWeightOnlyQuantConfig = ort.DefaultWeightOnlyQuantConfig  # noqa: N806
    HQQWeightOnlyQuantConfig = ort.HQQWeightOnlyQuantConfig  # noqa: N806
    MatMulNBitsQuantizer = ort.MatMulNBitsQuantizer  # noqa: N806
    k, n = weight.shape
    block = block or options.block
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["A", "W"], ["Y"], name="matmul")], "one_weight",
        [oh.make_tensor_value_info("A", onnx.TensorProto.FLOAT, ["m", k])],
        [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["m", n])],
        [onh.from_array(np.ascontiguousarray(weight), "W")],
    )
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    if options.method == "hqq":
        config = HQQWeightOnlyQuantConfig(block_size=block, bits=4)
    else:
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=options.symmetric, bits=4)
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


Settings = dict[str, tuple[int, int]]  # node name -> (block size, accuracy level) of its int4 blocks


def quantize_model(
    model: ir.Model, options: Int4Options, overrides: dict[str, str] | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Replace the selected MatMuls by MatMulNBits (and the embedding Gather by
    GatherBlockQuantized) in place; return the manifest's record. ``settings``: per-node int4
    block size and accuracy level (``llmc.weight_only.choose``), else the options' for every node."""
    graph = model.graph
    heads = head_nodes(model)
    precisions = node_precisions(model, options, overrides)
    settings = settings or {}
    rewriter = Rewriter(graph)
    done: dict[tuple[int, ...], tuple[list[ir.Value], ir.Value | None]] = {}
    quantized: dict[str, dict[str, Any]] = {}
    kept: dict[str, str] = {}
    sizes = _Sizes()
    pack = options.pack and model.opset_imports.get("", 0) >= 13  # Split takes its sizes as an input
    for group in packable_groups(model, precisions, heads, options, kept, pack, settings):
        nodes = [item.node for item in group]
        bits = 4 if group[0].precision.startswith("int4") else 8
        block, level = group[0].block, group[0].level
        if bits == 4 and id(nodes[0]) in heads:
            level = options.head_level
        if bits == 8 and options.head_level == 0 and id(nodes[0]) in heads:
            quantized[node_name(nodes[0])] = _head_digits(graph, rewriter, group[0], options, done, sizes)
            continue
        key = (*[id(item.weight) for item in group], bits, block)
        kn = group[0].kn if len(group) == 1 else np.concatenate([item.kn for item in group], axis=1)
        if key not in done:
            base = group[0].weight.name if len(group) == 1 else "+".join(item.weight.name for item in group)
            done[key] = _quantize(graph, base, kn, bits, options, block)
            for item in group:
                sizes.before_add(item.weight)
            sizes.after_add(done[key])
        values, offsets = done[key]
        widths = [int(item.kn.shape[1]) for item in group]
        x, head = nodes[0].inputs[0], id(nodes[0]) in heads
        result = rewriter.matmul(nodes, values, offsets, bits, block, int(kn.shape[0]), widths, level)
        if head and options.head_rescore:  # the float rows of the head's top candidates, exactly
            rows = register(graph, group[0].weight.name + "_rows", np.ascontiguousarray(kn.T))
            sizes.after += int(rows.const_value.nbytes)
            rewriter.rescore(result, x, rows, options.head_rescore)
        for item in group:
            quantized[node_name(item.node)] = {
                "K": int(item.kn.shape[0]), "N": int(item.kn.shape[1]), "weight": item.weight.name,
                "precision": item.precision.split("@")[0], "block_size": block, "accuracy_level": level,
                **({"packed_with": len(group) - 1} if len(group) > 1 else {}),
            }
    embeddings = _quantize_embeddings(graph, rewriter, done, options, sizes)
    _remove_dead(graph)
    if quantized or embeddings:
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    return {
        "quantized": quantized,
        "kept_float": kept,
        "embeddings": embeddings,
        "weights_bytes": {"before": sizes.before, "after": sizes.after},
    }


@dataclasses.dataclass
class _Candidate:
    node: ir.Node
    precision: str
    weight: ir.Value
    kn: np.ndarray  # the (K, N) weight
    block: int
    level: int


def packable_groups(
    model: ir.Model, precisions: dict[str, str], heads: set[int], options: Int4Options, kept: dict[str, str],
    pack: bool, settings: Settings,
) -> list[list[_Candidate]]:
    """The MatMuls to quantize (why the others stay float goes into ``kept``), grouped: with
    ``pack``, MatMuls reading the same activation at the same precision and settings (q/k/v,
    gate/up) form one group, quantized as one weight (its columns side by side) and run as one
    MatMulNBits. The LM head is never packed."""
    groups: dict[tuple[Any, ...], list[_Candidate]] = {}
    order: list[list[_Candidate]] = []
    for node in list(model.graph):
        if node.op_type != "MatMul" or node.domain != "":
            continue
        name, precision = node_name(node), precisions[node_name(node)]
        block, level = _setting(name, precision, options, settings)
        reason = HEAD_REASON if precision == "float" and id(node) in heads else float_reason(node, precision, block)
        if reason is not None:
            kept[name] = reason
            continue
        weight, transposed = constant_weight(node)  # type: ignore[misc]
        array = weight.const_value.numpy()
        item = _Candidate(node, precision, weight, array.T if transposed else array, block, level)
        key = (id(node.inputs[0]), precision, int(item.kn.shape[0]), block, level)
        if pack and id(node) not in heads and key in groups and all(c.weight is not weight for c in groups[key]):
            groups[key].append(item)
            continue
        order.append([item])
        if pack and id(node) not in heads:
            groups[key] = order[-1]
    return order


def _setting(name: str, precision: str, options: Int4Options, settings: Settings) -> tuple[int, int]:
    """(block size, accuracy level) of one node at ``precision``."""
    if precision in ("int8", "float"):
        return options.block, INT8_ACCURACY_LEVEL
    block, level = settings.get(name, (options.block, options.level))
    return block, 0 if precision == ACCURATE_INT4 else level


class _Sizes:
    """Bytes of the float weights replaced and of what replaced them (each weight once)."""

    def __init__(self) -> None:
        self.before = self.after = 0
        self._seen: set[int] = set()

    def add(self, weight: ir.Value, new: tuple[list[ir.Value], ir.Value | None]) -> None:
        self.before_add(weight)
        self.after_add(new)

    def before_add(self, weight: ir.Value) -> None:
        if id(weight) not in self._seen:
            self._seen.add(id(weight))
            self.before += int(weight.const_value.nbytes)

    def after_add(self, new: tuple[list[ir.Value], ir.Value | None]) -> None:
        values, offsets = new
        self.after += sum(int(v.const_value.nbytes) for v in [*values, *([offsets] if offsets else [])])


def _head_digits(
    graph: ir.Graph, rewriter: Rewriter, item: _Candidate, options: Int4Options,
    done: dict[tuple[int, ...], Any], sizes: _Sizes,
) -> dict[str, Any]:
    """An int8 LM head at accuracy level 0: its 8-bit blocks as two exact 4-bit digits."""
    k, n = (int(d) for d in item.kn.shape)
    if (id(item.weight), DIGITS) not in done:
        high, low = q8_digits(q8_symmetric(item.kn, options.block))
        base = item.weight.name + "_Q8"
        zero = np.zeros((n, (k // options.block + 1) // 2), np.uint8)  # packed 4-bit zero points 0
        done[id(item.weight), DIGITS] = (
            [register(graph, base + "_high", high.packed), register(graph, base + "_high_scales", high.scales)],
            [register(graph, base + "_low", low.packed), register(graph, base + "_low_scales", low.scales),
             register(graph, base + "_low_zero_points", zero)],
        )
        sizes.before_add(item.weight)
        sizes.after_add((done[id(item.weight), DIGITS][0] + done[id(item.weight), DIGITS][1], None))
    high_values, low_values = done[id(item.weight), DIGITS]
    rewriter.matmul_digits(item.node, high_values, low_values, options.block, k, n)
    return {"K": k, "N": n, "weight": item.weight.name, "precision": "int8", "accuracy_level": 0,
            "form": "two exact 4-bit digits (float32 activations)"}


def _quantize(
    graph: ir.Graph, base: str, kn: np.ndarray, bits: int, options: Int4Options, block: int
) -> tuple[list[ir.Value], ir.Value | None]:
    """Blocks of one (K, N) weight as new initializers: MatMulNBits' inputs, and the offsets."""
    if bits == 8:
        blocks = q8_symmetric(kn, block)
    elif options.method == "minmax":
        blocks = q4_minmax(kn, block)
    else:
        result = ort_quantize_weight(np.ascontiguousarray(kn), options, block)
        if options.method == "rtn":
            names = ("_Q4", "_scales", "_zero_points")
            return [register(graph, base + suffix, a) for suffix, a in zip(names, result["inputs"], strict=False)], None
        packed, scales, zero_points = result["inputs"]
        blocks = hqq_offsets(packed, scales, zero_points, block, kn.shape[1])
    suffix = "_Q4" if bits == 4 else "_Q8"
    values = [register(graph, base + suffix, blocks.packed), register(graph, base + suffix + "_scales", blocks.scales)]
    offsets = None
    if blocks.offsets is not None:
        offsets = register(graph, base + suffix + "_offsets", np.ascontiguousarray(blocks.offsets.T))
    return values, offsets


def _quantize_embeddings(
    graph: ir.Graph,
    rewriter: Rewriter,
    done: dict[tuple[int, ...], tuple[list[ir.Value], ir.Value | None]],
    options: Int4Options,
    sizes: _Sizes,
) -> dict[str, dict[str, Any]]:
    """Token-embedding Gathers of a 2-D float32 table onto 8-bit blocks (the LM head's, when tied)."""
    record: dict[str, dict[str, Any]] = {}
    if options.embedding != "int8":
        return record
    block = options.block
    for node in list(graph):
        table = node.inputs[0] if node.op_type == "Gather" and node.domain == "" and node.inputs else None
        axis = node.attributes.get("axis")
        if table is None or table.const_value is None or (axis is not None and axis.value != 0):
            continue
        shape = tuple(table.const_value.shape)
        ids = node.inputs[1]
        if len(shape) != 2 or table.const_value.dtype != ir.DataType.FLOAT or shape[1] % block or ids.shape is None:
            continue
        if any(use.node.op_type == "Transpose" and any(o.uses() for o in use.node.outputs) for use in table.uses()):
            continue  # tied to an LM head that stays float: the one float table serves both
        key = (id(table), 8, block)  # the key of a tied int8 head's blocks
        shared = key in done
        if not shared:
            done[key] = _quantize(graph, table.name, table.const_value.numpy().T, 8, options, block)
            sizes.add(table, done[key])
        packed = done[key][0]
        scales = packed[1].const_value.numpy().reshape(shape[0], shape[1] // block, 1)
        scales3 = register(graph, f"{packed[1].name}_rows", scales)
        sizes.after += int(scales3.const_value.nbytes)
        rewriter.gather(node, packed[0], scales3, block, shape[1])
        record[node_name(node)] = {"rows": shape[0], "dim": shape[1], "bits": 8, "shared_with_head": shared}
    return record


def _remove_dead(graph: ir.Graph) -> None:
    """Transposes left without users (a tied head's), then initializers nothing reads."""
    for node in reversed(list(graph)):
        if node.op_type == "Transpose" and not any(o.uses() or o in graph.outputs for o in node.outputs):
            graph.remove(node, safe=True)
    for value in list(graph.initializers.values()):
        if not value.uses() and value not in graph.outputs:
            del graph.initializers[value.name]
