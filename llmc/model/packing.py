"""An encoder graph that runs several texts in one row: sequence packing.

A batch of short texts padded to its longest computes the padding; buckets of similar length
(:mod:`llmc.runtime.padding.execute`) compute less of it but run several small matrix products.
Packing puts the texts end to end in rows of a fixed width, so every position-wise node (the
embeddings, the projections, the feed-forward layers, the layer norms) runs one matrix product over
all the real tokens, and each text attends only to itself through a block-diagonal attention bias.

:func:`pack_graph` rewrites an encoder whose attention is fused into ``com.microsoft.Attention``
(what the build's fusions give BERT-like encoders). It ``requires``:

- every ``Attention`` takes its mask (``mask_index`` or the additive ``attention_bias``) from the
  ``attention_mask`` input alone, and no past state;
- every embedding ``Gather`` (a constant table) is indexed by a sequence input (``input_ids``,
  ``token_type_ids``) or by indices computed from shapes alone (absolute positions, token type 0),
  the same for every row; position ids computed from the mask's values (RoBERTa) are refused.

It ``ensures``: the graph takes, besides its own inputs, ``packed_<name>`` ``[rows, width]`` for
each sequence input but the mask, ``packed_segments`` (1, 2, ... for the texts of a row, 0 for
its padding), ``packed_positions`` (each token's position in its own text) and ``unpack_index``
(``[batch, sequence]``: where each original position sits in the flattened packed rows). The
position-wise part runs packed; the first node that is not position-wise (pooling, a head's
``[CLS]`` gather, anything reading the mask) gets the states unpacked to ``[batch, sequence,
hidden]``, so the model's own tail computes its outputs, which keep their names and shapes.
Whether the packed graph gives the same answers is measured, not assumed
(:mod:`llmc.runtime.padding.probe`).

Why our own: ONNX Runtime's CPU execution provider has no packed (variable-length) attention;
``PackedAttention`` and ``PackedMultiHeadAttention`` are CUDA kernels.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

MS = "com.microsoft"
SEGMENTS, POSITIONS, UNPACK = "packed_segments", "packed_positions", "unpack_index"
# Nodes that compute each position from that position alone (given constant weights).
POSITIONWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Tanh", "Relu", "Sigmoid", "Cast", "Identity",
    "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "LayerNormalization", "SkipLayerNormalization",
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "MatMul", "MatMulNBits",
    "DynamicQuantizeLinear", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
})
MASK_SLOTS = (3, 5)  # Attention's mask_index and attention_bias


def packed_name(name: str) -> str:
    return f"packed_{name}"


def pack_graph(model: ir.Model, mask: str, sequence: tuple[str, ...]) -> str | None:
    """Rewrite ``model`` in place into its packed form; a reason (and ``model`` unusable) where it
    cannot be, None when done. ``sequence``: the ``[batch, sequence]`` inputs, ``mask`` among them."""
    graph = model.graph
    inputs = {v.name: v for v in graph.inputs}
    if mask not in inputs:
        return f"no '{mask}' input"
    depends = _dependence(graph, inputs[mask], [inputs[n] for n in sequence if n != mask])
    attention = [n for n in graph if n.op_type == "Attention" and n.domain == MS]
    if not attention:
        return "no fused Attention node (packing needs com.microsoft.Attention)"
    for node in attention:
        why = _check_attention(node, depends)
        if why:
            return why
    packer = _Packer(graph, inputs[mask])
    for name in sequence:
        if name == mask:
            continue
        why = packer.pack_input(inputs[name])
        if why:
            return why
    for node in list(graph):
        if node.op_type == "Gather" and node.inputs[0] is not None and node.inputs[0].const_value is not None:
            index = node.inputs[1]
            if index is None or index in packer.packed:
                continue
            if "mask" in depends.get(index, set()):
                return f"the indices of Gather node '{node.name}' are computed from the mask's values (positions counted as RoBERTa does)"
            if depends.get(index) == {"shape"}:
                packer.remap_positions(node)
    for node in attention:
        packer.mask_attention(node)
    packer.propagate()
    unpacked = [n.name for n in attention if n.inputs[0] not in packer.packed]
    if unpacked:
        return f"Attention node '{unpacked[0]}' does not read the packed tokens alone"
    RemoveUnusedNodesPass()(model)  # the mask's own bias and the position slices
    for value in list(graph.inputs):  # input_ids now read packed only
        if not value.uses() and not value.is_graph_output():
            graph.inputs.remove(value)
    return None


def _dependence(graph: ir.Graph, mask: ir.Value, values: list[ir.Value]) -> dict[ir.Value, set[str]]:
    """Per value: does it depend on the mask's values, the sequence inputs' values, or only on
    shapes (through ``Shape``/``Size``)? Constants depend on nothing."""
    depends: dict[ir.Value, set[str]] = {mask: {"mask"}}
    depends.update({v: {"seq"} for v in values})
    for node in graph:
        found: set[str] = set()
        for value in node.inputs:
            if value is not None:
                found |= depends.get(value, set())
        if node.op_type in ("Shape", "Size") and found:
            found = {"shape"}
        for out in node.outputs:
            depends[out] = set(found)
    return depends


def _check_attention(node: ir.Node, depends: dict[ir.Value, set[str]]) -> str | None:
    inputs = list(node.inputs) + [None] * (7 - len(node.inputs))
    if inputs[4] is not None or inputs[6] is not None:
        return f"Attention node '{node.name}' takes a past state"
    if inputs[1] is None or inputs[1].const_value is None:
        return f"Attention node '{node.name}' has computed weights"
    if inputs[2] is not None and inputs[2].const_value is None:
        return f"Attention node '{node.name}' has a computed bias"
    for slot in MASK_SLOTS:
        value = inputs[slot]
        if value is not None and (depends.get(value, set()) - {"shape"}) != {"mask"}:
            return f"Attention node '{node.name}' input {slot} is not computed from the mask alone"
    for flag, what in (("unidirectional", "is causal"), ("do_rotary", "rotates by sequence position")):
        if node.attributes.get(flag) is not None and node.attributes[flag].as_int():
            return f"Attention node '{node.name}' {what}"
    return None


class _Packer:
    """The rewrite's state: the new inputs, which values are in the packed layout, their unpacked copies."""

    def __init__(self, graph: ir.Graph, mask: ir.Value) -> None:
        self.graph = graph
        self.count = 0
        self.segments = self._input(SEGMENTS, ir.DataType.INT64, ["packed_rows", "packed_width"])
        self.positions = self._input(POSITIONS, ir.DataType.INT64, ["packed_rows", "packed_width"])
        self.unpack = self._input(UNPACK, ir.DataType.INT64, list(mask.shape) if mask.shape else ["batch", "sequence"])
        self.packed: set[ir.Value] = set()
        self.unpacked: dict[ir.Value, ir.Value] = {}
        self.bias: dict[ir.DataType, ir.Value] = {}

    def _input(self, name: str, dtype: ir.DataType, dims: list) -> ir.Value:
        value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(dims))
        self.graph.inputs.append(value)
        return value

    def _name(self, what: str) -> str:
        self.count += 1
        return f"llmc_pack_{what}_{self.count}"

    def _node(self, op: str, inputs: list, before: ir.Node | None, **attributes) -> ir.Value:
        node = ir.node(op, inputs, attributes=attributes or None, name=self._name(op))
        node.outputs[0].name = self._name(f"{op}_out")
        if before is None:
            self.graph.append(node)
        else:
            self.graph.insert_before(before, node)
        return node.outputs[0]

    def _const(self, array: np.ndarray, before: ir.Node | None) -> ir.Value:
        return self._node("Constant", [], before, value=ir.tensor(array))

    def pack_input(self, value: ir.Value) -> str | None:
        """Embedding lookups of ``value`` read ``packed_<name>`` instead (its shape is still read
        from ``value``)."""
        packed = self._input(packed_name(value.name), value.dtype or ir.DataType.INT64, ["packed_rows", "packed_width"])
        self.packed.add(packed)
        for node, index in list(value.uses()):
            if node.op_type in ("Shape", "Size"):
                continue  # the request's own shape: the input stays, unpacked
            if node.op_type != "Gather" or index != 1 or node.inputs[0].const_value is None:
                return f"input '{value.name}' is read by {node.op_type} node '{node.name}', not an embedding lookup"
            node.replace_input_with(index, packed)
        return None

    def remap_positions(self, gather: ir.Node) -> None:
        """Indices computed from shapes alone (positions 0..n-1, token type 0): each packed token
        takes the index of its own position, ``index[0][packed_positions]``."""
        index = gather.inputs[1]  # [seq], [1, seq] or [batch, seq]: its first row, [seq]
        last = self._node("Shape", [index], gather, start=-1)
        rows = self._node("Concat", [self._const(np.array([-1], dtype=np.int64), gather), last], gather, axis=0)
        table = self._node("Reshape", [index, rows], gather)
        row = self._node("Gather", [table, self._const(np.array(0, dtype=np.int64), gather)], gather, axis=0)
        packed = self._node("Gather", [row, self.positions], gather, axis=0)
        self.packed.add(packed)  # [packed_rows, packed_width]
        gather.replace_input_with(1, packed)

    def mask_attention(self, node: ir.Node) -> None:
        """Each packed token attends to its own text: ``attention_bias`` from the segments."""
        dtype = ir.DataType.FLOAT
        if len(node.inputs) > 5 and node.inputs[5] is not None and node.inputs[5].dtype is not None:
            dtype = node.inputs[5].dtype
        if dtype not in self.bias:
            self.bias[dtype] = self._block_bias(dtype)
        if len(node.inputs) < 6:
            node.resize_inputs(6)
        node.replace_input_with(3, None)
        node.replace_input_with(5, self.bias[dtype])

    def _block_bias(self, dtype: ir.DataType) -> ir.Value:
        first = next(iter(self.graph))
        keys = self._node("Unsqueeze", [self.segments, self._const(np.array([1, 2], dtype=np.int64), first)], first)
        queries = self._node("Unsqueeze", [self.segments, self._const(np.array([1, 3], dtype=np.int64), first)], first)
        same = self._node("Equal", [queries, keys], first)
        real = self._node("Greater", [keys, self._const(np.array(0, dtype=np.int64), first)], first)
        allowed = self._node("And", [same, real], first)
        numpy_type = dtype.numpy()
        zero = self._const(np.array(0, dtype=numpy_type), first)
        lowest = self._const(np.array(np.finfo(numpy_type).min, dtype=numpy_type), first)
        return self._node("Where", [allowed, zero, lowest], first)  # [rows, 1, width, width]

    def propagate(self) -> None:
        """Mark what runs packed, in graph order; unpack before the first node that is not
        position-wise and before the graph's outputs."""
        for node in list(self.graph):
            if not any(v in self.packed for v in node.inputs if v is not None):
                continue
            if self._positionwise(node):
                # DynamicQuantizeLinear's scale and zero point are scalars: only its values are per position
                per_position = node.outputs[:1] if node.op_type == "DynamicQuantizeLinear" else node.outputs
                self.packed.update(per_position)
                for out in per_position:
                    out.shape = None  # [packed_rows, packed_width, ...] now
                continue
            for index, value in enumerate(node.inputs):
                if value in self.packed:
                    node.replace_input_with(index, self._unpacked(value, node))
        for index, value in enumerate(list(self.graph.outputs)):
            if value in self.packed:
                name, shape, value_type = value.name, value.shape, value.type
                value.name = self._name("packed_output")
                restored = self._unpacked(value, None)
                restored.name, restored.shape, restored.type = name, shape, value_type
                self.graph.outputs[index] = restored

    def _positionwise(self, node: ir.Node) -> bool:
        if node.op_type == "Attention" and node.domain == MS:
            return True
        if node.op_type == "Gather":  # an embedding lookup of packed indices
            table, index = node.inputs[0], node.inputs[1]
            axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
            return axis == 0 and table is not None and table.const_value is not None and index in self.packed
        if node.op_type not in POSITIONWISE:
            return False
        for value in node.inputs:
            if value is None or value in self.packed or value.const_value is not None:
                continue
            producer = value.producer()
            if producer is not None and producer.op_type == "Constant":
                continue
            return False  # a computed value in the request's own layout (the mask, a shape)
        if node.op_type == "MatMul":
            weight = node.inputs[1]
            return weight is not None and weight.const_value is not None and len(weight.const_value.shape) == 2
        return True

    def _unpacked(self, value: ir.Value, before: ir.Node | None) -> ir.Value:
        """``value`` ``[rows, width, hidden]`` back in the request's ``[batch, sequence, hidden]``."""
        if value not in self.unpacked:  # before its first consumer (graph order), or at the end
            flat = self._node("Flatten", [value], before, axis=2)
            self.unpacked[value] = self._node("Gather", [flat, self.unpack], before, axis=0)
        return self.unpacked[value]
