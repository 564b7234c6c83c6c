"""Q/DQ lint: does an INT8 graph follow its target's rules? Returns the violations, one per line.

``ort`` (ONNX Runtime CPU integer kernels):
- DynamicQuantizeMatMul / MatMulIntegerToFloat / MatMulInteger / QAttention weights are constant
  int8 with zero point absent or 0 (symmetric), and a positive, finite scale per tensor or per
  output column;
- their quantized activations are uint8 (s8 x s8 runs ~14x slower than u8 x s8 on x86), from a
  DynamicQuantizeLinear or a QuantizeLinear whose scale is a positive finite constant.

``trt`` (TensorRT explicit quantization; strongly typed networks):
- every QuantizeLinear / DequantizeLinear is int8 with zero point 0 and a constant, positive,
  finite scale; activation Q/DQ pairs are per tensor and the DequantizeLinear repeats the
  QuantizeLinear's scale;
- a weight DequantizeLinear reads a constant int8 tensor and is per output channel: axis 1 for
  a MatMul's [K, N] weight, axis 0 for a Gemm's transB [N, K], with one scale per channel;
- a MatMul/Gemm with a dequantized weight also has a dequantized activation (TensorRT has no
  weight-only INT8 MatMul), and no integer op of ONNX Runtime's contrib domain is left.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from llmc.model.values import const_array
from llmc.spec.target import QdqRules

_ORT_INT_OPS = {
    # op: (activation input, weight input, weight scale input, weight zero point input)
    "DynamicQuantizeMatMul": (None, 1, 2, 3),
    "MatMulIntegerToFloat": (0, 1, 3, 5),
    "MatMulInteger": (0, 1, None, 3),
    "QAttention": (0, 1, 4, 7),
}


def _input(node: ir.Node, i: int | None) -> ir.Value | None:
    return node.inputs[i] if i is not None and i < len(node.inputs) else None


def _scale_problem(value: ir.Value | None) -> str | None:
    scale = const_array(value)
    if scale is None:
        return "scale is not a constant"
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        return "scale is not positive and finite"
    return None


def lint(model: ir.Model, rules: QdqRules) -> list[str]:
    return _lint_ort(model) if rules.integer_ops else _lint_trt(model)


def _lint_ort(model: ir.Model) -> list[str]:
    problems = []
    for node in model.graph:
        if node.domain not in ("com.microsoft", "") or node.op_type not in _ORT_INT_OPS:
            continue
        a, w, ws, wz = _ORT_INT_OPS[node.op_type]
        where = f"{node.op_type} '{node.name}'"
        weight = const_array(_input(node, w))
        if weight is None or weight.dtype != np.int8:
            problems.append(f"{where}: weight is not a constant int8 tensor")
            continue
        zero = const_array(_input(node, wz))
        if _input(node, wz) is not None and (zero is None or np.any(zero != 0)):
            problems.append(f"{where}: weight zero point is not 0 (weights must be symmetric)")
        if ws is not None:
            problem = _scale_problem(_input(node, ws))
            scale = const_array(_input(node, ws))
            if problem:
                problems.append(f"{where}: weight {problem}")
            elif scale.size not in (1, weight.shape[-1]):
                problems.append(f"{where}: {scale.size} weight scales for {weight.shape[-1]} output columns")
        if a is not None:
            x = _input(node, a)
            if x is None or x.dtype != ir.DataType.UINT8:
                problems.append(f"{where}: activation is not uint8 (s8 x s8 is the slow path on x86)")
            elif x.producer() is not None and x.producer().op_type == "QuantizeLinear":
                problem = _scale_problem(x.producer().inputs[1])
                if problem:
                    problems.append(f"{where}: activation {problem}")
    return problems


def _lint_trt(model: ir.Model) -> list[str]:
    problems = []
    for node in model.graph:
        where = f"{node.op_type} '{node.name}'"
        if node.domain == "com.microsoft" and node.op_type in _ORT_INT_OPS:
            problems.append(f"{where}: ONNX Runtime integer op; TensorRT needs QuantizeLinear/DequantizeLinear")
            continue
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain not in ("", "ai.onnx"):
            if node.op_type in ("MatMul", "Gemm") and len(node.inputs) > 1:
                problems += _lint_trt_linear(node)
            continue
        problem = _scale_problem(_input(node, 1))
        if problem:
            problems.append(f"{where}: {problem}")
        zero = const_array(_input(node, 2))
        if zero is None or zero.dtype != np.int8:
            problems.append(f"{where}: zero point must be a constant int8 (TensorRT INT8 is int8, not uint8)")
        elif np.any(zero != 0):
            problems.append(f"{where}: zero point is not 0 (TensorRT needs symmetric quantization)")
        if node.op_type == "DequantizeLinear" and const_array(node.inputs[0]) is None:
            quant = node.inputs[0].producer()
            if quant is None or quant.op_type != "QuantizeLinear":
                problems.append(f"{where}: activation DequantizeLinear not fed by a QuantizeLinear")
            else:
                ours, theirs = const_array(_input(node, 1)), const_array(_input(quant, 1))
                if ours is None or theirs is None or ours.shape != () or not np.array_equal(ours, theirs):
                    problems.append(f"{where}: activation Q/DQ must share one per-tensor scale")
    return problems


def _lint_trt_linear(node: ir.Node) -> list[str]:
    where = f"{node.op_type} '{node.name}'"
    weight_dq = node.inputs[1].producer() if node.inputs[1] is not None else None
    if weight_dq is None or weight_dq.op_type != "DequantizeLinear":
        return []  # a float layer
    problems = []
    weight = const_array(weight_dq.inputs[0])
    if weight is None or weight.dtype != np.int8:
        return [f"{where}: dequantized weight is not a constant int8 tensor"]
    transposed = node.op_type == "Gemm" and bool(node.attributes.get("transB") and node.attributes["transB"].value)
    expected_axis = 0 if transposed else weight.ndim - 1
    axis_attr = weight_dq.attributes.get("axis")
    axis = axis_attr.value if axis_attr is not None else 1
    scale = const_array(_input(weight_dq, 1))
    if scale is not None and scale.size > 1:
        if axis % weight.ndim != expected_axis:
            problems.append(f"{where}: weight quantized on axis {axis}; TensorRT needs the output-channel axis {expected_axis}")
        elif scale.size != weight.shape[expected_axis]:
            problems.append(f"{where}: {scale.size} weight scales for {weight.shape[expected_axis]} channels")
    x_dq = node.inputs[0].producer() if node.inputs[0] is not None else None
    if x_dq is None or x_dq.op_type != "DequantizeLinear":
        problems.append(f"{where}: int8 weight but float activation (TensorRT has no weight-only INT8 MatMul)")
    return problems
