"""Graph rewrites of weight-only quantization, in onnx-ir: a MatMul becomes ``MatMulNBits`` (plus,
for blocks with float offsets, ``blocksum(x) @ C``), a token-embedding Gather becomes
``GatherBlockQuantized`` reading the head's own 8-bit blocks.

The offset term: ``x @ W`` with ``W[k, n] = s[n, b] (q[n, k] - 8) + c[n, b]`` (``b = k // block``)
is ``MatMulNBits(x) + (x @ S) @ C`` where ``S`` is the (K, K / block) 0/1 matrix summing each block
of ``x`` and ``C = c.T``. ``x @ S`` is computed once per activation and block size and shared by
every MatMul reading that activation (q/k/v, gate/up).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

MS_DOMAIN = "com.microsoft"


def register(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """A new initializer named after ``base`` (made unique)."""
    name, index = base, 1
    while name in graph.initializers:
        name, index = f"{base}_{index}", index + 1
    tensor = ir.tensor(np.ascontiguousarray(array), name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def block_sum_matrix(k: int, block: int) -> np.ndarray:
    """``S`` (K, K / block): 0/1, ``x @ S`` sums each block of ``x``."""
    return np.kron(np.eye(k // block, dtype=np.float32), np.ones((block, 1), np.float32))


class Rewriter:
    """Replaces nodes of one graph; remembers shared pieces (block sums per activation)."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self._block_sums: dict[tuple[int, int, int], ir.Value] = {}
        self._sum_matrices: dict[tuple[int, int], ir.Value] = {}  # one 0/1 matrix per (K, block)

    def matmul(
        self, nodes: list[ir.Node], weights: list[ir.Value], offsets: ir.Value | None, bits: int, block: int,
        k: int, widths: list[int], accuracy_level: int,
    ) -> ir.Value | None:
        """Replace ``nodes`` (MatMuls of one activation; several: packed, their weights' columns
        side by side, ``widths`` each) by one MatMulNBits on ``weights`` (B, scales[, zero_points])
        plus, with ``offsets`` (C, [K / block, N]), the offset term, then a Split back. Returns
        the value now standing for a single node's output (None when packed)."""
        first = nodes[0]
        attributes = [
            ir.AttrInt64("K", k), ir.AttrInt64("N", sum(widths)), ir.AttrInt64("bits", bits),
            ir.AttrInt64("block_size", block),
        ]
        if accuracy_level:  # unset means 0 (float32 compute); ORT's quantizer writes it only when set too
            attributes.append(ir.AttrInt64("accuracy_level", accuracy_level))
        x = first.inputs[0]
        name = first.name if len(nodes) == 1 else "+".join(n.name or n.outputs[0].name for n in nodes)
        new = ir.Node(MS_DOMAIN, "MatMulNBits", [x, *weights], attributes, name=name, num_outputs=1)
        self.graph.insert_before(first, new)
        result = new.outputs[0]
        if offsets is not None:
            sums = self._block_sum(first, x, k, block)
            correction = self._node(first, "MatMul", [sums, offsets], "offset")
            result = self._node(first, "Add", [result, correction], "plus_offset")
        if len(nodes) == 1:
            self._take_over(first, result)
            return result
        sizes = register(self.graph, f"{name}_split", np.array(widths, np.int64))
        split = ir.Node("", "Split", [result, sizes], [ir.AttrInt64("axis", -1)], name=f"{name}/split", num_outputs=len(nodes))
        self.graph.insert_before(first, split)
        for node, part in zip(nodes, split.outputs, strict=True):
            self._take_over(node, part)
        return None

    def rescore(self, logits: ir.Value, x: ir.Value, rows: ir.Value, k: int) -> None:
        """``logits`` (a quantized head's output, [..., V]) with its ``k`` largest entries replaced
        by the exact float products of ``x`` and those tokens' ``rows`` ([V, K] float): TopK, a
        Gather of k rows, a Mul and ReduceSum, ScatterElements. The greedy token is exact whenever
        it is among the quantized head's top ``k``; the rest keep the quantized values."""
        users = [(use.node, use.idx) for use in logits.uses()]
        outputs = [i for i, out in enumerate(self.graph.outputs) if out is logits]
        name = logits.name
        anchor = logits.producer()
        count = register(self.graph, f"{rows.name}_k", np.array([k], np.int64))
        top = ir.Node("", "TopK", [logits, count], [ir.AttrInt64("axis", -1)], name=f"{name}/topk", num_outputs=2)
        self.graph.insert_after(anchor, top)
        indices = top.outputs[1]
        gathered = ir.Node("", "Gather", [rows, indices], [ir.AttrInt64("axis", 0)], name=f"{name}/rows", num_outputs=1)
        axis = register(self.graph, f"{rows.name}_axis", np.array([-2], np.int64))
        last = register(self.graph, f"{rows.name}_last", np.array([-1], np.int64))
        expanded = ir.Node("", "Unsqueeze", [x, axis], name=f"{name}/x", num_outputs=1)
        product = ir.Node("", "Mul", [gathered.outputs[0], expanded.outputs[0]], name=f"{name}/mul", num_outputs=1)
        exact = ir.Node("", "ReduceSum", [product.outputs[0], last], [ir.AttrInt64("keepdims", 0)],
                        name=f"{name}/exact", num_outputs=1)
        scatter = ir.Node("", "ScatterElements", [logits, indices, exact.outputs[0]], [ir.AttrInt64("axis", -1)],
                          name=f"{name}/rescored", num_outputs=1)
        self.graph.insert_after(top, [gathered, expanded, product, exact, scatter])
        result = scatter.outputs[0]
        result.shape, result.type = logits.shape, logits.type
        for node, index in users:
            node.replace_input_with(index, result)
        for index in outputs:
            self.graph.outputs[index] = result
        logits.name, result.name = f"{name}_quantized", name

    def matmul_digits(
        self, node: ir.Node, high: list[ir.Value], low: list[ir.Value], block: int, k: int, n: int
    ) -> None:
        """Replace ``node`` by the two 4-bit MatMulNBits of 8-bit blocks (``blocks.q8_digits``:
        ``high`` B and scales; ``low`` B, scales and zero points 0), summed; float32 activations."""
        x = node.inputs[0]
        outputs = []
        for tag, weights in (("high", high), ("low", low)):
            attributes = [
                ir.AttrInt64("K", k), ir.AttrInt64("N", n), ir.AttrInt64("bits", 4), ir.AttrInt64("block_size", block),
            ]
            name = f"{node.name or node.outputs[0].name}/{tag}"
            digit = ir.Node(MS_DOMAIN, "MatMulNBits", [x, *weights], attributes, name=name, num_outputs=1)
            digit.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
            self.graph.insert_before(node, digit)
            outputs.append(digit.outputs[0])
        self._take_over(node, self._node(node, "Add", outputs, "digits"))

    def gather(self, node: ir.Node, packed: ir.Value, scales: ir.Value, block: int, k: int) -> None:
        """Replace ``Gather(table, ids)`` by ``GatherBlockQuantized`` on the 8-bit blocks
        ``packed`` [V, K / block, block] (scales [V, K / block, 1]), reshaped back to [..., K]."""
        ids = node.inputs[1]
        rank = len(ids.shape) if ids.shape is not None else None
        if rank is None:
            raise ValueError("the indices' rank is unknown")
        attributes = [
            ir.AttrInt64("gather_axis", 0), ir.AttrInt64("quantize_axis", 2),
            ir.AttrInt64("block_size", block), ir.AttrInt64("bits", 8),
        ]
        gathered = ir.Node(
            MS_DOMAIN, "GatherBlockQuantized", [packed, ids, scales], attributes, name=node.name, num_outputs=1
        )
        self.graph.insert_before(node, gathered)
        shape = register(self.graph, f"{packed.name}_gather_shape", np.array([0] * rank + [k], np.int64))
        result = self._node(node, "Reshape", [gathered.outputs[0], shape], "rows")
        self._take_over(node, result)

    def _block_sum(self, before: ir.Node, x: ir.Value, k: int, block: int) -> ir.Value:
        key = (id(x), k, block)
        if key not in self._block_sums:
            if (k, block) not in self._sum_matrices:  # shared: each copy would be read every step
                self._sum_matrices[(k, block)] = register(self.graph, f"block_sum_{k}_{block}", block_sum_matrix(k, block))
            self._block_sums[key] = self._node(before, "MatMul", [x, self._sum_matrices[(k, block)]], "block_sum")
        return self._block_sums[key]

    def _node(self, before: ir.Node, op: str, inputs: list[ir.Value], tag: str) -> ir.Value:
        name = f"{before.name or before.outputs[0].name}/{tag}"
        new = ir.Node("", op, inputs, name=name, num_outputs=1)
        new.outputs[0].name = name
        new.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        self.graph.insert_before(before, new)
        return new.outputs[0]

    def _take_over(self, node: ir.Node, result: ir.Value) -> None:
        """``result`` replaces ``node``'s output everywhere, under its name; ``node`` goes."""
        old = node.outputs[0]
        result.shape, result.type = old.shape, old.type
        ir.convenience.replace_all_uses_with(old, result, replace_graph_outputs=True)
        name = old.name
        self.graph.remove(node, safe=True)
        result.name = name
