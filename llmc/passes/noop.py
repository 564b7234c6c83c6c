"""Identity and no-op elimination.

Identity removal is our own (~30 lines) rather than onnx-ir's IdentityEliminationPass, which
(onnx-ir 1.1.0) also removes ``y = Identity(x)`` when *both* x and y are outputs of the same
graph, leaving the graph with one value listed as two outputs: ONNX Runtime then computes wrong
results (the ``test_scan_sum`` node case). Then onnxscript's rules for ops that return their input:
``x*1``, ``x+0``, ``x-0``, ``x/1`` (exact constants only), inference Dropout (ours: any
opset, ``training_mode`` absent or constant false, mask unused), Cast to the same type, Expand to the
same shape, identity Transpose, plus the exact collapses Transpose∘Transpose,
Reshape∘Reshape and Unsqueeze∘Unsqueeze. Cast∘Cast is left alone: it changes rounding.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import _ir_utils, pattern
from onnxscript.rewriter.rules.common import _basic_rules

from llmc.passes.registry import LlmcPass, PassOptions, register

logging.getLogger("onnxscript").setLevel(logging.ERROR)


def _exactly(expected: float):
    """Condition: ``c`` is a scalar constant exactly equal to ``expected``.

    onnxscript's ``x * 1`` / ``x + 0`` patterns compare with ``math.isclose`` (rel 1e-5,
    abs 1e-8), which would drop ``x + 1e-12`` (a LayerNorm epsilon) or ``x * 1.000001``.
    """

    def condition(context, c: ir.Value, **_) -> bool:
        array = _ir_utils.get_numpy_value(c)
        return array is not None and array.ndim == 0 and array.item() == expected

    return condition


def _identity(op, x, **_):
    return op.Identity(x)


_mul_by_1 = pattern.RewriteRule(lambda op, x, c: op.Mul(x, c), _identity, _exactly(1))
_add_0 = pattern.RewriteRule(lambda op, x, c: op.Add(x, c), _identity, _exactly(0))
_sub_0 = pattern.RewriteRule(lambda op, x, c: op.Sub(x, c), _identity, _exactly(0))
_div_by_1 = pattern.RewriteRule(lambda op, x, c: op.Div(x, c), _identity, _exactly(1))

RULES: dict[str, list[pattern.RewriteRule]] = {
    "mul_by_1": _mul_by_1.commute(),
    "add_0": _add_0.commute(),
    "sub_0": [_sub_0],
    "div_by_1": [_div_by_1],
    "cast_same_type": [_basic_rules.no_op_cast_rule],
    "expand_same_shape": [_basic_rules.no_op_expand_rule],
    "transpose_identity": [_basic_rules.no_op_transpose_rule],
    "transpose_transpose": [_basic_rules.transpose_transpose_rule],
    "reshape_reshape": [_basic_rules.reshape_reshape_rule],
    "unsqueeze_unsqueeze": [_basic_rules.unsqueeze_unsqueeze_rule],
}


def eliminate_inference_dropouts(model: ir.Model) -> int:
    """Dropout in inference mode returns its input: rewrite it to Identity (opset 7+)."""
    if model.opset_imports.get("", 0) < 7:
        return 0  # older Dropout had an is_test attribute with other semantics
    count = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx") or not node.inputs:
            continue
        mask = node.outputs[1] if len(node.outputs) > 1 else None
        if mask is not None and (mask.uses() or mask.is_graph_output()):
            continue
        training = node.inputs[2] if len(node.inputs) > 2 else None
        if training is not None:
            flag = None if training.is_graph_input() else _ir_utils.get_numpy_value(training)
            if flag is None or bool(flag):
                continue
        graph = node.graph
        assert graph is not None
        identity = ir.node("Identity", [node.inputs[0]], num_outputs=1)
        identity.outputs[0].type, identity.outputs[0].shape = node.outputs[0].type, node.outputs[0].shape
        graph.insert_before(node, identity)
        ir.convenience.replace_all_uses_with(node.outputs[0], identity.outputs[0], replace_graph_outputs=True)
        identity.outputs[0].name, node.outputs[0].name = node.outputs[0].name, None
        graph.remove(node, safe=True)
        count += 1
    return count


def eliminate_identities(model: ir.Model) -> int:
    """Remove ``y = Identity(x)`` nodes where that keeps every graph's signature intact."""
    removed = 0
    graphs = [model.graph, *model.functions.values()]
    for root in graphs:
        for node in list(ir.traversal.RecursiveGraphIterator(root)):
            removed += _eliminate_identity(node)
    return removed


def _eliminate_identity(node: ir.Node) -> int:
    if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
        return 0
    if len(node.inputs) != 1 or len(node.outputs) != 1 or node.inputs[0] is None:
        return 0
    x, y = node.inputs[0], node.outputs[0]
    graph = node.graph
    assert graph is not None
    if y.is_graph_output():
        # x takes y's place (and name) as the graph output: only if x is a plain value
        # produced in this very graph and is not already an output itself.
        producer = x.producer()
        if x.is_graph_output() or producer is None or producer.graph is not graph:
            return 0
        ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        x.name = y.name
        return 1
    ir.convenience.replace_all_uses_with(y, x)
    graph.remove(node, safe=True)
    return 1


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
        if removed := eliminate_identities(model):
            self.stats["identity"] = removed
        if dropouts := eliminate_inference_dropouts(model):
            eliminate_identities(model)
            self.stats["dropout"] = dropouts
        for name, rules in RULES.items():
            with _defaults_not_constant(model.graph):
                count = pattern.RewriteRuleSet(rules).apply_to_model(model)
            # Rewrites leave an Identity behind; remove it in the same pass.
            if count:
                eliminate_identities(model)
                self.stats[name] = count
        if self.stats:
            common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=bool(self.stats))


@contextlib.contextmanager
def _defaults_not_constant(graph: ir.Graph) -> Iterator[None]:
    """Hide the initializers of graph inputs from the rules while they run.

    A graph input with an initializer is a default the caller may override at run time, not a
    constant: ``x * k`` with such a ``k = 1`` is no no-op. onnxscript's matcher reads
    ``const_value`` and leaves this distinction to the caller.
    """
    hidden = {value: value.const_value for value in graph.inputs if value.const_value is not None}
    for value in hidden:
        value.const_value = None
    try:
        yield
    finally:
        for value, tensor in hidden.items():
            value.const_value = tensor
