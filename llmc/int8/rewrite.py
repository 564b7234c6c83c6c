"""Rewrite calibrated linear layers into the build target's INT8 form.

Integer ops (``QdqRules.integer_ops``, ONNX Runtime CPU): integer kernels directly, no Q/DQ left
for the runtime to fuse.

- dynamic activations: ``DynamicQuantizeMatMul(x, W_s8, w_scale[N], -, bias)``, the fused kernel
  that ORT_ENABLE_ALL makes out of quantize_dynamic's output;
- static activations: ``QuantizeLinear(x, s, zp_u8)`` then ``MatMulIntegerToFloat``;
- a fused Attention becomes ``QAttention`` (int8 projection and attention in one kernel) when its
  attention bias is proven to be a padding mask (``padding_mask.py``): QAttention takes a raw
  mask, not a bias. Otherwise it becomes its projection in one of the forms above, a Split and a
  ``MultiHeadAttention`` keeping the bias.

Activations are uint8 asymmetric and weights int8 symmetric per output channel (u8 x s8 is the
fast VNNI path). Explicit Q/DQ (TensorRT): a QuantizeLinear/DequantizeLinear pair (int8, zero point 0, per tensor)
on the activation and a DequantizeLinear (int8, zero point 0, per output channel) on the weight of
each MatMul/Gemm, as TensorRT's explicit quantization expects. SmoothQuant divides the
activation by ``s`` (an inserted Mul) and multiplies the weight's rows by it before quantizing.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from llmc.int8.linear import LinearNode
from llmc.int8.numerics import int8_params, uint8_params, weight_per_channel
from llmc.int8.padding_mask import PaddingMask, prove_padding_mask

MS_DOMAIN = "com.microsoft"


@dataclasses.dataclass
class NodeConfig:
    """How one linear node is quantized."""

    mode: str = "dynamic"  # "dynamic" | "static"
    alpha: float | None = None  # SmoothQuant migration strength (None: no smoothing)
    smooth: np.ndarray | None = None  # s[K]: x / s, W * s (rows)
    lo: float = 0.0  # static range of the (smoothed) activation
    hi: float = 0.0


class _Names:
    def __init__(self, model: ir.Model) -> None:
        self._taken = {v.name for v in model.graph.initializers.values()}
        for node in model.graph:
            self._taken.update(o.name for o in node.outputs if o.name)
        self._taken.update(v.name for v in model.graph.inputs)

    def __call__(self, base: str) -> str:
        base = base or "q"
        for i in itertools.count():
            name = base if i == 0 else f"{base}_{i}"
            if name not in self._taken:
                self._taken.add(name)
                return name
        raise AssertionError


def _initializer(model: ir.Model, names: _Names, base: str, array: np.ndarray) -> ir.Value:
    name = names(base)
    value = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     shape=ir.Shape(array.shape), const_value=ir.tensor(array, name=name))
    model.graph.register_initializer(value)
    return value


def _smoothed(model, names, t: LinearNode, config: NodeConfig, nodes: list[ir.Node]) -> tuple[ir.Value, np.ndarray]:
    """The activation to quantize (divided by s when smoothing) and the matching [K, N] weight."""
    x = t.node.inputs[0]  # current: an earlier rewrite may have replaced the producer
    assert x is not None
    if config.smooth is None:
        return x, t.weight
    inverse = _initializer(model, names, f"{t.name}_smooth_inv", (1.0 / config.smooth).astype(np.float32))
    mul = ir.node("Mul", [x, inverse], name=names(f"{t.name}_smooth"))
    mul.outputs[0].name = names(f"{t.name}_smoothed")
    mul.outputs[0].dtype = ir.DataType.FLOAT
    nodes.append(mul)
    return mul.outputs[0], t.weight * config.smooth[:, None]


def _replace(model: ir.Model, t: LinearNode, nodes: list[ir.Node], result: ir.Value) -> None:
    graph = model.graph
    anchor = t.bias_node or t.node
    graph.insert_before(t.node, nodes)
    result.shape, result.dtype = t.output.shape, t.output.dtype
    ir.convenience.replace_all_uses_with(t.output, result)
    old = t.output.name
    t.output.name = f"{old}__float"
    result.name = old
    for node in (anchor, t.node) if t.bias_node is not None else (t.node,):
        graph.remove(node, safe=True)
    _drop_unused_initializers(model, t)


def _drop_unused_initializers(model: ir.Model, t: LinearNode) -> None:
    for value in list(t.node.inputs) + (list(t.bias_node.inputs) if t.bias_node else []):
        if value is not None and value.is_initializer() and not value.uses() and not value.is_graph_output():
            model.graph.initializers.pop(value.name, None)


def quantize_ort(model: ir.Model, linear: list[LinearNode], configs: dict[int, NodeConfig]) -> None:
    """Rewrite ``linear[i]`` for every ``i`` in ``configs`` into ONNX Runtime integer ops."""
    names = _Names(model)
    model.opset_imports.setdefault(MS_DOMAIN, 1)
    masks = _MaskIndex(model, names)
    for i, config in sorted(configs.items()):
        t = linear[i]
        nodes: list[ir.Node] = []
        x, weight = _smoothed(model, names, t, config, nodes)
        q, w_scale = weight_per_channel(weight, axis=1)
        wq = _initializer(model, names, f"{t.name}_weight_s8", q)
        ws = _initializer(model, names, f"{t.name}_weight_scale", w_scale)
        bias = _initializer(model, names, f"{t.name}_bias", t.bias.astype(np.float32)) if t.bias is not None else None
        mask_index = masks.for_attention(t) if t.kind == "attention" else None
        if mask_index is not None:
            result = _qattention(model, names, t, config, x, wq, ws, bias, mask_index, nodes)
            _replace(model, t, nodes, result)
            continue
        if config.mode == "dynamic":
            mm = ir.node("DynamicQuantizeMatMul", [x, wq, ws, None, bias], domain=MS_DOMAIN, name=names(f"{t.name}_int8"))
        else:
            xq, xs, xz = _quantize_static(model, names, t, config, x, nodes)
            mm = ir.node(
                "MatMulIntegerToFloat", [xq, wq, xs, ws, xz, None, bias], domain=MS_DOMAIN,
                name=names(f"{t.name}_int8"),
            )
        mm.outputs[0].name = names(f"{t.name}_int8_out")
        mm.outputs[0].dtype = ir.DataType.FLOAT
        nodes.append(mm)
        result = mm.outputs[0]
        if t.kind == "attention":
            result = _attention_tail(model, names, t, result, nodes)
        _replace(model, t, nodes, result)
    common_passes.RemoveUnusedNodesPass()(model)  # e.g. the attention-bias ops QAttention replaced


def _quantize_static(model, names, t: LinearNode, config: NodeConfig, x: ir.Value, nodes: list[ir.Node]):
    """QuantizeLinear to the calibrated uint8 grid: (x_u8, scale, zero point)."""
    scale, zero_point = uint8_params(config.lo, config.hi)
    xs = _initializer(model, names, f"{t.name}_input_scale", np.array(scale, np.float32))
    xz = _initializer(model, names, f"{t.name}_input_zero_point", np.array(zero_point, np.uint8))
    quant = ir.node("QuantizeLinear", [x, xs, xz], name=names(f"{t.name}_quantize"))
    quant.outputs[0].name = names(f"{t.name}_input_u8")
    quant.outputs[0].dtype = ir.DataType.UINT8
    nodes.append(quant)
    return quant.outputs[0], xs, xz


class _MaskIndex:
    """int32 ``mask_index`` for QAttention, one Cast per proven padding mask (see padding_mask)."""

    def __init__(self, model: ir.Model, names: _Names) -> None:
        self._model, self._names = model, names
        self._proofs: dict[str, PaddingMask | None] = {}
        self._casts: dict[str, tuple[ir.Value, float]] = {}

    def for_attention(self, t: LinearNode) -> tuple[ir.Value, float] | None:
        # find_linear already refused mask_index, past and unequal qkv_hidden_sizes.
        bias = t.node.inputs[5] if len(t.node.inputs) > 5 else None
        if bias is None:
            return None
        if bias.name not in self._proofs:
            self._proofs[bias.name] = prove_padding_mask(self._model, bias)
        proof = self._proofs[bias.name]
        if proof is None:
            return None
        if proof.mask.name not in self._casts:
            cast = ir.node("Cast", [proof.mask], {"to": ir.DataType.INT32}, name=self._names(f"{proof.mask.name}_int32"))
            cast.outputs[0].name = self._names(f"{proof.mask.name}_int32")
            cast.outputs[0].dtype = ir.DataType.INT32
            cast.outputs[0].shape = proof.mask.shape
            first = next(iter(self._model.graph))
            self._model.graph.insert_before(first, [cast])
            self._casts[proof.mask.name] = (cast.outputs[0], proof.filter_value)
        return self._casts[proof.mask.name]


def _qattention(model, names, t: LinearNode, config: NodeConfig, x, wq, ws, bias, mask_index, nodes) -> ir.Value:
    """QAttention: int8 QKV projection and attention in one kernel, the padding mask as mask_index."""
    mask, filter_value = mask_index
    if config.mode == "dynamic":
        dq = ir.node("DynamicQuantizeLinear", [x], num_outputs=3, name=names(f"{t.name}_quantize"))
        for o, part, dtype in zip(dq.outputs, ("u8", "scale", "zero_point"), (ir.DataType.UINT8, ir.DataType.FLOAT, ir.DataType.UINT8), strict=True):
            o.name = names(f"{t.name}_input_{part}")
            o.dtype = dtype
        nodes.append(dq)
        xq, xs, xz = dq.outputs
    else:
        xq, xs, xz = _quantize_static(model, names, t, config, x, nodes)
    wz = _initializer(model, names, f"{t.name}_weight_zero_point", np.zeros(t.weight.shape[1], np.int8))
    attributes = {"num_heads": t.node.attributes["num_heads"].value, "mask_filter_value": filter_value}
    if "scale" in t.node.attributes:
        attributes["scale"] = t.node.attributes["scale"].value
    node = ir.node(
        "QAttention", [xq, wq, bias, xs, ws, mask, xz, wz], attributes, domain=MS_DOMAIN,
        name=names(f"{t.name}_int8"),
    )
    node.outputs[0].name = names(f"{t.name}_int8_out")
    node.outputs[0].dtype = ir.DataType.FLOAT
    nodes.append(node)
    return node.outputs[0]


def _attention_tail(model, names, t: LinearNode, qkv: ir.Value, nodes: list[ir.Node]) -> ir.Value:
    """Split the quantized QKV projection and attend with MultiHeadAttention (same attributes)."""
    hidden = t.weight.shape[1] // 3
    sizes = _initializer(model, names, f"{t.name}_qkv_sizes", np.array([hidden] * 3, np.int64))
    split = ir.node("Split", [qkv, sizes], {"axis": -1}, num_outputs=3, name=names(f"{t.name}_split"))
    for o, part in zip(split.outputs, "qkv", strict=True):
        o.name = names(f"{t.name}_{part}")
        o.dtype = ir.DataType.FLOAT
    nodes.append(split)
    inputs = list(t.node.inputs) + [None] * (6 - len(t.node.inputs))
    attributes = {"num_heads": t.node.attributes["num_heads"].value}
    for name in ("scale", "mask_filter_value"):
        if name in t.node.attributes:
            attributes[name] = t.node.attributes[name].value
    mha = ir.node(
        "MultiHeadAttention", [*split.outputs, None, None, inputs[5]], attributes, domain=MS_DOMAIN,
        name=names(f"{t.name}_mha"),
    )
    mha.outputs[0].name = names(f"{t.name}_mha_out")
    nodes.append(mha)
    return mha.outputs[0]


def quantize_trt(model: ir.Model, linear: list[LinearNode], configs: dict[int, NodeConfig]) -> None:
    """Insert TensorRT-style symmetric Q/DQ on the activation and weight of each configured target."""
    names = _Names(model)
    shared: dict[tuple[str, float], ir.Value] = {}
    for i, config in sorted(configs.items()):
        t = linear[i]
        nodes: list[ir.Node] = []
        x, weight = _smoothed(model, names, t, config, nodes)
        scale = int8_params(max(-config.lo, config.hi))
        key = (x.name, float(scale))
        if key in shared and config.smooth is None:
            dequantized = shared[key]
        else:
            xs = _initializer(model, names, f"{t.name}_input_scale", np.array(scale, np.float32))
            xz = _initializer(model, names, f"{t.name}_input_zero_point", np.array(0, np.int8))
            quant = ir.node("QuantizeLinear", [x, xs, xz], name=names(f"{t.name}_input_quantize"))
            quant.outputs[0].name = names(f"{t.name}_input_s8")
            quant.outputs[0].dtype = ir.DataType.INT8
            dequant = ir.node("DequantizeLinear", [quant.outputs[0], xs, xz], name=names(f"{t.name}_input_dequantize"))
            dequant.outputs[0].name = names(f"{t.name}_input_qdq")
            dequant.outputs[0].dtype = ir.DataType.FLOAT
            dequant.outputs[0].shape = x.shape
            nodes += [quant, dequant]
            dequantized = dequant.outputs[0]
            shared[key] = dequantized
        transposed = t.kind == "gemm" and bool(t.node.attributes.get("transB") and t.node.attributes["transB"].value)
        stored = weight.T if transposed else weight
        axis = 0 if transposed else 1
        q, w_scale = weight_per_channel(np.ascontiguousarray(stored), axis=axis)
        wq = _initializer(model, names, f"{t.name}_weight_s8", q)
        ws = _initializer(model, names, f"{t.name}_weight_scale", w_scale)
        wz = _initializer(model, names, f"{t.name}_weight_zero_point", np.zeros(w_scale.shape, np.int8))
        wdq = ir.node("DequantizeLinear", [wq, ws, wz], {"axis": axis}, name=names(f"{t.name}_weight_dequantize"))
        wdq.outputs[0].name = names(f"{t.name}_weight_qdq")
        wdq.outputs[0].dtype = ir.DataType.FLOAT
        nodes.append(wdq)
        model.graph.insert_before(t.node, nodes)
        old_weight = t.node.inputs[1]
        t.node.replace_input_with(0, dequantized)
        t.node.replace_input_with(1, wdq.outputs[0])
        if old_weight is not None and old_weight.is_initializer() and not old_weight.uses():
            model.graph.initializers.pop(old_weight.name, None)
