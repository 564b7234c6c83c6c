"""``--precision fp16``: the FP16 pass plus a numeric check that moves failing layers to float32.

The check runs the float32 graph and the float16 graph's faithful CPU emulation
(``llmc.fp16.emulate``) on the build's inputs and compares every intermediate value
by name. The graph is cut into *layers* at its normalization nodes (a transformer layer is two:
attention and MLP). The first layer with a NaN/Inf the float32 graph does not have, or whose
values drift more than ``layer_tolerance`` (max abs error over the value's scale), moves back to
float32 and the conversion runs again; when every layer is within budget but an output still
misses ``tolerance``, the layer whose error jumps most goes back. Each round's finding is kept in
the report, so the manifest says which layers run in float32 and why.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import onnx_ir as ir

from llmc.errors import LlmcError
from llmc.fp16.convert import (
    FLOAT,
    HALF,
    HEAVY_OPS,
    NORM_OPS,
    Float16Pass,
    Fp16Options,
    ensure_types,
    float16_counts,
    node_key,
)
from llmc.fp16.emulate import emulate_float16
from llmc.model.compare import Comparison, compare_outputs
from llmc.spec.precision import Accuracy


@dataclasses.dataclass
class Fp16Result:
    model: ir.Model
    report: dict[str, Any]
    float32_outputs: dict[str, np.ndarray]  # the input graph's outputs on ``feeds``


@dataclasses.dataclass
class LayerError:
    layer: int
    error: float  # max over the layer's values of max|fp16 - fp32| / max|fp32|
    nonfinite: str | None  # a value that is NaN/Inf only in float16
    worst: str | None  # the value with the largest error


def convert_fp16(
    model: ir.Model,
    feeds: dict[str, np.ndarray],
    options: Fp16Options | None = None,
    *,
    tolerance: float | None = 1e-2,
    layer_tolerance: float | None = 5e-2,
    min_cosine: float = 0.0,
    accuracy: Accuracy | None = None,
    max_rounds: int = 8,
    log: Callable[[str], None] | None = None,
) -> Fp16Result:
    """Convert the (float32, optimized) ``model`` to float16 with float32 islands, checked on ``feeds``.

    ``tolerance=None`` and ``layer_tolerance=None`` check only NaN/Inf and ``min_cosine`` per
    output: an int8 graph's quantization steps flip under float16 rounding by design, so its
    outputs are judged by similarity, not by an elementwise bound. ``accuracy`` (the
    quantization's budget on its held-out samples) judges the emulated float16 graph too: while it
    fails, the layer whose drift jumps most goes back to float32.
    """
    log = log or (lambda _msg: None)
    options = options or Fp16Options()
    ensure_types(model)
    layers = layer_of_nodes(model)
    outputs = [v.name for v in model.graph.outputs]
    compared = {name for names in layers.values for name in names} | set(outputs)
    reference: dict[str, np.ndarray] | None = None
    forced = dict(options.forced)
    rounds: list[dict[str, Any]] = []
    judged: dict[str, Any] | None = None
    no_drift = np.inf if layer_tolerance is None else layer_tolerance
    for _ in range(max_rounds + 1):
        candidate = emulated = None  # the last round's graphs go before this round's come
        if reference is None:
            log("float16: float32 values of every node")
            reference = run_values(model, feeds, compared)
            float32_outputs = {k: reference[k] for k in outputs}
        candidate = model.clone()
        fp16 = Float16Pass(dataclasses.replace(options, forced=tuple(forced.items())))
        fp16(candidate)
        log(f"float16: checking {len(layers.members)} layers on the CPU emulation")
        emulated = emulate_float16(candidate)
        values = run_values(emulated, emulation_feeds(candidate, feeds), compared)
        errors = layer_errors(layers, reference, values)
        comparison = compare_outputs(
            {k: reference[k] for k in outputs}, {k: values[k] for k in outputs},
            np.inf if tolerance is None else tolerance,
        )
        values = None
        outputs_pass = comparison.passed and comparison.cosine_min >= min_cosine
        bad = _layer_to_fall_back(errors, layers, forced, True, no_drift)  # NaN/Inf or drift first
        if bad is None and outputs_pass and accuracy is not None:
            reference = None  # room for the judgement's two sessions; run again if a round follows
            judged = _judge(accuracy, emulated, candidate, log)
            outputs_pass = bool(judged["met"])
        if bad is None and not outputs_pass:
            bad = _layer_to_fall_back(errors, layers, forced, False, no_drift)
        if bad is None:
            if outputs_pass:
                break
            raise LlmcError(_failure(comparison, judged, min_cosine))
        missed = "the held-out cosine missed the budget" if judged and not judged["met"] else "outputs missed the tolerance"
        why = _finding(bad, outputs_pass, missed)
        rounds.append({"layer": bad.layer, "finding": why, "nodes": len(layers.members[bad.layer])})
        log(f"float16: layer {bad.layer} back to float32 ({why})")
        for key in layers.members[bad.layer]:
            forced.setdefault(key, f"numeric check: its layer {bad.layer} {why}")
    else:
        raise LlmcError(
            f"float16 still fails after moving {max_rounds} layers to float32; rebuild with "
            "--precision fp32"
        )
    check = {
        "layers": len(layers.members),
        "layer_tolerance": layer_tolerance,
        "tolerance": tolerance,
        "min_cosine": min_cosine or None,
        "worst_layer_error": max((e.error for e in errors), default=0.0),
        "outputs_vs_float32_graph": comparison.summary(),
        **({"accuracy": judged} if judged is not None else {}),
        "emulation": "float32 compute, float16 rounding after every float16 node (CPU, ONNX Runtime)",
    }
    return Fp16Result(candidate, _report(candidate, fp16, rounds, check, options), float32_outputs)


def _judge(accuracy: Accuracy, emulated: ir.Model, candidate: ir.Model, log: Callable[[str], None]) -> dict[str, Any]:
    """The quantization's accuracy check of the float16 ``candidate``, run by its CPU emulation."""
    log("float16: the accuracy budget on held-out samples (CPU emulation)")
    judged = accuracy(emulated, functools.partial(emulation_feeds, candidate))
    if judged.get("holdout"):
        log(f"float16: held-out cosine mean {judged['cosine_mean']:.5f} (budget {judged['budget']})")
    return judged


def _failure(comparison: Comparison, judged: dict[str, Any] | None, min_cosine: float) -> str:
    fix = "rebuild with --precision fp32 or name nodes with --keep-fp32"
    if comparison.passed and judged is not None and not judged["met"]:
        return (
            f"float16 takes the quantized graph below its accuracy budget (held-out cosine mean "
            f"{judged['cosine_mean']:.5f} < {judged['budget']}) even with every layer that drifts in float32; {fix}"
        )
    worst = comparison.worst() or min(comparison.outputs, key=lambda o: o.cosine)
    reason = worst.reason or f"cosine {worst.cosine:.5f} < {min_cosine}"
    return f"float16 changes output '{worst.name}' ({reason}) even with every layer that drifts in float32; {fix}"


def _report(
    candidate: ir.Model, fp16: Float16Pass, rounds: list[dict[str, Any]], check: dict[str, Any], options: Fp16Options
) -> dict[str, Any]:
    return {
        "nodes": float16_counts(candidate),
        "fp32_islands": _islands(fp16.decisions),
        "fallback": rounds,
        "check": check,
        "weights": {k: fp16.stats[k] for k in ("weights_fp16", "clamped", "flushed")},
        "casts": fp16.stats["casts"],
        "io_fp16": options.io_fp16,
        "fp16_logits": options.fp16_head,
    }


def _finding(bad: LayerError, outputs_pass: bool, missed: str) -> str:
    if bad.nonfinite:
        return f"gave NaN/Inf in '{bad.nonfinite}'"
    if outputs_pass:
        return f"drifted {bad.error:.3g} in '{bad.worst}'"
    return f"drifted {bad.error:.3g} in '{bad.worst}' while {missed}"


def _islands(decisions: dict[str, str]) -> dict[str, Any]:
    """Float32 nodes grouped by reason, with a few names each (the full list can be long)."""
    by_reason: dict[str, list[str]] = {}
    for node, why in decisions.items():
        by_reason.setdefault(why, []).append(node)
    return {why: {"count": len(nodes), "nodes": nodes[:8]} for why, nodes in sorted(by_reason.items())}


# --- layers ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Layers:
    of: dict[str, int]  # node key -> layer
    members: list[list[str]]  # layer -> node keys
    values: list[list[str]]  # layer -> float values it computes from the graph's inputs


def layer_of_nodes(model: ir.Model) -> Layers:
    """Cut the graph (in order) before each normalization: one layer per attention / MLP block.

    A graph without two normalizations is cut before each MatMul/Gemm instead. A layer's values
    are the activations it computes; values of weights alone (an int8 weight's DequantizeLinear:
    GPT-2 has 340 MB of them) are left out, their float16 rounding shows in the activations
    that read them.
    """
    nodes = list(model.graph)
    activations = _from_inputs(model.graph)
    cuts = {n for n in nodes if n.op_type in NORM_OPS or n.op_type == "ReduceMean"}
    if len(cuts) < 2:
        cuts = {n for n in nodes if n.op_type in HEAVY_OPS}
    layer = 0
    of: dict[str, int] = {}
    members: list[list[str]] = [[]]
    values: list[list[str]] = [[]]
    for node in nodes:
        if node in cuts and members[layer]:
            layer += 1
            members.append([])
            values.append([])
        of[node_key(node)] = layer
        members[layer].append(node_key(node))
        values[layer].extend(o.name for o in node.outputs if o.dtype == FLOAT and o.name and o in activations)
    return Layers(of, members, values)


def _from_inputs(graph: ir.Graph) -> set[ir.Value]:
    """The values computed from the graph's inputs (a node with subgraphs counts as reading them)."""
    found = {v for v in graph.inputs if not v.is_initializer()}
    for node in graph:
        reads_subgraph = any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())
        if reads_subgraph or any(v in found for v in node.inputs if v is not None):
            found.update(node.outputs)
    return found


