"""Memory planning of an ONNX graph: liveness, arena plan, lower bound, reordering, KV cache.

:func:`analyze_memory` is what ``llmc build`` (the manifest's ``memory``) and ``llmc inspect
--memory`` report. For each set of input shapes it sizes every tensor (:mod:`.concrete_shapes`),
builds the :class:`~.liveness.MemoryGraph` of the graph, plans the activation arena on the graph's
order and, when asked, on the memory-aware order of :mod:`.schedule`; every plan is proven valid by
:func:`~.arena.check_plan` before it is reported.

Accounted separately from the activation arena: weights (initializers and Constant outputs),
graph inputs and graph outputs (the caller's buffers). Subgraphs of control-flow ops are not
planned; values they read from the outer graph stay live until the op runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from llmc.errors import LlmcError
from llmc.model.decoder import CACHE_RANK, is_cache_input, is_cache_output
from llmc.passes.memory.arena import ArenaPlan, plan_arena
from llmc.passes.memory.concrete_shapes import nbytes, tensor_shapes
from llmc.passes.memory.liveness import (
    ACTIVATION,
    DEFAULT_ALIGNMENT,
    INPUT,
    OUTPUT,
    WEIGHT,
    Liveness,
    MemoryGraph,
    Op,
    Tensor,
    inplace_candidates,
    liveness,
    with_inplace,
)
from llmc.passes.memory.schedule import Choice, choose_order

# ONNX Runtime's CPU kernels for these return a view of input 0 (no copy).
VIEW_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
# Elementwise ops whose output may overwrite an input of the same size that dies there.
ELEMENTWISE_OPS = frozenset(
    {
        "Abs", "Add", "Cast", "Clip", "Div", "Elu", "Erf", "Exp", "Gelu", "HardSigmoid", "LeakyRelu",
        "Log", "Mul", "Neg", "Pow", "Reciprocal", "Relu", "Sigmoid", "Sin", "Cos", "Softplus",
        "Sqrt", "Sub", "Tanh", "Where", "BiasGelu", "FastGelu", "QuickGelu", "BiasAdd",
    }
)
TOP_TENSORS = 5
# A tensor over this is a wrong dim, not something to plan (sums of such sizes overflow int64).
MAX_TENSOR_BYTES = 2**48


@dataclasses.dataclass
class ShapeSetPlan:
    """The memory figures of one set of input shapes."""

    shapes: dict[str, tuple[int, ...]]
    graph: MemoryGraph
    before: Liveness  # the graph's own order
    after: Liveness  # the chosen order (the same as before when not reordered)
    plan: ArenaPlan
    names: list[str]  # tensor names, by tensor id
    tensor_shapes: dict[str, tuple[int, ...]]
    kv_cache: dict[str, int] | None
    inplace_count: int
    lower_bound_inplace_bytes: int

    @property
    def lower_bound_bytes(self) -> int:
        return self.after.lower_bound()

    def buffer_name(self, b: int) -> str:
        return self.names[int(self.graph.buffer_root[b])]

    def top_at_peak(self, count: int = TOP_TENSORS) -> list[dict[str, Any]]:
        live = self.after
        out = []
        for b in live.live_at(live.peak_step())[:count]:
            name = self.buffer_name(b)
            out.append(
                {"tensor": name, "bytes": int(self.graph.buffer_bytes[b]), "shape": list(self.tensor_shapes[name])}
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        g = self.graph
        peak = self.after.peak_step()
        peak_op = g.ops[int(self.after.order[peak])] if len(g.ops) else None
        data: dict[str, Any] = {
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "arena_bytes": self.plan.arena_bytes,
            "lower_bound_bytes": self.lower_bound_bytes,
            "naive_bytes": int(self.plan.sizes.sum()),
            "weights_bytes": g.bytes_of(WEIGHT),
            "inputs_bytes": g.bytes_of(INPUT),
            "outputs_bytes": g.bytes_of(OUTPUT),
            "peak_node": peak_op.name if peak_op else None,
            "peak_op_type": peak_op.op_type if peak_op else None,
            "top_tensors_at_peak": self.top_at_peak(),
            "arena_method": self.plan.method,
            "alignment": self.plan.alignment,
            "lower_bound_graph_order_bytes": self.before.lower_bound(),
            "inplace_candidates": self.inplace_count,
            "lower_bound_inplace_bytes": self.lower_bound_inplace_bytes,
            "tensors": len(g.tensors),
            "arena_buffers": len(self.plan.buffers),
        }
        if self.kv_cache is not None:
            data["kv_cache"] = self.kv_cache
        return data


@dataclasses.dataclass
class MemoryAnalysis:
    sets: list[ShapeSetPlan]
    choice: Choice | None  # None: the graph's order was not questioned
    alignment: int
    seconds: dict[str, float]

    @property
    def order_changed(self) -> bool:
        return self.choice is not None and self.choice.scheduler != "graph"

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``memory``: the first shape set's figures, then every set's."""
        first = self.sets[0].to_dict()
        return {
            **first,
            "order_changed": self.order_changed,
            "scheduler": self.choice.scheduler if self.choice else "graph",
            "planner_seconds": round(sum(self.seconds.values()), 4),
            "shape_sets": [s.to_dict() for s in self.sets[1:]],
        }


