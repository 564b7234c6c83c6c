"""The ``memory`` pass: put the graph's nodes in the order with the lowest activation peak.

Runs the schedulers of :mod:`.schedule` on the graph sized for the build's input shapes and
rewrites the node order of the model when a schedule lowers the arena lower bound; the order is
what ``model.onnx`` stores. Whether a runtime follows it is the runtime's business: ONNX Runtime
numbers nodes in file order, and its default execution order is a depth-first walk that breaks
ties by that number (measured in benchmarks/RESULTS.md, memory section).
"""

from __future__ import annotations

import onnx_ir as ir

from llmc.errors import LlmcError
from llmc.passes.memory.liveness import DEFAULT_ALIGNMENT
from llmc.passes.registry import LlmcPass, PassOptions, register


@register("memory", "memory-aware node order: the DFS or list schedule when it lowers the activation peak")
class MemoryReorderPass(LlmcPass):
    """Reorders nodes to lower the peak of live activation bytes.

    Requires: concrete input shapes (``PassOptions.memory_shapes``; without them, the assumed
    defaults of ``llmc.model.feeds.resolve_shapes``). Guarantees: the new order is
    topological; it never raises the arena lower bound of any given shape set (the graph's own
    order is a candidate); nodes, values and outputs are otherwise untouched.
    """

    def __init__(self, options: PassOptions | None = None) -> None:
        super().__init__()
        self.options = options or PassOptions()
        self.analysis = None
        self.skipped: str | None = None  # why the graph could not be planned

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from llmc.passes.memory.planner import analyze_memory
        from llmc.spec.task import task_shapes

        try:
            sets = [dict(s) for s in self.options.memory_shapes] or [task_shapes(model)[0]]
            self.analysis = analyze_memory(
                model, sets, alignment=self.options.memory_alignment or DEFAULT_ALIGNMENT, reorder=True
            )
        except LlmcError as exc:
            # An optimization: a graph that cannot be sized (data-dependent shapes that fail to
            # evaluate, unknown types) keeps its order; the reason is reported.
            self.skipped = str(exc)
            self.stats = {"skipped": 1}
            return ir.passes.PassResult(model, modified=False)
        choice = self.analysis.choice
        assert choice is not None
        before = self.analysis.sets[0].before.lower_bound()
        after = self.analysis.sets[0].after.lower_bound()
        self.stats = {"lower_bound_before_bytes": before, "lower_bound_after_bytes": after}
        if choice.scheduler == "graph":
            return ir.passes.PassResult(model, modified=False)
        nodes = list(model.graph)
        ordered = [nodes[i] for i in choice.order]
        moved = sum(1 for i, j in enumerate(choice.order) if i != j)
        apply_order(model.graph, ordered)
        self.stats[f"reordered_{choice.scheduler}"] = moved
        return ir.passes.PassResult(model, modified=True)


def apply_order(graph: ir.Graph, ordered: list[ir.Node]) -> None:
    """Store ``graph``'s nodes in the order ``ordered`` (a permutation of them)."""
    graph.remove(list(graph), safe=False)  # unlinks the nodes; their inputs and uses stay
    graph.extend(ordered)
