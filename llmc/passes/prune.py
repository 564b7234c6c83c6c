"""Dead-node pruning: nodes whose outputs nobody reads, unused initializers, functions, opsets.

Built on onnx-ir's RemoveUnusedNodesPass / RemoveUnusedFunctionsPass / RemoveUnusedOpsetsPass;
this pass runs them together and reports what each removed.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from llmc.model.values import count_nodes
from llmc.passes.registry import LlmcPass, PassOptions, register


@register("prune", "remove unused nodes, initializers, functions and opset imports")
class DeadNodePruningPass(LlmcPass):
    """Removes what cannot affect a graph output.

    Requires: nothing. Guarantees: graph inputs and outputs are unchanged; nodes of unknown
    domains are removed only when none of their outputs is used.
    """

    def __init__(self, options: PassOptions | None = None) -> None:
        super().__init__()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes, inits = count_nodes(model), len(model.graph.initializers)
        functions, opsets = len(model.functions), len(model.opset_imports)
        common_passes.RemoveUnusedNodesPass()(model)
        common_passes.RemoveUnusedFunctionsPass()(model)
        common_passes.RemoveUnusedOpsetsPass()(model)
        self.stats = {
            "nodes": nodes - count_nodes(model),
            "initializers": inits - len(model.graph.initializers),
            "functions": functions - len(model.functions),
            "opsets": opsets - len(model.opset_imports),
        }
        self.stats = {k: v for k, v in self.stats.items() if v}
        return ir.passes.PassResult(model, modified=bool(self.stats))
