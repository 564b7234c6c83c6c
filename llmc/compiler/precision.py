"""Build stages after the fp32 passes: precision (int8, int4, fp16) and the memory plan.

The mechanics live in the feature packages (``llmc.int8``, ``llmc.int4``, ``llmc.fp16``, ``llmc.passes.memory``);
these stages decide when each runs and check that the passes were exact before a precision
step changes the numbers on purpose.
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any

from llmc.compiler.cache import BuildCache
from llmc.compiler.stages import (
    Compiled,
    Log,
    Precise,
    Prepared,
    Progress,
    compiled_runs,
    fail_on_mismatch,
    pass_options,
)
from llmc.errors import LlmcError
from llmc.fp16.stage import convert_for_build
from llmc.int4.stage import quantize_int4_for_build
from llmc.int8.stage import quantize_for_build
from llmc.model import io as model_io
from llmc.model.compare import compare_outputs
from llmc.model.files import CALIBRATION_FILE
from llmc.passes.memory.planner import analyze_memory
from llmc.passes.memory.reorder import MemoryReorderPass
from llmc.runtime.ort import REFERENCE_CONFIG, SessionConfig, run_model


def apply_precision(
    prep: Prepared, compiled: Compiled, log: Log, progress: Progress | None, cache: BuildCache | None
) -> Precise:
    """int8 (calibrated, within the accuracy budget) or int4 (weight-only, within its top-1
    agreement with fp32), then fp16 for ``fp16`` and for trt int8."""
    options = prep.options
    result = Precise(compiled.model)
    if options.precision in ("int8", "int4"):
        # The passes must be exact before quantization changes the numbers on purpose.
        with compiled_runs():
            fp32_outputs = run_model(result.model, prep.feeds, REFERENCE_CONFIG)
        result.fp32_comparison = compare_outputs(compiled.reference, fp32_outputs, prep.tolerance)
        fail_on_mismatch(result.fp32_comparison)
        model_io.release_freed_memory()
        if not options.weight_only_build:
            result.model, result.quantization = _quantize(prep, result.model, log, progress, cache)
        else:
            with compiled_runs():
                result.model, result.quantization = quantize_int4_for_build(
                    result.model, prep.feeds, options.effective_int4, options.seed, log, prep.eval_ids
                )
        model_io.release_freed_memory()
        step = f"{options.precision} quantization"
        _check_step(compiled, step, result.model, "rebuild with --precision fp32 and report it")
    if options.precision == "fp16" or (options.precision == "int8" and options.target == "trt"):
        converted = convert_for_build(result.model, prep.feeds, options.fp16, options.precision, prep.tolerance, log)
        if result.fp32_comparison is None:
            # The conversion's own float32 run tells whether the passes were exact.
            result.fp32_comparison = compare_outputs(compiled.reference, converted.float32_outputs, prep.tolerance)
            fail_on_mismatch(result.fp32_comparison)
        result.model, result.fp16 = converted.model, converted.report
        _check_step(compiled, "the float16 conversion", result.model, "rebuild with --precision fp32 and report it")
    return result


def _check_step(compiled: Compiled, step: str, model, fix: str) -> None:
    validity = compiled.manager.validity
    if validity is not None:
        validity.check_step(step, model, fix)


def _quantize(prep: Prepared, model, log: Log, progress: Progress | None, cache: BuildCache | None):
    """INT8 with the calibration statistics shared across output directories through the cache."""
    stats_path = prep.work_dir / CALIBRATION_FILE
    key = None
    if cache is not None:
        key = calibration_key(prep)
        if cache.fetch_calibration(key, stats_path):
            log("calibration statistics from the cache")
    previous = prep.out_dir / CALIBRATION_FILE  # a rebuild into the same -o (the quantizer checks its key)
    if not stats_path.exists() and previous.is_file() and not previous.is_symlink():
        shutil.copyfile(previous, stats_path)
    model, report = quantize_for_build(
        model, prep.options.target, prep.options.calibration_data, prep.options.tokenizer,
        prep.options.effective_quantization, prep.feeds, stats_path, log, progress,
    )
    if cache is not None and key is not None:
        cache.keep_calibration(key, stats_path)
    return model, report


def calibration_key(prep: Prepared) -> str:
    """What decides the calibration statistics: the source, the fp32 graph's options, the samples.

    The statistics file also carries its own key (the graph's hash and the samples'), checked by
    the quantizer, so a stale file is recomputed rather than misused.
    """
    from llmc.compiler.cache import digest_key

    options = prep.options
    material = options.key_material()
    return digest_key({
        "calibration_statistics": prep.source["sha256"],
        **{k: material[k] for k in ("target", "device", "passes", "disable_passes", "fusions", "pass_options",
                                    "shapes", "calibration_data", "tokenizer")},
        "samples": options.effective_quantization.samples + options.effective_quantization.holdout,
    })


def plan_memory(prep: Prepared, compiled: Compiled, precise: Precise, log: Log) -> tuple[dict[str, Any], SessionConfig]:
    """The manifest's ``memory``: the final graph's plan at the build's shapes, and the session
    config that runs the graph in the order the plan chose.

    The ``memory`` pass reorders during the pipeline; an int8/int4 build changed the graph after it,
    so the pass runs once more on the quantized graph.
    """
    names = prep.pipeline.names()
    shapes = {k: tuple(v.shape) for k, v in prep.feeds.items()}
    stats: dict[str, int] = {}
    skipped = None
    if "memory" in names:
        records = [r for r in compiled.manager.records if r.name == "memory"]
        stats = dict(records[-1].stats) if records else {}
        if prep.options.precision in ("int8", "int4"):
            reorder = MemoryReorderPass(pass_options(prep))
            reorder(precise.model)
            stats, skipped = reorder.stats, reorder.skipped
        elif stats.get("skipped"):
            skipped = "the memory pass could not size the graph"
    log("planning memory")
    try:
        analysis = analyze_memory(
            precise.model, [shapes], alignment=prep.options.alignment, reorder=False, feeds=[prep.feeds]
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
