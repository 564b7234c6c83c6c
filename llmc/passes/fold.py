"""Constant folding with a size cap, on onnxscript's constant folder.

onnxscript's ``FoldConstantsPass`` evaluates nodes whose inputs are all constants (with the ONNX
reference implementation) and propagates partial shape values. We add one rule on top: a node
that reads a weight (an initializer over ``WEIGHT_ELEMENTS`` elements) still read by other nodes
is never folded, since its folded output would be a second copy of that weight.
"""

from __future__ import annotations

import collections
import logging

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.optimizer import _constant_folding

from llmc.passes.registry import LlmcPass, PassOptions, register

logging.getLogger("onnxscript").setLevel(logging.ERROR)

WEIGHT_ELEMENTS = 1024


def _op_histogram(model: ir.Model) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph))


def _duplicates_a_weight(node: ir.Node) -> bool | None:
    for value in node.inputs:
        if value is None or value.const_value is None:
            continue
        if value.const_value.size > WEIGHT_ELEMENTS and len(value.uses()) > 1:
            return False
    return None  # onnxscript's default rules decide


@register("fold", "constant folding (never duplicates weights; size-capped outputs)")
class ConstantFoldingPass(LlmcPass):
    """Replaces nodes with all-constant inputs by initializers.

    Requires: nothing. Guarantees: no folded tensor over ``fold_size_limit`` elements unless it
    replaces inputs at least as large; weights are never duplicated; random ops, control flow
    and ops of unknown domains are left alone; graph inputs (even with initializers) stay inputs.
    """

    def __init__(self, options: PassOptions | None = None) -> None:
        super().__init__()
        options = options or PassOptions()
        self._fold = _constant_folding.FoldConstantsPass(
            shape_inference=True,
            input_size_limit=options.fold_input_size_limit,
            output_size_limit=options.fold_size_limit,
            should_fold=_duplicates_a_weight,
        )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = _op_histogram(model)
        result = self._fold(model)
        if result.modified:
            common_passes.RemoveUnusedNodesPass()(model)
        after = _op_histogram(model)
        self.stats = {op: n - after[op] for op, n in sorted(before.items()) if n > after[op]}
        return ir.passes.PassResult(model, modified=result.modified)
