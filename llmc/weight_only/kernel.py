"""MatMulNBits (4-bit, float32 activations) -> llmc's ``ai.llmc::MatMulInt4`` (:mod:`llmc.kernels`).

One rewrite, for CPU builds where llmc's kernel library is built. ``requires``: a MatMulNBits
with ``bits`` 4 at accuracy level 0 or 1 (float32 compute), float32 activations and scales, B,
scales and zero points (uint8, 4-bit packed, or none: 8) initializers, no ``g_idx`` or bias.
``ensures``: a MatMulInt4 computing the same products from the same 4-bit values, its weights
prepacked for the kernel (:func:`pack`), under the old output's name; with a ``minmax`` offset
term (``MatMulNBits(x) + blocksum(x) @ C``, :mod:`llmc.weight_only.rewrite`) the float offsets
``C`` are folded into the kernel's per-block offsets and the term's MatMul and Add go.

Why: ONNX Runtime's MatMulNBits dequantizes every weight per call for more than one row; the
kernel does it once per 8 rows in registers. SmolLM2-135M int4, one decode step of 8 rows at 160
cached tokens: benchmarks/RESULTS.md (serving). Nodes the kernel cannot take keep MatMulNBits,
each with its reason in the manifest's record.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from llmc.errors import LlmcError
from llmc.kernels import DOMAIN, INT4_MATMUL, fast_path, unavailable
from llmc.model.values import const_array, is_op
from llmc.weight_only.options import LLMC_KERNEL, ORT_KERNEL
from llmc.weight_only.rewrite import MS_DOMAIN, block_sum_matrix, register

ORT_OP = "com.microsoft::MatMulNBits"


def resolve(kernel: str, device: str) -> str | None:
    """``--int4-kernel`` for a build on ``device``: None when llmc's kernel computes the 4-bit
    MatMuls, else why ONNX Runtime's does (``ort``: asked for). ``llmc`` where it cannot run is one
    error line, before any work."""
    if kernel == ORT_KERNEL:
        return "--int4-kernel ort"
    why = unavailable()
    if why is None and device != "cpu":
        why = f"llmc's kernels are CPU kernels; this build is for --device {device}"
    if why is None and not fast_path():
        why = "this CPU has neither AVX-512 nor AVX2 with FMA (the kernel's portable path is slower than ONNX Runtime's)"
    if why is not None and kernel == LLMC_KERNEL:
        raise LlmcError(f"--int4-kernel llmc cannot be used: {why}; drop it or use --int4-kernel ort")
    return why


def pack(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, n: int, k: int, block: int,
         offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MatMulNBits' 4-bit ``b`` [N, K/block, block/2], ``scales`` ([N, K/block] or flat) and
    ``zero_points`` (uint8 [N, ceil(K/block / 2)], two 4-bit points a byte; None: 8) as the kernel
    reads them: packed uint8 [tiles, K/2, 16] (byte j of pair p: column 16t+j's values at K = 2p,
    low nibble, and 2p+1, high), scales and offsets float32 [tiles, K/block, 16]. A weight is
    ``q * scale + offset``: ``offset = -zero_point * scale``, plus ``offsets`` [K/block, N] (float
    block offsets) when given. Columns past N (the last tile's) are zero."""
    blocks = k // block
    tiles = -(-n // 16)
    pad = tiles * 16 - n
    q = np.ascontiguousarray(b, dtype=np.uint8).reshape(n, k // 2)
    s = np.asarray(scales, dtype=np.float32).reshape(n, blocks)
    if zero_points is None:
        zero = np.full((n, blocks), 8, np.float32)
    else:
        z = np.asarray(zero_points, dtype=np.uint8).reshape(n, -1)
        zero = np.stack([z & 15, z >> 4], axis=-1).reshape(n, -1)[:, :blocks].astype(np.float32)
    shift = -zero * s
    if offsets is not None:
        shift = shift + np.asarray(offsets, dtype=np.float32).T
    q = np.pad(q, ((0, pad), (0, 0)))
    s = np.pad(s, ((0, pad), (0, 0)))
    shift = np.pad(shift.astype(np.float32), ((0, pad), (0, 0)))

    def tiled(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.reshape(tiles, 16, -1).transpose(0, 2, 1))

    return tiled(q), tiled(s), tiled(shift)


@dataclasses.dataclass
class Candidate:
    node: ir.Node
    k: int
    n: int
    block: int
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray | None]
    offset_add: ir.Node | None = None  # the Add of a minmax offset term, folded in
    offsets: np.ndarray | None = None  # its C [K/block, N]


def check(node: ir.Node) -> Candidate | str:
    """The node as the kernel takes it, or why not (one phrase)."""
    attrs = {name: attr.value for name, attr in node.attributes.items()}
    if attrs.get("bits", 4) != 4:
        return f"{attrs.get('bits')}-bit weights (the kernel is 4-bit)"
    if attrs.get("accuracy_level", 0) not in (0, 1):
        return f"accuracy level {attrs['accuracy_level']} (the kernel computes in float32)"
    inputs = list(node.inputs)
    if any(v is not None and v.name for v in inputs[4:]):
        return "a g_idx or bias input"
    if inputs[0] is None or inputs[0].dtype != ir.DataType.FLOAT:
        return "activations that are not float32"
    b, scales = const_array(inputs[1]), const_array(inputs[2])
    zero = const_array(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else None
    if b is None or scales is None or (len(inputs) > 3 and inputs[3] is not None and zero is None):
        return "weights, scales or zero points computed in the graph"
    if scales.dtype != np.float32 or (zero is not None and zero.dtype != np.uint8):
        return "scales that are not float32 or zero points that are not uint8"
    k, n, block = int(attrs["K"]), int(attrs["N"]), int(attrs["block_size"])
    if k % block or block % 2:
        return f"K {k} not a multiple of the block {block}"
    candidate = Candidate(node, k, n, block, (b, scales, zero))
    _offset_term(candidate)
    return candidate


def _offset_term(candidate: Candidate) -> None:
    """Record ``Add(MatMulNBits(x), MatMul(MatMul(x, S), C))`` (:mod:`llmc.weight_only.rewrite`'s
    offset term: ``S`` the 0/1 matrix summing each block of ``x``, ``C`` constant [K/block, N])."""
    node, out = candidate.node, candidate.node.outputs[0]
    uses = list(out.uses())
    if out.is_graph_output() or len(uses) != 1:
        return
    add = uses[0].node
    if not is_op(add, "Add") or add.graph is not node.graph:
        return
    other = add.inputs[1 - uses[0].idx]
    term = other.producer() if other is not None else None
    if not is_op(term, "MatMul") or len(list(other.uses())) != 1:
        return
    if other.is_graph_output() or not _block_sums_of(term.inputs[0], node.inputs[0], candidate.k, candidate.block):
        return
    c = const_array(term.inputs[1])
    if c is None or c.dtype != np.float32 or c.shape != (candidate.k // candidate.block, candidate.n):
        return
    candidate.offset_add, candidate.offsets = add, c


def _block_sums_of(sums: ir.Value | None, x: ir.Value | None, k: int, block: int) -> bool:
    """Whether ``sums`` is ``MatMul(x, S)`` with ``S`` the 0/1 matrix summing each block of K."""
    producer = sums.producer() if sums is not None else None
    if not is_op(producer, "MatMul") or producer.inputs[0] is not x:
        return False
    ones, expected = const_array(producer.inputs[1]), block_sum_matrix(k, block)
    return ones is not None and ones.shape == expected.shape and np.array_equal(ones, expected)


def use_kernels(model: ir.Model) -> dict[str, Any]:
    """Rewrite every MatMulNBits of the main graph the kernel takes; the manifest's record:
    nodes rewritten, offset terms folded, and the others by reason."""
    graph = model.graph
    kept: Counter[str] = Counter()
    rewritten = folded = 0
    for node in list(graph):
        if node.domain != MS_DOMAIN or node.op_type != "MatMulNBits":
            continue
        found = check(node)
        if isinstance(found, str):
            kept[found] += 1
            continue
        _rewrite(graph, found)
        rewritten += 1
        folded += found.offset_add is not None
    if rewritten:
        model.opset_imports.setdefault(DOMAIN, 1)
        # the old weights, offset terms and block sums nothing reads now (graph inputs and outputs stay)
        RemoveUnusedNodesPass()(model)
    return {"op": f"{DOMAIN}::{INT4_MATMUL}", "nodes": rewritten, "offsets_folded": folded, "kept": dict(kept)}


def _rewrite(graph: ir.Graph, c: Candidate) -> None:
    node = c.node
    name = node.name or node.outputs[0].name
    packed, scales, shift = pack(*c.arrays, c.n, c.k, c.block, offsets=c.offsets)
    weights = [register(graph, f"{name}_int4_{tag}", array)
               for tag, array in (("packed", packed), ("scales", scales), ("offsets", shift))]
    attributes = [ir.AttrInt64("K", c.k), ir.AttrInt64("N", c.n), ir.AttrInt64("block_size", c.block)]
    new = ir.Node(DOMAIN, INT4_MATMUL, [node.inputs[0], *weights], attributes, name=name, num_outputs=1)
    graph.insert_before(node, new)
    old = c.offset_add.outputs[0] if c.offset_add is not None else node.outputs[0]
    result = new.outputs[0]
    result.shape, result.type = old.shape, old.type
    ir.convenience.replace_all_uses_with(old, result, replace_graph_outputs=True)
    name = old.name
    if c.offset_add is not None:
        graph.remove(c.offset_add, safe=True)
    graph.remove(node, safe=True)
    result.name = name

