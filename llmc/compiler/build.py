"""``llmc.build``: load, run the target's pipeline, save, verify against the original, record.

The final artifact is always checked against the source model in ONNX Runtime with every ORT
graph rewrite off (ORT_DISABLE_ALL), on seeded (or given) inputs; a mismatch beyond the
tolerance fails the build instead of shipping a model whose answers changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from llmc.compiler.artifact import MODEL_FILE, Artifact, write_manifest
from llmc.compiler.engine import EngineSettings
from llmc.compiler.manifest import versions
from llmc.errors import LlmcError
from llmc.fp16.convert import Fp16Options
from llmc.int8.quantize import QuantizeOptions
from llmc.model import io as model_io
from llmc.model.compare import compare_outputs
from llmc.model.feeds import feeds_for, resolve_shapes
from llmc.model.values import count_nodes
from llmc.passes.instruments import (
    DifferentialInstrument,
    DumpIRInstrument,
    Instrument,
    VerifyEachInstrument,
)
from llmc.passes.manager import PassManager
from llmc.passes.pipeline import default_pipeline, parse_pipeline
from llmc.passes.registry import TARGETS, PassOptions

PRECISIONS = ("fp32", "fp16", "int8")
# Default output tolerance (max abs error over each output's scale) per precision; int8 is
# judged by its accuracy budget instead.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-4}
GPU_DEVICES = ("cuda", "tensorrt")
ModelLike = str | Path | onnx.ModelProto | ir.Model


def build(
    model: ModelLike,
    target: str = "ort",
    precision: str = "fp32",
    output: str | Path | None = None,
    *,
    shapes: dict[str, tuple[int, ...]] | None = None,
    inputs: str | Path | dict[str, np.ndarray] | None = None,
    passes: str | None = None,
    disable_passes: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
    threads: int = 0,
    verify_each: bool = False,
    diff_each: bool = False,
    dump_ir_after: list[str] | tuple[str, ...] = (),
    dump_dir: str | Path | None = None,
    tolerance: float | None = None,
    external_data: bool | None = None,
    seed: int = 0,
    options: PassOptions | None = None,
    fusions: dict[str, bool] | None = None,
    calibration_data: str | Path | None = None,
    tokenizer: str | Path | None = None,
    quantization: QuantizeOptions | None = None,
    no_engine: bool = False,
    fp16: Fp16Options | None = None,
    engine: EngineSettings | None = None,
    alignment: int = 64,
    log: Callable[[str], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Artifact:
    """Compile ``model`` for ``target`` into the directory ``output``; return the Artifact.

    ``fusions`` turns fusion families on/off against the target's measured defaults
    (``{"skip_layer_norm": True}``); see ``llmc passes`` for their names.
    ``precision="int8"`` calibrates on ``calibration_data`` (a directory of .npz feeds, one
    stacked .npz, or a text file with ``tokenizer``) under ``quantization`` options; the
    artifact is then checked against the fp32 graph on held-out samples (cosine budget) instead
    of the exact tolerance. ``precision="fp16"`` (``trt``, or ``ort`` on a GPU device) converts
    to float16 with float32 islands (``fp16`` options) and checks it on a CPU emulation of
    float16 against ``tolerance`` (default 1e-2); ``trt`` int8 runs what is not int8 in float16.
    ``target="trt"`` builds a TensorRT engine (``engine`` settings: profiles, workspace, caches)
    into ``model.plan``, signed in the manifest; ``no_engine=True`` writes only the
    TensorRT-ready ONNX. ``alignment`` is the arena alignment of the memory plan recorded
    in the manifest's ``memory`` (planned for the shapes of the verification inputs).
    """
    from llmc.backends.ort import REFERENCE_CONFIG, OrtRunner, SessionConfig, create_session, run_model
    from llmc.backends.ort.loader import SLOWER_ORT_FUSIONS
    from llmc.fp16.check import artifact_feeds
    from llmc.passes.fusion import enabled_families, explain, fused_op_counts
    from llmc.version import __version__

    log = log or (lambda _msg: None)
    _check_target(target, precision, no_engine, device)
    if tolerance is None:
        tolerance = TOLERANCE[precision]
    if precision == "int8" and calibration_data is None:
        raise LlmcError(
            "--precision int8 needs --calibration-data PATH (a directory of .npz feeds, one .npz with "
            "stacked samples, or a text file with --tokenizer DIR)"
        )
    engine = engine or EngineSettings()
    session_config = SessionConfig(
        device=device,
        intra_op_num_threads=threads,
        disabled_optimizers=list(SLOWER_ORT_FUSIONS.get(device, [])),
        **(_trt_ep_options(engine) if device == "tensorrt" else {}),
    )
    session_config.providers()  # fail now, not after compiling, if the device is missing

    enabled, disabled = enabled_families(target, device, fusions)
    options = dataclasses.replace(
        options or PassOptions(),
        target=target,
        device=device,
        fusions=tuple(sorted((fusions or {}).items())),
    )

    ir_model, source = _load_source(model)
    out_dir = Path(output) if output is not None else _default_output(source, target)
    pipeline = (parse_pipeline(passes, target) if passes else default_pipeline(target)).without(
        list(disable_passes)
    )

    if target == "trt" and not no_engine:
        engine.preflight(ir_model)  # a profile for every dynamic input (_check_target found TensorRT)
    concrete, assumed = resolve_shapes(ir_model, shapes)
    feeds = feeds_for(ir_model, concrete, inputs, seed)
    if alignment < 1:
        raise LlmcError(f"--alignment must be at least 1 byte, not {alignment}")
    memory_shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    options = dataclasses.replace(
        options, memory_shapes=(tuple(memory_shapes.items()),), memory_alignment=alignment
    )
    log(f"reference run of the source model ({_describe_shapes(feeds)})")
    reference = _reference_outputs(model, ir_model, feeds, REFERENCE_CONFIG)
    model_io.release_freed_memory()
    nodes_before = count_nodes(ir_model)
    fused_before = fused_op_counts(ir_model, target)

    instruments: list[Instrument] = []
    if verify_each:
        instruments.append(VerifyEachInstrument())
    if dump_ir_after:
        if dump_dir is None:
            raise LlmcError("--dump-ir-after needs a directory: --dump-ir-after NAME DIR")
        for name in dump_ir_after:
            if name != "all" and name not in pipeline.names():
                raise LlmcError(
                    f"--dump-ir-after '{name}' is not in the pipeline ({pipeline}); use a pass "
                    "from it or 'all'"
                )
        instruments.append(DumpIRInstrument(dump_ir_after, dump_dir))
    if diff_each:
        instruments.append(DifferentialInstrument(feeds, tolerance, reference))
    manager = PassManager(pipeline, options, instruments)
    log(f"pipeline {pipeline}")
    start = time.perf_counter()
    manager.run(ir_model)
    model_io.normalize(ir_model)
    compile_seconds = time.perf_counter() - start
    fused_after = fused_op_counts(ir_model, target)
    # Unfused candidates of every family of the target (disabled ones say why they are off).
    not_fused = explain(ir_model, _families(target), disabled, target) if "fuse" in pipeline.names() else []
    quant_report = None
    fp32_comparison = None
    if precision == "int8":
        # The passes must be exact before quantization changes the numbers on purpose.
        fp32_comparison = compare_outputs(reference, run_model(ir_model, feeds, REFERENCE_CONFIG), tolerance)
        _fail_on_mismatch(fp32_comparison)
        model_io.release_freed_memory()
        ir_model, quant_report = _quantize(
            ir_model, target, calibration_data, tokenizer, quantization or QuantizeOptions(threads=threads),
            feeds, out_dir, log, progress,
        )
        model_io.release_freed_memory()
    fp16_report = None
    if precision == "fp16" or (precision == "int8" and target == "trt"):
        converted = _float16(ir_model, feeds, fp16, precision, tolerance, log)
        if fp32_comparison is None:
            # The conversion's own float32 run tells whether the passes were exact.
            fp32_comparison = compare_outputs(reference, converted.float32_outputs, tolerance)
            _fail_on_mismatch(fp32_comparison)
        ir_model, fp16_report = converted.model, converted.report
    memory = _plan_memory(ir_model, pipeline, options, manager, memory_shapes, feeds, precision, log)
    if memory.get("order_changed"):
        # ONNX Runtime's default order is its own depth-first walk; this one runs the file's.
        session_config = dataclasses.replace(session_config, execution_order="priority_based")

    out_dir.mkdir(parents=True, exist_ok=True)
    files = model_io.save_model(ir_model, out_dir / MODEL_FILE, external_data=external_data)
    log("verifying the artifact against the source model")
    saved = model_io.load_model(out_dir / MODEL_FILE)
    candidate = OrtRunner(create_session(out_dir / MODEL_FILE, REFERENCE_CONFIG, saved)).run(
        artifact_feeds(saved, feeds)
    )
    if precision == "fp16":
        # ONNX Runtime's CPU run of a float16 graph keeps float32 between nodes; the emulation
        # rounds (and overflows) where a GPU would, so it is the one the tolerance judges.
        comparison = compare_outputs(reference, _run_emulated(saved, feeds), tolerance)
        _fail_on_mismatch(comparison)
        fp16_report["check"]["ort_cpu"] = compare_outputs(reference, candidate, tolerance).summary()
        fp16_report["check"]["emulated"] = comparison.summary()
    elif fp32_comparison is None:
        comparison = compare_outputs(reference, candidate, tolerance)
        _fail_on_mismatch(comparison)
    else:
        comparison = fp32_comparison
        bad = [k for k, v in candidate.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        if bad:
            raise LlmcError(f"the int8 model gives NaN/Inf in output '{bad[0]}'; rebuild with --precision fp32")
    # The artifact must also load the way it will be deployed (device, threads, ORT level).
    start = time.perf_counter()
    create_session(out_dir / MODEL_FILE, session_config, saved)
    session_seconds = time.perf_counter() - start

    manifest = {
        "llmc_version": __version__,
        "source": source,
        "target": target,
        "precision": precision,
        "pipeline": str(pipeline),
        "passes": [r.to_dict() for r in manager.records],
        "rewrites": manager.timing.rewrites(),
        "fusions": _fusions(fused_before, fused_after),
        "fused_ops": fused_after,
        "not_fused": [r.to_dict() for r in not_fused],
        "fusion_families": {"enabled": [f.name for f in enabled], "disabled": disabled},
        "nodes": {"before": nodes_before, "after": count_nodes(ir_model)},
        "compile_seconds": round(compile_seconds, 4),
        "memory": memory,
        "shapes": {
            "inputs": {k: list(v.shape) for k, v in feeds.items()},
            "assumed": assumed,
        },
        "verification": {
            **comparison.summary(),
            "passed": True,
            "tolerance": tolerance,
            "reference": "onnxruntime ORT_DISABLE_ALL on the source model",
            "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()},
            "seed": seed if inputs is None else None,
            "outputs": {
                o.name: {
                    "max_abs_error": o.max_abs_error,
                    "max_rel_error": o.max_rel_error,
                    "cosine": o.cosine,
                }
                for o in comparison.outputs
            },
        },
        "artifact": {
            "files": [f.name for f in files],
            "model_sha256": model_io.sha256_file(out_dir / MODEL_FILE),
            "external_data": len(files) > 1,
        },
        "versions": versions(),
        "session": {
            "providers": session_config.providers(),
            "options": session_config.to_dict(),
            "create_seconds": round(session_seconds, 4),
        },
    }
    if quant_report is not None:
        manifest["verification"]["reference"] += (
            " (the fp32 graph before quantization; the int8 artifact is checked by the accuracy "
            "budget in 'quantization')"
        )
        manifest["quantization"] = quant_report
    if fp16_report is not None:
        manifest["fp16"] = fp16_report
        if precision == "fp16":
            manifest["verification"]["reference"] += (
                " (the float16 graph run by its CPU emulation: float32 compute, float16 rounding after "
                "every float16 node)"
            )
    if target == "trt":
        if no_engine:
            manifest["engine"] = {"built": False, "reason": "--no-engine: TensorRT-ready ONNX only",
                                  **engine.requested(ir_model)}
        else:
            log("building the TensorRT engine")
            manifest["engine"] = engine.build(out_dir, ir_model, manifest["artifact"]["model_sha256"], log)
    write_manifest(out_dir, manifest)
    return Artifact(out_dir, manifest)


def _plan_memory(ir_model, pipeline, options, manager, shapes, feeds, precision, log) -> dict[str, Any]:
    """The manifest's ``memory``: the final graph's plan at the build's shapes.

    The ``memory`` pass reorders during the pipeline; an int8 build changed the graph after it,
    so the pass runs once more on the quantized graph.
    """
    from llmc.passes.memory.planner import analyze_memory
    from llmc.passes.memory.reorder import MemoryReorderPass

    stats: dict[str, int] = {}
    skipped = None
    if "memory" in pipeline.names():
        records = [r for r in manager.records if r.name == "memory"]
        stats = dict(records[-1].stats) if records else {}
        if precision == "int8":
            reorder = MemoryReorderPass(options)
            reorder(ir_model)
            stats, skipped = reorder.stats, reorder.skipped
        elif stats.get("skipped"):
            skipped = "the memory pass could not size the graph"
    log("planning memory")
    try:
        analysis = analyze_memory(ir_model, [shapes], alignment=options.memory_alignment, reorder=False, feeds=[feeds])
    except LlmcError as exc:
        return {"error": str(exc), "shapes": {k: list(v) for k, v in shapes.items()}}
    memory = analysis.to_dict()
    memory.pop("shape_sets", None)
    memory.pop("lower_bound_graph_order_bytes", None)  # the final order's: the bound itself
    changed = any(k.startswith("reordered_") for k in stats)
    memory["order_changed"] = changed
    memory["scheduler"] = next((k.removeprefix("reordered_") for k in stats if k.startswith("reordered_")), "graph")
    memory["lower_bound_before_reorder_bytes"] = stats.get("lower_bound_before_bytes", memory["lower_bound_bytes"])
    memory["reordered"] = "memory" in pipeline.names() and skipped is None
    if skipped:
        memory["reorder_skipped"] = skipped
    return memory


def _trt_ep_options(engine: EngineSettings) -> dict[str, Any]:
    """ONNX Runtime's TensorRT EP takes the same profiles and builder settings as --target trt."""
    options: dict[str, Any] = {
        "profiles": {name: [list(p.min), list(p.opt), list(p.max)] for name, p in engine.profiles.items()},
        "trt_builder_optimization_level": engine.optimization_level,
    }
    if engine.workspace_bytes:
        options["trt_max_workspace_size"] = engine.workspace_bytes
    return options


