"""The ``trt`` target: TensorRT. Fusions write the standard ops TensorRT's parser fuses itself
(attention stays MatMul-Softmax-MatMul for TensorRT's own fusion); int8 is explicit Q/DQ with
int8 symmetric activations and the rest in float16; the finishing step builds and signs the
engine (:func:`llmc.targets.trt.loader.build_plan`) unless ``--no-engine``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from llmc.errors import LlmcError
from llmc.spec.options import BUILD, Flag, Option, Section
from llmc.spec.target import FamilyUse, Finish, QdqRules, Target
from llmc.targets.ort import PIPELINE as ORT_PIPELINE
from llmc.targets.trt.config import EngineSettings
from llmc.targets.trt.profiles import parse_profile_specs

PANEL = "TensorRT (--target trt)"
# ONNX Runtime's without ``logits`` (llmc.passes.logits): its scalar input would be a shape input
# of every engine profile, and TensorRT's decoders are not driven by llmc's generation loop.
PIPELINE = ORT_PIPELINE.replace("logits,", "")
CACHE_ROOT = "~/.cache/llmc, or $LLMC_CACHE_DIR if set"
PROFILE_HELP = (
    "Optimization profile NAME:MIN:OPT:MAX per dynamic input (repeatable), "
    "e.g. --profile input_ids:1x1:1x128:8x512. --shapes is its old name."
)


def _profiles(profile: list[str] | None, shapes: list[str] | None) -> Any:
    return parse_profile_specs([*(profile or ()), *(shapes or ())])


def _workspace(mib: int | None) -> int | None:
    if mib is not None and mib <= 0:
        raise LlmcError(f"--workspace must be a positive number of MiB, not {mib}")
    return mib << 20 if mib else None


ENGINE = Section(
    "engine",
    EngineSettings,
    (
        Option("no_engine", False, "Write the TensorRT-ready ONNX without building an engine.", bool, PANEL, BUILD),
        Option(
            "profiles", {}, PROFILE_HELP, panel=PANEL, section="engine",
            flags=(
                Flag(("--profile",), Optional[list[str]], None, PROFILE_HELP),
                # The old name of --profile, kept working but out of --help (merged into its list).
                Flag(("--shapes",), Optional[list[str]], None, "", {"hidden": True}),
            ),
            from_cli=_profiles,
        ),
        Option(
            "workspace_bytes", None, "Builder workspace limit in MiB.", panel=PANEL, section="engine",
            flags=(Flag(("--workspace",), Optional[int], None, "Builder workspace limit in MiB.",
                        {"show_default": "TensorRT's"}),),
            from_cli=_workspace,
        ),
        Option("optimization_level", 3, "Builder optimization level 0..5 (higher: longer build).", int,
               PANEL, "engine", flags=(Flag(("--opt-level",), int, 3,
                                             "Builder optimization level 0..5 (higher: longer build)."),)),
        Option("version_compatible", False, "An engine later TensorRT versions can run.", bool, PANEL, "engine"),
        Option("hardware_compatibility", "none", "none, ampere_plus or same_compute_capability.", str, PANEL,
               "engine"),
        Option("timing_cache", None, "Timing cache file.", Optional[Path], PANEL, "engine",
               flag_extra={"show_default": f"trt/timing.cache under {CACHE_ROOT}"}),
        Option("engine_cache", None, "Engine cache directory.", Optional[Path], PANEL, "engine",
               flag_extra={"show_default": f"trt under {CACHE_ROOT}"}),
        Option(
            "use_engine_cache", True, "Always build, never reuse a cached engine.", panel=PANEL,
            section="engine",
            flags=(Flag(("--no-engine-cache",), bool, False, "Always build, never reuse a cached engine."),),
            from_cli=lambda no_cache: not no_cache,
        ),
    ),
    PANEL,
)


class TrtTarget(Target):
    def check(self, request: Any) -> None:
        from llmc.runtime.trt import detect

        if not request.no_engine and not detect.tensorrt_available():
            detect.import_tensorrt()  # raises the one line saying what to install

    def preflight(self, request: Any, model: Any) -> None:
        if not request.no_engine:
            request.section("engine").preflight(model)  # a profile for every dynamic input

    def cacheable(self, request: Any) -> bool:
        return bool(request.no_engine)  # an engine is signed for this machine: always built

    def finish(self, request: Any, step: Finish) -> dict[str, Any]:
        engine: EngineSettings = request.section("engine")
        if step.sparse_2_4:
            engine = dataclasses.replace(engine, sparse_weights=True)  # 2:4 weights: let TensorRT use them
        if request.no_engine:
            return {"built": False, "reason": "--no-engine: TensorRT-ready ONNX only", **engine.requested(step.model)}
        from llmc.targets.trt.loader import build_plan

        step.log("building the TensorRT engine")
        return build_plan(engine, step.work_dir, step.model, step.model_sha256, step.log)


TRT = TrtTarget(
    name="trt",
    description="TensorRT",
    pipeline=PIPELINE,
    fusions=(
        FamilyUse("canonical"),
        FamilyUse("layer_norm", min_opset=17),
        FamilyUse("rms_norm_standard", min_opset=23),
        FamilyUse("gelu_standard", min_opset=20),
    ),
    qdq=QdqRules(integer_ops=False, activations="int8 symmetric (zero point 0)", float_rest="fp16"),
    contrib_ops=False,
    section=ENGINE,
)
