"""The build's stages, in order: prepare, passes, precision, memory, verify, write.

Each stage is a function from a typed input to a typed output; ``llmc.compiler.build`` runs them
in sequence (and the build cache sits between ``prepare`` and the rest). The final artifact is
always checked against the source model in ONNX Runtime with every ORT graph rewrite off
(ORT_DISABLE_ALL), on seeded (or given) inputs; a mismatch beyond the tolerance fails the build
instead of shipping a model whose answers changed.
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

from llmc.compiler.request import BuildRequest, output_dir
from llmc.errors import LlmcError
from llmc.model import io as model_io
from llmc.model import sparsity
from llmc.model.compare import Comparison, check_finite_reference
from llmc.model.feeds import CachePrefill, cache_prefill, feeds_for, with_computed_cache
from llmc.model.values import count_nodes
from llmc.passes.fusion import enabled_families, explain, fused_op_counts
from llmc.passes.instruments import DifferentialInstrument, DumpIRInstrument, Instrument, VerifyEachInstrument
from llmc.passes.manager import PassManager
from llmc.passes.options import PassOptions
from llmc.passes.pipeline import Pipeline, parse_pipeline
from llmc.runtime.ort import REFERENCE_CONFIG, OrtRunner, SessionConfig, create_session, run_model
from llmc.runtime.ort.errors import run_context
from llmc.runtime.ort.loader import SLOWER_ORT_FUSIONS
from llmc.spec.target import FamilyUse
from llmc.spec.task import task_shapes

ModelLike = str | Path | onnx.ModelProto | ir.Model
Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class Prepared:
    """``prepare``: the loaded source, where the artifact goes, and the inputs it is judged on."""

    request: BuildRequest
    model: ir.Model
    source: dict[str, Any]
    source_model: ModelLike
    out_dir: Path
    pipeline: Pipeline
    session_config: SessionConfig
    feeds: dict[str, np.ndarray]
    assumed: dict[str, Any]
    enabled_fusions: list[FamilyUse]
    disabled_fusions: dict[str, str]
    # Tokens of the seeded prefill that computed a decoder's verification KV cache (None: none).
    cache_prefill_tokens: int | None = None
    # Where the build writes: a private directory beside out_dir, moved into place when verified.
    work_dir: Path | None = None
    # What each precision's preflight read before compiling (weight-only: --eval-text's token ids).
    prepared: dict[str, Any] = dataclasses.field(default_factory=dict)
    # fp32's rounding floor, measured when a comparison misses the tolerance (llmc.compiler.rounding).
    rounding: dict[str, float] | None = None

    @property
    def tolerance(self) -> float:
        return self.request.tolerance


@dataclasses.dataclass
class Compiled:
    """``run_passes``: the fp32 graph after the pipeline, with what the passes did."""

    model: ir.Model
    reference: dict[str, np.ndarray]
    manager: PassManager
    nodes_before: int
    fused_before: dict[str, int]
    fused_after: dict[str, int]
    not_fused: list[Any]
    seconds: float
    # 2:4 sparse matrix-product weights of the source (llmc.model.sparsity), before any pass.
    sparsity_before: sparsity.SparsityReport | None = None


@dataclasses.dataclass
class Precise:
    """``apply_precision``: the graph at the requested precision and its reports."""

    model: ir.Model
    reports: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # manifest sections
    fp32_comparison: Comparison | None = None  # the passes' exactness, when a precision step ran it


@dataclasses.dataclass
class Verified:
    """``verify``: the saved model file(s) and how they compare with the source model."""

    files: list[Path]
    comparison: Comparison
    model_sha256: str
    session_config: SessionConfig
    session_seconds: float
    hashes: dict[str, str]  # sha256 of each file in ``files``, taken before verifying them
    padding: dict[str, Any] | None = None  # llmc.runtime.padding.probe: may the runtime skip padding?
    logits_to_keep: dict[str, Any] | None = None  # llmc.compiler.verify.keeps_last_logits


# ---------------------------------------------------------------------------------- prepare


def prepare(
    model: ModelLike, request: BuildRequest, output: str | Path | None, source: dict[str, Any] | None = None
) -> Prepared:
    """Load the source (``source``: its record if already hashed), resolve the pipeline, the
    session and the verification inputs (``request`` was checked by the caller)."""
    session_config = SessionConfig(
        device=request.device,
        intra_op_num_threads=request.threads,
        disabled_optimizers=list(SLOWER_ORT_FUSIONS.get(request.device, [])),
        **(_trt_ep_options(request.section("engine")) if request.device == "tensorrt" else {}),
    )
    session_config.providers()  # fail now, not after compiling, if the device is missing
    target = request.target
    enabled, disabled = enabled_families(target.name, target.fusions, request.device, request.fusions)
    ir_model, source = load_source(model, source)
    out_dir = output_dir(source, output, target)
    pipeline = parse_pipeline(target.pipeline if request.passes is None else request.passes)
    pipeline = pipeline.without(list(request.disable_passes))
    for name in request.dump_ir_after:
        if name != "all" and name not in pipeline.names():
            raise LlmcError(f"--dump-ir-after '{name}' is not in the pipeline ({pipeline}); use a pass from it or 'all'")
    target.preflight(request, ir_model)
    concrete, assumed = task_shapes(ir_model, request.shapes)
    feeds = feeds_for(ir_model, concrete, request.inputs, request.seed)
    prefill = cache_prefill(ir_model, feeds, request.seed) if request.inputs is None else None
    if prefill is not None:
        feeds = _with_computed_cache(model, ir_model, feeds, prefill)
    source_dir = Path(source["path"]).parent if source["path"] else None
    prepared = {p.name: p.preflight(request, source_dir) for p in request.chain}
    return Prepared(
        request, ir_model, source, model, out_dir, pipeline, session_config, feeds, assumed,
        enabled, disabled, cache_prefill_tokens=prefill.tokens if prefill else None, prepared=prepared,
    )


def _with_computed_cache(
    model: ModelLike, ir_model: ir.Model, feeds: dict[str, np.ndarray], prefill: CachePrefill
) -> dict[str, np.ndarray]:
    """``feeds`` with the KV cache the source model computes from a seeded prefill (the state a
    generation loop is in), instead of random numbers no prefill produces."""
    hint = "the source model fails on a seeded prefill that computes the verification KV cache; give --inputs"
    return with_computed_cache(feeds, prefill, lambda f: _run_source(model, ir_model, f, hint))


def load_source(model: ModelLike, source: dict[str, Any] | None = None) -> tuple[ir.Model, dict[str, Any]]:
    """The model to compile (never the caller's object) and its ``source`` record."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        ir_model = model_io.load_model(path)
        return ir_model, source or {"path": str(path.resolve()), "sha256": model_io.sha256_file(path)}
    if isinstance(model, ir.Model):
        # Work on a clone (weights shared, never copied) so the caller's model stays as it was.
        ir_model = model.clone()
        model_io.normalize(ir_model)
        return ir_model, source or {"path": None, "sha256": model_io.ir_sha256(model)}
    if isinstance(model, onnx.ModelProto):
        ir_model = model_io.model_from_proto(model)
        digest = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
        return ir_model, source or {"path": None, "sha256": digest}
    raise LlmcError(f"cannot build from {type(model).__name__}: pass a path, onnx.ModelProto or onnx_ir.Model")


def _trt_ep_options(engine: Any) -> dict[str, Any]:
    """ONNX Runtime's TensorRT EP takes the same profiles and builder settings as --target trt."""
    options: dict[str, Any] = {
        "profiles": {name: [list(p.min), list(p.opt), list(p.max)] for name, p in engine.profiles.items()},
        "trt_builder_optimization_level": engine.optimization_level,
    }
    if engine.workspace_bytes:
        options["trt_max_workspace_size"] = engine.workspace_bytes
    return options


# ----------------------------------------------------------------------------------- passes


def run_passes(prep: Prepared, log: Log) -> Compiled:
    """The source model's reference outputs, then the pipeline with the requested instruments."""
    request = prep.request
    log(f"reference run of the source model ({describe_shapes(prep.feeds)})")
    reference = _reference_outputs(prep.source_model, prep.model, prep.feeds)
    check_finite_reference(reference, prep.source["path"] or "the source model", seeded=request.inputs is None)
    model_io.release_freed_memory()
    model = prep.model
    nodes_before = count_nodes(model)
    sparsity_before = sparsity.report(model)
    fused_before = fused_op_counts(model, request.target.fusions)
    instruments: list[Instrument] = []
    if request.verify_each:
        instruments.append(VerifyEachInstrument())
    if request.dump_ir_after:
        instruments.append(DumpIRInstrument(list(request.dump_ir_after), request.dump_dir))
    if request.diff_each:
        instruments.append(DifferentialInstrument(prep.feeds, prep.tolerance, reference))
    manager = PassManager(prep.pipeline, pass_options(prep), instruments)
    log(f"pipeline {prep.pipeline}")
    start = time.perf_counter()
    manager.run(model)
    model_io.normalize(model)
    seconds = time.perf_counter() - start
    # Unfused candidates of every family of the target (disabled ones say why they are off).
    not_fused = []
    if "fuse" in prep.pipeline.names():
        not_fused = explain(model, request.target.fusions, prep.disabled_fusions)
    return Compiled(
        model, reference, manager, nodes_before, fused_before, fused_op_counts(model, request.target.fusions),
        not_fused, seconds, sparsity_before,
    )


def pass_options(prep: Prepared) -> PassOptions:
    """The passes' constructor arguments: the target's enabled fusion families, the memory
    plan's shapes (the verification inputs') and alignment."""
    return PassOptions(
        fusions=tuple(prep.enabled_fusions),
        memory_shapes=(tuple((k, tuple(v.shape)) for k, v in prep.feeds.items()),),
        memory_alignment=prep.request.alignment,
        keep_logits=prep.session_config.device != "tensorrt",
    )


def _reference_outputs(model: ModelLike, ir_model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    shapes = describe_shapes(feeds)
    shapes = shapes if len(shapes) <= 100 else shapes[:97] + "..."
    hint = (
        f"the source model fails on the verification inputs ({shapes}): fix the model, "
        "or give inputs it accepts with --shape or --inputs"
    )
    return _run_source(model, ir_model, feeds, hint)


def source_outputs(prep: Prepared, config: SessionConfig) -> dict[str, np.ndarray]:
    """The source model's outputs on the verification inputs in a session of ``config``."""
    return _run_source(prep.source_model, prep.model, prep.feeds, "the source model failed", config)


def _run_source(
    model: ModelLike, ir_model: ir.Model, feeds: dict[str, np.ndarray], hint: str,
    config: SessionConfig = REFERENCE_CONFIG,
) -> dict[str, np.ndarray]:
    """The source model's outputs on ``feeds`` (ORT_DISABLE_ALL); failures end with ``hint``."""
    if isinstance(model, (str, Path)):
        # Run the source file itself: ONNX Runtime reads its external data directly.
        with run_context(hint):
            return OrtRunner(create_session(Path(model), config, ir_model)).run(feeds)
    with run_context(hint, "the source model"):
        return run_model(ir_model, feeds, config)


def describe_shapes(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k}={'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feeds.items())


def fail_on_mismatch(comparison: Comparison) -> None:
    worst = comparison.worst()
    if worst is not None:
        raise LlmcError(
            f"the compiled model changed output '{worst.name}' ({worst.reason}); rebuild with "
            "--diff-each to name the pass, then --disable-pass it"
        )


def target_passes(
    target: str = "ort", device: str = "cpu", fusions: dict[str, bool] | None = None, **options: Any
) -> tuple[Pipeline, PassOptions]:
    """A target's default pipeline and the pass options a build for it on ``device`` uses (its
    fusion families with ``fusions`` overrides; ``options``: more PassOptions fields), for
    running the passes outside a build."""
    from llmc.compiler.registry import get_target

    spec = get_target(target)
    enabled, _ = enabled_families(spec.name, spec.fusions, device, fusions)
    options = {"keep_logits": device != "tensorrt", **options}
    return parse_pipeline(spec.pipeline), PassOptions(fusions=tuple(enabled), **options)
