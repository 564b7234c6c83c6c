"""The nodes INT8 quantization can take: linear layers with a constant weight.

A :class:`LinearNode` is a MatMul (2-D constant B, an optional constant 1-D bias Add after it),
a Gemm (constant B, alpha = beta = 1, no transA) or, where the Q/DQ rules write integer ops (ONNX
Runtime), a fused ``com.microsoft`` Attention (its packed QKV projection; self-attention without past or mask_index). Its weight is
given as [K, N] whatever the node's layout, so calibration and the rewrites see one form.
Linear nodes are found by what the graph computes, never by names.
"""

from __future__ import annotations

import dataclasses
import fnmatch

import numpy as np
import onnx_ir as ir

from llmc.errors import LlmcError
from llmc.model.values import const_array
from llmc.passes.logits import reads_kept_positions
from llmc.spec.target import QdqRules

MIN_WEIGHT_ELEMENTS = 256  # below this the integer kernel's overhead outweighs its gain


@dataclasses.dataclass
class LinearNode:
    node: ir.Node
    kind: str  # "matmul" | "gemm" | "attention"
    activation: ir.Value
    weight: np.ndarray  # [K, N] float32
    bias: np.ndarray | None  # [N]
    bias_node: ir.Node | None  # the Add absorbed into the quantized op
    output: ir.Value  # the value the quantized op produces (after the bias)
    float_reason: str | None = None  # why it stays in float (None: quantize it)

    @property
    def name(self) -> str:
        return self.node.name or self.output.name or ""


def _float32(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def _attr(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _bias_add(output: ir.Value, n: int) -> tuple[ir.Node, np.ndarray] | None:
    """The single consumer Add(output, const[N]) of a MatMul output, with that constant."""
    uses = list(output.uses())
    if len(uses) != 1 or output.is_graph_output():
        return None
    add = uses[0].node
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    other = add.inputs[1 - uses[0].idx]
    bias = const_array(other)
    if bias is None or bias.dtype != np.float32 or bias.shape != (n,):
        return None
    return add, bias


def _matmul(node: ir.Node) -> LinearNode | None:
    weight = const_array(node.inputs[1])
    x = node.inputs[0]
    if weight is None or weight.ndim != 2 or weight.dtype != np.float32 or not _float32(x):
        return None
    out = node.outputs[0]
    found = _bias_add(out, weight.shape[1])
    if found is None:
        return LinearNode(node, "matmul", x, weight, None, None, out)
    add, bias = found
    return LinearNode(node, "matmul", x, weight, bias, add, add.outputs[0])


def _gemm(node: ir.Node) -> LinearNode | None:
    x = node.inputs[0]
    weight = const_array(node.inputs[1])
    if weight is None or weight.ndim != 2 or not _float32(x) or weight.dtype != np.float32:
        return None
    if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
        return None
    if _attr(node, "transB", 0):
        weight = weight.T
    bias = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        if bias is None or bias.shape != (weight.shape[1],):
            return None
    return LinearNode(node, "gemm", x, np.ascontiguousarray(weight), bias, None, node.outputs[0])


def _attention(node: ir.Node) -> LinearNode | None:
    inputs = list(node.inputs) + [None] * (7 - len(node.inputs))
    x, weight, bias = inputs[0], const_array(inputs[1]), const_array(inputs[2])
    if weight is None or bias is None or not _float32(x) or weight.ndim != 2:
        return None
    if any(v is not None for v in (inputs[3], inputs[4], inputs[6])):
        return None  # mask_index / past / past_sequence_length: no MultiHeadAttention equivalent here
    if _attr(node, "unidirectional", 0) or _attr(node, "do_rotary", 0) or _attr(node, "past_present_share_buffer", 0):
        return None
    sizes = _attr(node, "qkv_hidden_sizes", None)
    if sizes is not None and len(set(sizes)) != 1:
        return None
    if len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:]):
        return None
    return LinearNode(node, "attention", x, weight, bias, None, node.outputs[0])


def find_linear(model: ir.Model, rules: QdqRules) -> list[LinearNode]:
    """Every quantizable linear layer in graph order; rule-based float ones carry a reason."""
    found: list[LinearNode] = []
    for node in model.graph:
        t = None
        if node.domain in ("", "ai.onnx") and node.op_type == "MatMul":
            t = _matmul(node)
        elif node.domain in ("", "ai.onnx") and node.op_type == "Gemm":
            t = _gemm(node)
        elif rules.integer_ops and node.domain == "com.microsoft" and node.op_type == "Attention":
            t = _attention(node)
        if t is None:
            continue
        if t.output.is_graph_output() or reads_kept_positions(t.activation):
            t.float_reason = "output head (kept in float by default)"
        elif t.weight.size < MIN_WEIGHT_ELEMENTS:
            t.float_reason = f"weight of {t.weight.size} elements: too small to gain from int8"
        found.append(t)
    return found


def apply_exclusions(linear: list[LinearNode], nodes: list[str], op_types: list[str]) -> None:
    """Mark linear named by ``--exclude-nodes`` (names or globs) / ``--exclude-op-types`` float."""
    for pattern in nodes:
        matched = [t for t in linear if fnmatch.fnmatchcase(t.name, pattern) or t.output.name == pattern]
        if not matched:
            names = ", ".join(t.name for t in linear[:8]) + (", ..." if len(linear) > 8 else "")
            raise LlmcError(
                f"--exclude-nodes '{pattern}' matches no quantizable node; quantizable nodes are "
                f"{names or 'none'} (names or shell globs)"
            )
        for t in matched:
            t.float_reason = f"excluded by --exclude-nodes {pattern}"
    for op_type in op_types:
        matched = [t for t in linear if t.node.op_type == op_type]
        if not matched:
            present = sorted({t.node.op_type for t in linear})
            raise LlmcError(
                f"--exclude-op-types '{op_type}' matches no quantizable node; quantizable op types "
                f"here: {', '.join(present) or 'none'}"
            )
        for t in matched:
            t.float_reason = f"excluded by --exclude-op-types {op_type}"
