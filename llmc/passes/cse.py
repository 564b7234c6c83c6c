"""Common subexpression elimination: identical nodes on identical inputs computed once.

onnx-ir's CommonSubexpressionEliminationPass (which leaves random ops alone) plus its
DeduplicateInitializersPass for identical small constants, which exporters repeat.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from llmc.model.values import count_nodes
from llmc.passes.registry import LlmcPass, PassOptions, register

# onnx-ir logs every initializer it may not merge (graph inputs) as a warning.
logging.getLogger("onnx_ir.passes.common.initializer_deduplication").setLevel(logging.ERROR)

KNOWN_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})
_GUARD = "_llmc_cse_guard"


@contextlib.contextmanager
def _custom_ops_kept_apart(model: ir.Model) -> Iterator[None]:
    """Give each custom-domain node a unique temporary attribute so CSE sees them as distinct."""
    guarded = [
        node for node in ir.traversal.RecursiveGraphIterator(model.graph) if node.domain not in KNOWN_DOMAINS
    ]
    for i, node in enumerate(guarded):
        node.attributes[_GUARD] = ir.AttrInt64(_GUARD, i)
    try:
        yield
    finally:
        for node in guarded:
            node.attributes.pop(_GUARD, None)


# Initializers up to this many elements are compared for deduplication.
DEDUP_SIZE_LIMIT = 1024


@register("cse", "common subexpression elimination and duplicate-constant merging")
class CommonSubexpressionPass(LlmcPass):
    """Merges nodes with the same op, attributes and inputs, and identical small initializers.

    Requires: nothing. Guarantees: non-deterministic ops (Random*) and ops of domains other than
    ONNX and ONNX Runtime's contrib domain (which may be stateful) are never merged; graph
    outputs keep their names.
    """

    def __init__(self, options: PassOptions | None = None) -> None:
        super().__init__()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inits = len(model.graph.initializers)
        dedup = common_passes.DeduplicateInitializersPass(size_limit=DEDUP_SIZE_LIMIT)(model)
        nodes = count_nodes(model)
        with _custom_ops_kept_apart(model):
            cse = common_passes.CommonSubexpressionEliminationPass()(model)
        self.stats = {
            "initializers": inits - len(model.graph.initializers),
            "nodes": nodes - count_nodes(model),
        }
        self.stats = {k: v for k, v in self.stats.items() if v}
        # A merged node whose output is a graph output leaves an Identity in its place (same
        # node count), so the counts alone would report such a rewrite as no change.
        modified = bool(self.stats) or dedup.modified or cse.modified
        return ir.passes.PassResult(model, modified=modified)
