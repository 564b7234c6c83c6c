"""Which MatMuls leave int4 when the gate fails, in what order.

Nodes are ranked by the relative error of their weight's 4-bit blocks, ``||W - Q(W)|| / ||W||``
(``Q``: the block minimum/range quantizer at the build's block size; a proxy for every method,
computed once from the fp32 weights). The steps: int4 at accuracy level 0 (float32 activations)
when the build asked for another level; the LM head float when it was quantized; then more of the
worst-ranked nodes in 8-bit blocks: an eighth, a quarter, half, all of them. The first step whose
graph passes the gate is the artifact; the manifest lists every node's precision.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from llmc.weight_only.blocks import q4_minmax
from llmc.weight_only.options import Int4Options
from llmc.weight_only.quantize import (
    ACCURATE_INT4,
    Settings,
    constant_weight,
    float_reason,
    head_nodes,
    node_name,
    node_precisions,
)

FRACTIONS = (0.125, 0.25, 0.5, 1.0)


class FallbackPlan:
    """The override steps, worst-ranked int4 nodes first."""

    def __init__(self, ranked: list[str], heads: list[str], body: str = "int4", accuracy_level: int = 0) -> None:
        self.ranked, self.heads = ranked, heads
        # An int8 body has nowhere to go but float for its worst nodes.
        self.target = "int8" if body == "int4" else "float"
        base: dict[str, str] = {}
        self.steps = []
        if body == "int4" and accuracy_level != 0:  # first float32 activations, the cheapest fix
            base = {name: ACCURATE_INT4 for name in ranked}
            self.steps.append(base)
        if heads:  # then the LM head float
            base = {**base, **{name: "float" for name in heads}}
            self.steps.append(base)
        self.steps += [{**base, **self._step(fraction)} for fraction in FRACTIONS]
        self.index = 0

    def _step(self, fraction: float) -> dict[str, str]:
        count = max(1, round(fraction * len(self.ranked))) if self.ranked else 0
        return {name: self.target for name in self.ranked[:count]}

    def next(self, current: dict[str, str]) -> dict[str, str] | None:
        """The next step that changes something beyond ``current``, or None when none is left."""
        while self.index < len(self.steps):
            step = self.steps[self.index]
            self.index += 1
            if step != current:
                return step
        return None


def fallback_plan(model: ir.Model, options: Int4Options, settings: Settings | None = None) -> FallbackPlan:
    """Rank ``model``'s (fp32) int4 candidates by relative 4-bit weight error; ``settings``: the
    per-node choices (a node chosen at another accuracy level makes level 0 the first step)."""
    precisions = node_precisions(model, options)
    heads = head_nodes(model)
    errors: dict[str, float] = {}
    head_names = []
    cache: dict[int, float] = {}
    for node in model.graph:
        if node.op_type != "MatMul" or node.domain != "":
            continue
        name = node_name(node)
        if id(node) in heads and precisions[name] != "float":
            head_names.append(name)
        if precisions[name] != options.body or float_reason(node, "int4", options.block) is not None:
            continue
        weight, transposed = constant_weight(node)  # type: ignore[misc]
        if id(weight) not in cache:
            array = weight.const_value.numpy()
            kn = array.T if transposed else array
            restored = q4_minmax(kn, options.block).dequantize()
            cache[id(weight)] = float(np.linalg.norm(kn - restored) / max(float(np.linalg.norm(kn)), 1e-30))
        errors[name] = cache[id(weight)]
    ranked = sorted(errors, key=lambda name: -errors[name])
    levels = max([options.level, *(level for _, level in (settings or {}).values())])
    return FallbackPlan(ranked, head_names, options.body, levels)