def _float16(ir_model, feeds, options, precision, tolerance, log):
    from llmc.fp16.check import convert_fp16

    log("converting to float16 with float32 islands")
    if precision == "int8":
        # Quantization steps flip under float16 rounding: judge by NaN/Inf and similarity to the
        # int8 graph in float32 (whose accuracy budget was already checked).
        result = convert_fp16(ir_model, feeds, options or Fp16Options(), tolerance=None, layer_tolerance=None,
                              min_cosine=0.999, log=log)
    else:
        result = convert_fp16(ir_model, feeds, options or Fp16Options(), tolerance=tolerance, log=log)
    model_io.release_freed_memory()
    return result


def _run_emulated(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from llmc.backends.ort import run_model
    from llmc.fp16.check import emulation_feeds
    from llmc.fp16.emulate import emulate_float16

    return run_model(emulate_float16(model), emulation_feeds(model, feeds))


def _fail_on_mismatch(comparison) -> None:
    worst = comparison.worst()
    if worst is not None:
        raise LlmcError(
            f"the compiled model changed output '{worst.name}' ({worst.reason}); rebuild with "
            "--diff-each to name the pass, then --disable-pass it"
        )


def _quantize(ir_model, target, calibration_data, tokenizer, options, feeds, out_dir, log, progress):
    from llmc.int8.calibration_data import load_calibration_data
    from llmc.int8.lint import lint
    from llmc.int8.quantize import quantize_model

    ids = feeds.get("input_ids")
    sequence = int(ids.shape[1]) if ids is not None and ids.ndim == 2 else None
    log(f"reading calibration data {calibration_data}")
    samples = load_calibration_data(
        calibration_data, ir_model, tokenizer=tokenizer, sequence_length=sequence,
        limit=options.samples + options.holdout,
    )
    log(f"calibrating on {min(len(samples), options.samples)} samples ({options.method})")
    result = quantize_model(
        ir_model, target, samples, options, stats_path=out_dir / "calibration.json", progress=progress
    )
    problems = lint(result.model, target)
    if problems:
        raise AssertionError(f"int8 graph breaks the {target} Q/DQ rules: {problems[0]}")
    result.report["lint"] = {"rules": target, "passed": True}
    return result.model, result.report


def _check_target(target: str, precision: str, no_engine: bool = False, device: str = "cpu") -> None:
    from llmc.backends.trt.loader import import_tensorrt, tensorrt_available

    if target not in TARGETS:
        raise LlmcError(f"unknown target '{target}'; valid targets: {', '.join(TARGETS)}")
    if precision not in PRECISIONS:
        raise LlmcError(f"unknown precision '{precision}'; valid: {', '.join(PRECISIONS)}")
    if precision == "fp16" and target == "ort" and device not in GPU_DEVICES:
        raise LlmcError(
            "--precision fp16 is for GPUs: use --device cuda or --device tensorrt, or --target trt; "
            "on a CPU use --precision int8"
        )
    if target == "trt" and not no_engine and not tensorrt_available():
        import_tensorrt()  # raises the one line saying what to install


def _load_source(model: ModelLike) -> tuple[ir.Model, dict[str, Any]]:
    if isinstance(model, (str, Path)):
        path = Path(model)
        ir_model = model_io.load_model(path)
        return ir_model, {"path": str(path.resolve()), "sha256": model_io.sha256_file(path)}
    if isinstance(model, ir.Model):
        # Work on a clone (weights shared, never copied) so the caller's model stays as it was.
        ir_model = model.clone()
        model_io.normalize(ir_model)
        return ir_model, {"path": None, "sha256": model_io.ir_sha256(model)}
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString(deterministic=True)
        ir_model = ir.serde.deserialize_model(model)
        model_io.normalize(ir_model)
        return ir_model, {"path": None, "sha256": hashlib.sha256(data).hexdigest()}
    raise LlmcError(
        f"cannot build from {type(model).__name__}: pass a path, onnx.ModelProto or onnx_ir.Model"
    )


def _default_output(source: dict[str, Any], target: str) -> Path:
    if source["path"] is None:
        raise LlmcError("building from an in-memory model needs output=DIR")
    path = Path(source["path"])
    return path.parent / f"{path.stem}.llmc-{target}"


def _reference_outputs(
    model: ModelLike, ir_model: ir.Model, feeds: dict[str, np.ndarray], config: Any
) -> dict[str, np.ndarray]:
    from llmc.backends.ort import OrtRunner, create_session, run_model

    if isinstance(model, (str, Path)):
        # Run the source file itself: ONNX Runtime reads its external data directly.
        session = create_session(Path(model), config, ir_model)
        return OrtRunner(session).run(feeds)
    return run_model(ir_model, feeds, config)


def _families(target: str) -> list:
    from llmc.passes.fusion.families import families_for

    return families_for(target)


def _fusions(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Fused ops the build created: nodes of fused op types gained, by op type."""
    return {op: n - before.get(op, 0) for op, n in sorted(after.items()) if n > before.get(op, 0)}


def _describe_shapes(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k}={'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feeds.items())