def analyze_memory(
    model: ir.Model,
    shape_sets: Sequence[dict[str, tuple[int, ...]]],
    *,
    alignment: int = DEFAULT_ALIGNMENT,
    reorder: bool = True,
    feeds: Sequence[dict[str, np.ndarray] | None] | None = None,
) -> MemoryAnalysis:
    """Plan ``model``'s memory for each complete set of input shapes (see feeds.resolve_shapes).

    With ``reorder``, the memory-aware order is chosen over all sets and the figures are those of
    that order; the model itself is not changed (the ``memory`` pass applies the order).
    """
    if not shape_sets:
        raise ValueError("analyze_memory needs at least one set of input shapes")
    seconds = {"shapes": 0.0, "liveness": 0.0, "schedule": 0.0, "arena": 0.0}
    graphs, names, all_shapes = [], [], []
    for i, shapes in enumerate(shape_sets):
        start = time.perf_counter()
        sized = tensor_shapes(model, shapes, feeds[i] if feeds else None)
        seconds["shapes"] += time.perf_counter() - start
        start = time.perf_counter()
        graph, tensor_names = memory_graph(model, sized)
        seconds["liveness"] += time.perf_counter() - start
        graphs.append(graph)
        names.append(tensor_names)
        all_shapes.append(sized)
    choice = None
    if reorder:
        start = time.perf_counter()
        choice = choose_order(graphs, alignment)
        seconds["schedule"] += time.perf_counter() - start
    sets = []
    for graph, tensor_names, sized, shapes in zip(graphs, names, all_shapes, shape_sets, strict=True):
        start = time.perf_counter()
        before = liveness(graph, None, alignment)
        after = liveness(graph, choice.order, alignment) if choice else before
        candidates = inplace_candidates(after)
        inplace_bound = liveness(with_inplace(graph, candidates), after.order, alignment).lower_bound()
        seconds["liveness"] += time.perf_counter() - start
        start = time.perf_counter()
        plan = plan_arena(after)
        seconds["arena"] += time.perf_counter() - start
        problems = plan.problems()
        if problems:
            raise AssertionError(f"invalid arena plan: {problems[0]}")
        sets.append(
            ShapeSetPlan(
                dict(shapes), graph, before, after, plan, tensor_names,
                {k: v[0] for k, v in sized.items()}, kv_cache_bytes(model, sized), len(candidates),
                inplace_bound,
            )
        )
    return MemoryAnalysis(sets, choice, alignment, seconds)


