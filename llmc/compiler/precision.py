"""Build stages after the fp32 passes: the precision chain and the memory plan.

Each precision declares its stage (``llmc.spec.precision.Precision.apply``; the mechanics live
in its package: ``llmc.int8``, ``llmc.weight_only``, ``llmc.fp16``); this stage runs the chain
the request names (the requested precision, then the one it leaves the rest of the graph to on
the target), checks that the passes were exact before a stage changes the numbers on purpose,
and runs the validity check after each step.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from llmc.compiler import rounding
from llmc.compiler.cache import BuildCache
from llmc.compiler.stages import Compiled, Log, Precise, Prepared, Progress, fail_on_mismatch, pass_options
from llmc.errors import LlmcError
from llmc.model import io as model_io
from llmc.model.feeds import with_defaults
from llmc.passes.memory.planner import analyze_memory
from llmc.passes.memory.reorder import MemoryReorderPass
from llmc.runtime.ort import REFERENCE_CONFIG, SessionConfig, run_model
from llmc.runtime.ort.errors import compiled_runs
from llmc.spec.precision import Step


def apply_precision(
    prep: Prepared, compiled: Compiled, log: Log, progress: Progress | None, cache: BuildCache | None
) -> Precise:
    """The request's precision chain on the fp32 graph; each step's report is a manifest section."""
    request = prep.request
    result = Precise(compiled.model)
    before = accuracy = None
    for precision in request.chain:
        if precision.quantized and result.fp32_comparison is None:
            # The passes must be exact before quantization changes the numbers on purpose.
            with compiled_runs():
                fp32_outputs = run_model(result.model, prep.feeds, REFERENCE_CONFIG)
            result.fp32_comparison = rounding.compared(prep, compiled.reference, fp32_outputs)
            fail_on_mismatch(result.fp32_comparison)
            model_io.release_freed_memory()
        step = Step(
            result.model, with_defaults(result.model, prep.feeds), compiled.reference, request, request.target,
            prep.tolerance, log, progress,
            prep.work_dir, prep.out_dir, before, prep.prepared.get(precision.name),
            _Calibration(cache, prep) if cache is not None else None, accuracy,
        )
        done = precision.apply(step)
        accuracy = done.accuracy
        if precision.quantized:
            model_io.release_freed_memory()  # the quantizer's sessions and copies
        if done.float32_outputs is not None and result.fp32_comparison is None:
            # The step's own float32 run tells whether the passes were exact.
            result.fp32_comparison = rounding.compared(prep, compiled.reference, done.float32_outputs)
            fail_on_mismatch(result.fp32_comparison)
        result.model = done.model
        if precision.manifest_section is not None and done.report is not None:
            result.reports[precision.manifest_section] = done.report
        if precision.step_name:
            _check_step(compiled, precision.step_name, result.model, "rebuild with --precision fp32 and report it")
        before = precision
    return result


def _check_step(compiled: Compiled, step: str, model, fix: str) -> None:
    validity = compiled.manager.validity
    if validity is not None:
        validity.check_step(step, model, fix)


class _Calibration:
    """The build cache's calibration statistics under this build's key (shared across output
    directories): what ``llmc.int8.precision`` fetches before calibrating and keeps after."""

    def __init__(self, cache: BuildCache, prep: Prepared) -> None:
        self.cache, self.prep = cache, prep

    @functools.cached_property
    def key(self) -> str:
        return calibration_key(self.prep)

    def fetch(self, path: Path) -> bool:
        return self.cache.fetch_calibration(self.key, path)

    def keep(self, path: Path) -> None:
        self.cache.keep_calibration(self.key, path)


def calibration_key(prep: Prepared) -> str:
    """What decides the calibration statistics: the source, the fp32 graph's options, the samples.

    The statistics file also carries its own key (the graph's hash and the samples'), checked by
    the quantizer, so a stale file is recomputed rather than misused.
    """
    from llmc.compiler.cache import digest_key

    request = prep.request
    material = request.key_material()
    settings = request.precision.settings(request)
    samples = getattr(settings, "samples", 0) + getattr(settings, "holdout", 0)
    return digest_key({
        "calibration_statistics": prep.source["sha256"],
        **{k: material[k] for k in ("target", "device", "passes", "disable_passes", "fusions", "shapes",
                                    "calibration_data", "tokenizer")},
        "samples": samples,
    })


def plan_memory(prep: Prepared, compiled: Compiled, precise: Precise, log: Log) -> tuple[dict[str, Any], SessionConfig]:
    """The manifest's ``memory``: the final graph's plan at the build's shapes, and the session
    config that runs the graph in the order the plan chose.

    The ``memory`` pass reorders during the pipeline; an int8/int4 build changed the graph after it,
    so the pass runs once more on the quantized graph.
    """
    names = prep.pipeline.names()
    feeds = with_defaults(precise.model, prep.feeds)
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    stats: dict[str, int] = {}
    skipped = None
    if "memory" in names:
        records = [r for r in compiled.manager.records if r.name == "memory"]
        stats = dict(records[-1].stats) if records else {}
        if prep.request.precision.quantized:
            reorder = MemoryReorderPass(pass_options(prep))
            reorder(precise.model)
            stats, skipped = reorder.stats, reorder.skipped
        elif stats.get("skipped"):
            skipped = "the memory pass could not size the graph"
    log("planning memory")
    try:
        analysis = analyze_memory(
            precise.model, [shapes], alignment=prep.request.alignment, reorder=False, feeds=[feeds]
        )
    except LlmcError as exc:
        return {"error": str(exc), "shapes": {k: list(v) for k, v in shapes.items()}}, prep.session_config
    memory = analysis.to_dict()
    memory.pop("shape_sets", None)
    memory.pop("lower_bound_graph_order_bytes", None)  # the final order's: the bound itself
    reordered = [k.removeprefix("reordered_") for k in stats if k.startswith("reordered_")]
    memory["order_changed"] = bool(reordered)
    memory["scheduler"] = reordered[0] if reordered else "graph"
    memory["lower_bound_before_reorder_bytes"] = stats.get("lower_bound_before_bytes", memory["lower_bound_bytes"])
    memory["reordered"] = "memory" in names and skipped is None
    if skipped:
        memory["reorder_skipped"] = skipped
    session_config = prep.session_config
    if reordered:
        # ONNX Runtime's default order is its own depth-first walk; this one runs the file's.
        session_config = dataclasses.replace(session_config, execution_order="priority_based")
    return memory, session_config
