"""The "why not fused" report: every candidate left unfused, the rule that came closest, and why.

After fusion, each enabled family's anchor ops still in the graph (a Softmax for attention, an
Erf for GELU...) are its unfused candidates. To explain them, the family's steps are replayed on
a clone of the fused model with onnxscript's matching tracer (which never rewrites), applying
each step for real on the clone afterwards so later steps see the intermediate ops (the SDPA
that MultiHeadAttention starts from). For every root node the best partial match is kept (a
failed check, or a pattern that stopped part-way after reaching an anchor op): the rule, how many
nodes matched, and the failed check's reason. A disabled family's candidates are
reported with the reason it is off.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import _basics

from llmc.passes.fusion.families import FusionFamily, get_family, opset_problem
from llmc.spec.target import FamilyUse

# A NO_MATCH partial match is worth reporting only if it matched at least this many nodes.
MIN_PARTIAL_NODES = 3


@dataclasses.dataclass(frozen=True)
class NotFused:
    family: str
    node: str  # the candidate: the root of the best partial match, or the anchor op
    op_type: str
    rule: str | None
    reason: str
    matched_nodes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Tracer(_basics.MatchingTracer):
    """Keeps the best-scoring match per root node (onnxscript's keeps the best per rule)."""

    def __init__(self) -> None:
        super().__init__()
        self.best: dict[int, tuple[int, str, _basics.MatchInfo]] = {}

    def log(self, rule, container, node, match_result, status) -> None:  # type: ignore[override]
        info = _basics.MatchInfo(match_result, node, container, status)
        score = info.score()
        if score == 0:
            return
        current = self.best.get(id(node))
        if current is None or score > current[0]:
            self.best[id(node)] = (score, str(rule), info)


def _anchors(model: ir.Model, family: FusionFamily) -> list[ir.Node]:
    return [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if family.anchor(n)]


def _reportable(info: _basics.MatchInfo, anchors: set[int]) -> bool:
    if info.status == _basics.MatchStatus.SUCCESS:
        return False
    if info.status == _basics.MatchStatus.NO_MATCH:
        # A partial match is a candidate only if it reached one of the family's anchor ops (or
        # stopped at one): a LayerNormalization of a residual sum is not a near miss of the
        # embedding fusion.
        nodes = info.match_result.nodes
        reached = {id(n) for n in nodes} | {
            id(v.producer()) for n in nodes for v in n.inputs if v is not None and v.producer() is not None
        }
        return len(nodes) >= MIN_PARTIAL_NODES and bool(reached & anchors)
    return True


def _reason(info: _basics.MatchInfo) -> str:
    reason = info.match_result.reason or "pattern did not match"
    if info.status == _basics.MatchStatus.NO_MATCH:
        reason = f"pattern stopped after {len(info.match_result.nodes)} nodes: {reason}"
    return " ".join(reason.split())


def explain(model: ir.Model, uses: tuple[FamilyUse, ...], disabled: dict[str, str]) -> list[NotFused]:
    """Unfused candidates of the families a target ``uses`` in the fused ``model`` (which is left
    unchanged); ``disabled``: the families that were off, with why."""
    disabled = dict(disabled)
    for use in uses:
        problem = opset_problem(model, use.min_opset)
        if problem and use.name not in disabled:
            disabled[use.name] = problem
    families = [get_family(use.name) for use in uses]
    records: list[NotFused] = []
    todo = [f for f in families if _anchors(model, f)]
    if not todo:
        return records
    clone = model.clone()
    for family in todo:
        anchors = _anchors(clone, family)
        if not anchors:
            continue
        if family.name in disabled:
            records += [
                NotFused(
                    family.name, n.name or "", n.op_type, None, f"family disabled: {disabled[family.name]}"
                )
                for n in anchors
            ]
            continue
        explained: dict[str, NotFused] = {}
        for step in family.steps:
            for rule_set in step.rules() if step.explain else ():
                tracer = _Tracer()
                rule_set.apply_to_model(clone, tracer=tracer)
                anchor_ids = {id(n) for n in _anchors(clone, family)}
                for _score, rule, info in tracer.best.values():
                    if not _reportable(info, anchor_ids):
                        continue
                    root = info.root_node
                    record = NotFused(
                        family.name,
                        root.name or "",
                        root.op_type,
                        rule,
                        _reason(info),
                        len(info.match_result.nodes),
                    )
                    previous = explained.get(record.node)
                    if previous is None or record.matched_nodes >= previous.matched_nodes:
                        explained[record.node] = record
                rule_set.apply_to_model(clone)
            if step.shape_inference:
                common_passes.ShapeInferencePass(check_type=False, strict_mode=False)(clone)
        if not explained:
            explained = {
                n.name or "": NotFused(
                    family.name, n.name or "", n.op_type, None, "no rule of the family matched any part of it"
                )
                for n in anchors
            }
        records += explained.values()
    return records
