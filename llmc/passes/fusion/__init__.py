"""Transformer operator fusion for the build's target, with a "why not fused" report.

Rewrites: the subgraphs of the enabled fusion families (``PassOptions.fusions``: the build
target's families, :class:`llmc.spec.target.FamilyUse`, in order) into ONNX Runtime contrib ops
or the standard ONNX ops TensorRT fuses itself.
Requires: a topologically sorted graph (shape inference is run here; checks read shapes).
Guarantees: every rewrite is exact (each rule's check proves the fused op computes the same
function: axes, constants, shapes), graph inputs/outputs are unchanged, intermediate fusion
functions not consumed by a later rule are inlined back. ``stats`` counts rewrites per family;
``report.explain`` lists the candidates left and why.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from llmc.errors import LlmcError
from llmc.model.symbolic_shapes import refine_shapes
from llmc.passes.fusion.families import FAMILIES, get_family, opset_problem
from llmc.passes.fusion.report import NotFused, explain
from llmc.passes.noop import eliminate_identities
from llmc.passes.registry import LlmcPass, PassOptions, register
from llmc.spec.target import FamilyUse

__all__ = ["FusionPass", "NotFused", "enabled_families", "explain", "fused_op_counts"]

FUSION_DOMAIN = "ai.onnxruntime._fusion"  # onnxscript's intermediate ops (SDPA...)


def enabled_families(
    target: str, uses: tuple[FamilyUse, ...], device: str, overrides: dict[str, bool] | None = None
) -> tuple[list[FamilyUse], dict[str, str]]:
    """The families ``target`` (its name, for messages) uses, enabled in order, and the disabled
    ones with why: ``overrides`` (--enable/--disable-fusion) over the target's defaults."""
    overrides = dict(overrides or {})
    names = {f.name for f in FAMILIES}
    for name in overrides:
        if name not in names:
            raise LlmcError(f"unknown fusion '{name}'; valid fusions: {', '.join(sorted(names))}")
    for name in overrides:
        if name not in {u.name for u in uses}:
            raise LlmcError(
                f"fusion '{name}' does not apply to target '{target}'; its fusions: "
                f"{', '.join(u.name for u in uses)}"
            )
    enabled, disabled = [], {}
    for use in uses:
        on = overrides.get(use.name, use.enabled_by_default(device))
        if on:
            enabled.append(use)
        elif use.name in overrides:
            disabled[use.name] = "turned off by --disable-fusion"
        else:
            disabled[use.name] = f"off by default for {target}/{device}: " + use.off_by_default[device]
    names = {u.name for u in enabled}
    if "gqa" in names and "attention" not in names:
        # gqa starts from onnxscript's SDPA ops, which only the attention family turns back into
        # ONNX Runtime ops: without it, attention GQA does not match would stay in SDPA form.
        enabled = [u for u in enabled if u.name != "gqa"]
        disabled["gqa"] = "needs the attention family (its SDPA step), which is off"
    return enabled, disabled


def fused_op_counts(model: ir.Model, uses: tuple[FamilyUse, ...] | list[FamilyUse]) -> dict[str, int]:
    """Nodes of every op the families in ``uses`` produce, by op type."""
    produced = {p for u in uses for p in get_family(u.name).produces}
    counts: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if f"{domain}::{node.op_type}" in produced:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _shape_inference(model: ir.Model) -> None:
    common_passes.ShapeInferencePass(check_type=False, strict_mode=False)(model)


@register("fuse", "transformer fusions for the target (see --explain-fusion)")
class FusionPass(LlmcPass):
    def __init__(self, options: PassOptions | None = None) -> None:
        super().__init__()
        self.options = options or PassOptions()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        _shape_inference(model)
        refine_shapes(model)
        for use in self.options.fusions:
            if opset_problem(model, use.min_opset):
                continue  # reported by explain()
            family = get_family(use.name)
            count = 0
            for step in family.steps:
                for rule_set in step.rules():
                    count += rule_set.apply_to_model(model)
                eliminate_identities(model)  # rewrites to Identity (canonical rules)
                common_passes.RemoveUnusedNodesPass()(model)  # frees values for the next step
                if step.shape_inference:
                    _shape_inference(model)
            if count:
                self.stats[family.name] = count
        # Intermediate fusion functions (e.g. SDPA) that no later rule consumed.
        common_passes.InlinePass(lambda f: f.domain.startswith(FUSION_DOMAIN))(model)
        common_passes.RemoveUnusedFunctionsPass()(model)
        common_passes.RemoveUnusedNodesPass()(model)
        common_passes.RemoveUnusedOpsetsPass()(model)
        return ir.passes.PassResult(model, modified=bool(self.stats))
