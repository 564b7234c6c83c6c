"""Identity and no-op elimination.

onnx-ir's IdentityEliminationPass, then onnxscript's rules for ops that return their input:
``x*1``, ``x+0``, ``x-0``, ``x/1``, inference Dropout, Cast to the same type, Expand to the
same shape, identity Transpose, plus the exact collapses Transpose∘Transpose,
Reshape∘Reshape and Unsqueeze∘Unsqueeze. Cast∘Cast is left alone: it changes rounding.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import _basic_rules, _no_op

from llmc.compiler.instruments import count_nodes
from llmc.compiler.registry import LlmcPass, PassOptions, register

logging.getLogger("onnxscript").setLevel(logging.ERROR)

RULES: dict[str, list[pattern.RewriteRule]] = {
    "mul_by_1": _no_op.mul_by_1_rule.commute(),
    "add_0": _no_op.add_0_rule.commute(),
    "sub_0": [_no_op.sub_0_rule],
    "div_by_1": [_no_op.div_by_1_rule],
    "dropout": [_no_op.dropout_zero_rule, _no_op.dropout_inference_rule],
    "cast_same_type": [_basic_rules.no_op_cast_rule],
    "expand_same_shape": [_basic_rules.no_op_expand_rule],
    "transpose_identity": [_basic_rules.no_op_transpose_rule],
    "transpose_transpose": [_basic_rules.transpose_transpose_rule],
    "reshape_reshape": [_basic_rules.reshape_reshape_rule],
    "unsqueeze_unsqueeze": [_basic_rules.unsqueeze_unsqueeze_rule],
}


@register("noop", "remove Identity and ops that return their input (x*1, x+0, same-type Cast, ...)")
class NoOpEliminationPass(LlmcPass):
    """Rewrites no-op nodes to their input and collapses exact op pairs.

    Requires: nothing. Guarantees: graph inputs/outputs keep their names (an Identity that
    connects an input straight to an output is kept); values are bit-identical except that
    ``-0.0 + 0`` becomes ``+0.0``.
    """

    def __init__(self, options: PassOptions | None = None) -> None:
        super().__init__()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.stats = {}
        nodes = count_nodes(model)
        common_passes.IdentityEliminationPass()(model)
        if removed := nodes - count_nodes(model):
            self.stats["identity"] = removed
        for name, rules in RULES.items():
            count = pattern.RewriteRuleSet(rules).apply_to_model(model)
            # Rewrites leave an Identity behind; remove it in the same pass.
            if count:
                common_passes.IdentityEliminationPass()(model)
                self.stats[name] = count
        if self.stats:
            common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=bool(self.stats))