def layer_errors(layers: Layers, reference: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> list[LayerError]:
    errors = []
    for i, names in enumerate(layers.values):
        worst, worst_name, nonfinite = 0.0, None, None
        for name in names:
            if name not in reference or name not in values:
                continue
            ref = reference[name].astype(np.float64)
            got = values[name].astype(np.float64)
            if ref.shape != got.shape:
                continue
            ok = np.isfinite(ref)
            if nonfinite is None and not np.isfinite(got[ok]).all():
                nonfinite = name
            both = ok & np.isfinite(got)
            if not both.any():
                continue
            scale = float(np.abs(ref[both]).max())
            err = float(np.abs(ref[both] - got[both]).max()) / scale if scale > 0 else 0.0
            if err > worst:
                worst, worst_name = err, name
        errors.append(LayerError(i, worst, nonfinite, worst_name))
    return errors


def _layer_to_fall_back(
    errors: list[LayerError], layers: Layers, forced: dict[str, str], outputs_pass: bool, layer_tolerance: float
) -> LayerError | None:
    def movable(e: LayerError) -> bool:
        return any(k not in forced for k in layers.members[e.layer])

    for e in errors:
        if movable(e) and (e.nonfinite or e.error > layer_tolerance):
            return e
    if outputs_pass:
        return None
    previous, best, best_jump = 0.0, None, 0.0
    for e in errors:
        jump = e.error - previous
        previous = max(previous, e.error)
        if movable(e) and jump > best_jump:
            best, best_jump = e, jump
    return best


# --- running every value ------------------------------------------------------------------------


def run_values(
    model: ir.Model, feeds: dict[str, np.ndarray], names: Collection[str] | None = None
) -> dict[str, np.ndarray]:
    """Every named float value of ``model`` (only those in ``names``, if given) and its outputs,
    by one ONNX Runtime run."""
    from llmc.runtime.ort import run_model

    probe = model.clone()
    graph = probe.graph
    present = {v.name for v in graph.outputs}
    for node in graph:
        for out in node.outputs:
            wanted = names is None or out.name in names
            if out.name and wanted and out.dtype in (FLOAT, HALF) and out.name not in present:
                graph.outputs.append(out)
                present.add(out.name)
    return run_model(probe, feeds)


def emulation_feeds(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float32 feeds for the emulation: inputs the graph takes in float16 are rounded to it first."""
    half = {v.name for v in model.graph.inputs if v.dtype == HALF}
    return {k: (v.astype(np.float16).astype(np.float32) if k in half else v) for k, v in feeds.items()}


def artifact_feeds(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feeds for the float16 graph itself: float16 where its inputs are float16."""
    half = {v.name for v in model.graph.inputs if v.dtype == HALF}
    return {k: (v.astype(np.float16) if k in half else v) for k, v in feeds.items()}