def memory_graph(
    model: ir.Model, sized: dict[str, tuple[tuple[int, ...], ir.DataType]]
) -> tuple[MemoryGraph, list[str]]:
    """The MemoryGraph of ``model``'s top-level graph, in its node order, and tensor names."""
    graph = model.graph
    ids: dict[str, int] = {}
    tensors: list[Tensor] = []
    outputs = {v.name for v in graph.outputs}

    def add(name: str, kind: str) -> int:
        shape, dtype = sized[name]
        size = nbytes(shape, dtype)
        if not 0 <= size <= MAX_TENSOR_BYTES:
            raise LlmcError(
                f"tensor '{name}' ({dtype.name} {list(shape)}) would take {size} bytes at these shapes; "
                "give other --shape values or fix the model's dims"
            )
        ids[name] = len(tensors)
        tensors.append(Tensor(name, size, kind))
        return ids[name]

    for value in graph.inputs:
        if value.name not in ids:
            add(value.name, WEIGHT if value.name in graph.initializers else INPUT)
    for name in graph.initializers:
        if name not in ids:
            add(name, WEIGHT)
    ops = []
    for node in graph:
        kind = WEIGHT if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        outs = tuple(
            add(v.name, kind or (OUTPUT if v.name in outputs else ACTIVATION)) for v in node.outputs if v.name
        )
        ins = [ids[v.name] for v in node.inputs if v is not None and v.name in ids]
        ins += [ids[name] for name in _outer_scope_inputs(node) if name in ids]
        standard = node.domain in ("", "ai.onnx")
        ops.append(
            Op(
                node.name or f"{node.op_type}_{len(ops)}",
                node.op_type,
                tuple(ins),
                outs,
                view=standard and node.op_type in VIEW_OPS and bool(ins) and bool(outs),
                elementwise=node.op_type in ELEMENTWISE_OPS,
            )
        )
    names = [t.name for t in tensors]
    return MemoryGraph(tensors, ops), names


def _outer_scope_inputs(node: ir.Node) -> list[str]:
    """Names of outer values that ``node``'s subgraphs read (they must live until it runs)."""
    names: list[str] = []
    for attr in node.attributes.values():
        graphs = []
        if attr.type == ir.AttributeType.GRAPH:
            graphs = [attr.value]
        elif attr.type == ir.AttributeType.GRAPHS:
            graphs = list(attr.value)
        for sub in graphs:
            inner = set()
            for inner_node in ir.traversal.RecursiveGraphIterator(sub):
                inner.update(v for v in inner_node.outputs)
            inner.update(sub.inputs)
            for inner_node in ir.traversal.RecursiveGraphIterator(sub):
                for v in inner_node.inputs:
                    if v is not None and v not in inner and v.name and v.const_value is None:
                        names.append(v.name)
    return list(dict.fromkeys(names))


def kv_cache_bytes(model: ir.Model, sized: dict[str, tuple[tuple[int, ...], ir.DataType]]) -> dict[str, int] | None:
    """A decoder's KV-cache bytes: the past inputs, the present outputs, and per cached token.

    KV-cache tensors are the rank-4 cache inputs and outputs of either naming convention of
    :mod:`llmc.model.decoder` (``past_key_values.*`` -> ``present.*``, ``past_*`` -> ``present_*``;
    [batch, kv heads, past length, head size]). None for a model without them.
    """
    past = [
        v.name for v in model.graph.inputs
        if is_cache_input(v.name) and v.name in sized and len(sized[v.name][0]) == CACHE_RANK
    ]
    present = [
        v.name for v in model.graph.outputs
        if is_cache_output(v.name) and v.name in sized and len(sized[v.name][0]) == CACHE_RANK
    ]
    if not past and not present:
        return None
    past_bytes = sum(nbytes(*sized[n]) for n in past)
    present_bytes = sum(nbytes(*sized[n]) for n in present)
    data = {"past_bytes": past_bytes, "present_bytes": present_bytes, "tensors": len(present) or len(past)}
    if present:
        batch, _, length, _ = sized[present[0]][0]
        if batch and length:
            data["tokens"] = int(length)
            data["bytes_per_token"] = present_bytes // (batch * length)
    return data
