"""``llmc build``: compile a model for a target and verify it against the source.

The options are module-level ``Annotated`` aliases grouped as ``llmc build --help`` shows them:
general, pipeline and debugging, int8, int4, fp16 and TensorRT. The command turns each group into
the settings object ``llmc.compiler.build.build`` takes (``_quantize_options``,
``build_int4.int4_options``, ``_fp16_options``, ``_engine_settings``) and prints the manifest (``llmc.cli.render``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from llmc.cli.app import InputsOpt, SeedOpt, ShapeOpt, ThreadsOpt, app, console, user_errors
from llmc.cli.build_int4 import (
    AccuracyLevelOpt,
    BlockSizeOpt,
    EmbeddingOpt,
    EvalTextOpt,
    Int4MethodOpt,
    LmHeadOpt,
    MaxPplOpt,
    MinTop1Opt,
    SymmetricOpt,
    WeightOnlyOpt,
    int4_options,
)
from llmc.cli.render import Progress, print_build
from llmc.errors import LlmcError

if TYPE_CHECKING:
    from llmc.fp16.options import Fp16Options
    from llmc.int8.options import QuantizeOptions
    from llmc.targets.trt.config import EngineSettings

PIPELINE = "Pipeline and debugging"
INT8 = "int8 (--precision int8)"
FP16 = "fp16 (--precision fp16)"
TRT = "TensorRT (--target trt)"
CACHE_ROOT = "~/.cache/llmc, or $LLMC_CACHE_DIR if set"

# -- general -----------------------------------------------------------------------------------

ModelArg = Annotated[Path, typer.Argument(help="The ONNX model to compile.")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="ort (ONNX Runtime) or trt (TensorRT).")]
OutputOpt = Annotated[
    Optional[Path],
    typer.Option("--output", "-o", help="Artifact directory.", show_default="MODEL.llmc-TARGET beside the model"),
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32, fp16 (trt, or ort on --device cuda/tensorrt; float32 islands kept), int8 "
        "(needs --calibration-data; trt runs the rest in fp16) or int4 (ort: 4-bit MatMul weights, "
        "MatMulNBits; no data needed).",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or tensorrt (ONNX Runtime execution provider).")]
ToleranceOpt = Annotated[
    Optional[float],
    typer.Option(
        "--tolerance",
        help="Max abs error allowed, relative to each output's scale.",
        show_default="1e-4; fp16: 1e-2",
    ),
]
ExternalDataOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--external-data/--no-external-data",
        help="Force weights into model.onnx.data, or keep them in model.onnx.",
        show_default="external only over 2 GB",
    ),
]
AlignmentOpt = Annotated[
    int, typer.Option("--alignment", help="Arena alignment in bytes of the memory plan (manifest 'memory').")
]
NoCacheOpt = Annotated[
    bool,
    typer.Option(
        "--no-cache",
        help="Neither reuse nor store a build in the build cache (~/.cache/llmc or $LLMC_CACHE_DIR; see `llmc cache`).",
    ),
]

# -- pipeline and debugging --------------------------------------------------------------------

PassesOpt = Annotated[
    Optional[str],
    typer.Option(
        "--passes",
        help='Pipeline text, e.g. "prune,(fold,cse)*3".',
        show_default="the target's pipeline, see `llmc passes`",
        rich_help_panel=PIPELINE,
    ),
]
DisablePassOpt = Annotated[
    Optional[list[str]],
    typer.Option("--disable-pass", help="Remove a pass from the pipeline (repeatable).", rich_help_panel=PIPELINE),
]
EnableFusionOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--enable-fusion",
        help="Turn on a fusion family that is off by default for the target (repeatable; see `llmc passes`).",
        rich_help_panel=PIPELINE,
    ),
]
DisableFusionOpt = Annotated[
    Optional[list[str]],
    typer.Option("--disable-fusion", help="Turn off a fusion family (repeatable).", rich_help_panel=PIPELINE),
]
ExplainFusionOpt = Annotated[
    bool,
    typer.Option(
        "--explain-fusion",
        help="List every candidate that did not fuse: family, node, closest rule, failed check.",
        rich_help_panel=PIPELINE,
    ),
]
VerifyEachOpt = Annotated[
    bool,
    typer.Option(
        "--verify-each",
        help="Run the ONNX checker and strict shape inference after every pass.",
        rich_help_panel=PIPELINE,
    ),
]
DiffEachOpt = Annotated[
    bool,
    typer.Option(
        "--diff-each",
        help="Run the model in ONNX Runtime after every pass; name the first that changes outputs.",
        rich_help_panel=PIPELINE,
    ),
]
DumpIrAfterOpt = Annotated[
    Optional[tuple[str, Path]],
    typer.Option(
        "--dump-ir-after",
        metavar="NAME|all DIR",
        help="Write the IR as text after pass NAME (or all; comma-separated names) into DIR.",
        rich_help_panel=PIPELINE,
    ),
]

# -- int8 --------------------------------------------------------------------------------------

CalibrationDataOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--calibration-data",
        help="A directory of .npz feeds, one .npz of stacked samples, or a text file (with --tokenizer).",
        rich_help_panel=INT8,
    ),
]
TokenizerOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--tokenizer", help="Hugging Face tokenizer directory for text calibration data.", rich_help_panel=INT8
    ),
]
CalibrationSamplesOpt = Annotated[
    int,
    typer.Option(
        "--calibration-samples", help="Samples to calibrate on; the next ones are held out.", rich_help_panel=INT8
    ),
]
HoldoutSamplesOpt = Annotated[
    int,
    typer.Option(
        "--holdout-samples", help="Held-out samples checking the accuracy budget (at most).", rich_help_panel=INT8
    ),
]
CalibrationMethodOpt = Annotated[
    str, typer.Option("--calibration-method", help="max, percentile, entropy or mse.", rich_help_panel=INT8)
]
MaxAccuracyLossOpt = Annotated[
    float,
    typer.Option(
        "--max-accuracy-loss",
        help="1 - the mean cosine to fp32 to keep on held-out samples; nodes fall back to float until it holds.",
        rich_help_panel=INT8,
    ),
]
ExcludeNodesOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--exclude-nodes", help="Keep these nodes in float (names or globs; repeatable).", rich_help_panel=INT8
    ),
]
ExcludeOpTypesOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--exclude-op-types", help="Keep every node of this op type in float (repeatable).", rich_help_panel=INT8
    ),
]
SmoothQuantOpt = Annotated[
    bool,
    typer.Option(
        "--smooth-quant/--no-smooth-quant",
        help="SmoothQuant outlier migration (alpha per node).",
        rich_help_panel=INT8,
    ),
]

# -- fp16 --------------------------------------------------------------------------------------

KeepFp32Opt = Annotated[
    Optional[list[str]],
    typer.Option("--keep-fp32", help="Keep these nodes in float32 (names or globs; repeatable).", rich_help_panel=FP16),
]
Fp16IoOpt = Annotated[
    bool,
    typer.Option(
        "--fp16-io",
        help="Make the float graph inputs/outputs (e.g. a KV cache) float16; logits stay float32 unless --fp16-logits.",
        rich_help_panel=FP16,
    ),
]
Fp16LogitsOpt = Annotated[
    bool, typer.Option("--fp16-logits", help="Run the final logits head in float16 too.", rich_help_panel=FP16)
]

# -- TensorRT ----------------------------------------------------------------------------------

NoEngineOpt = Annotated[
    bool,
    typer.Option(
        "--no-engine", help="Write the TensorRT-ready ONNX without building an engine.", rich_help_panel=TRT
    ),
]
ProfileOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--profile",
        help="Optimization profile NAME:MIN:OPT:MAX per dynamic input (repeatable), "
        "e.g. --profile input_ids:1x1:1x128:8x512. --shapes is its old name.",
        rich_help_panel=TRT,
    ),
]
# The old name of --profile, kept working but out of --help (merged into --profile's list).
ShapesAliasOpt = Annotated[Optional[list[str]], typer.Option("--shapes", hidden=True)]
WorkspaceOpt = Annotated[
    Optional[int],
    typer.Option(
        "--workspace", help="Builder workspace limit in MiB.", show_default="TensorRT's", rich_help_panel=TRT
    ),
]
OptLevelOpt = Annotated[
    int,
    typer.Option(
        "--opt-level", help="Builder optimization level 0..5 (higher: longer build).", rich_help_panel=TRT
    ),
]
VersionCompatibleOpt = Annotated[
    bool,
    typer.Option(
        "--version-compatible", help="An engine later TensorRT versions can run.", rich_help_panel=TRT
    ),
]
HardwareCompatibilityOpt = Annotated[
    str,
    typer.Option(
        "--hardware-compatibility", help="none, ampere_plus or same_compute_capability.", rich_help_panel=TRT
    ),
]
TimingCacheOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--timing-cache",
        help="Timing cache file.",
        show_default=f"trt/timing.cache under {CACHE_ROOT}",
        rich_help_panel=TRT,
    ),
]
EngineCacheOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--engine-cache", help="Engine cache directory.", show_default=f"trt under {CACHE_ROOT}", rich_help_panel=TRT
    ),
]
NoEngineCacheOpt = Annotated[
    bool,
    typer.Option("--no-engine-cache", help="Always build, never reuse a cached engine.", rich_help_panel=TRT),
]


@app.command()
@user_errors
def build(
    model: ModelArg,
    target: TargetOpt = "ort",
    output: OutputOpt = None,
    precision: PrecisionOpt = "fp32",
    shape: ShapeOpt = None,
    inputs: InputsOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = 0,
    tolerance: ToleranceOpt = None,
    external_data: ExternalDataOpt = None,
    seed: SeedOpt = 0,
    alignment: AlignmentOpt = 64,
    no_cache: NoCacheOpt = False,
    passes: PassesOpt = None,
    disable_pass: DisablePassOpt = None,
    enable_fusion: EnableFusionOpt = None,
    disable_fusion: DisableFusionOpt = None,
    explain_fusion: ExplainFusionOpt = False,
    verify_each: VerifyEachOpt = False,
    diff_each: DiffEachOpt = False,
    dump_ir_after: DumpIrAfterOpt = None,
    calibration_data: CalibrationDataOpt = None,
    tokenizer: TokenizerOpt = None,
    calibration_samples: CalibrationSamplesOpt = 256,
    holdout_samples: HoldoutSamplesOpt = 128,
    calibration_method: CalibrationMethodOpt = "entropy",
    max_accuracy_loss: MaxAccuracyLossOpt = 0.005,
    exclude_nodes: ExcludeNodesOpt = None,
    exclude_op_types: ExcludeOpTypesOpt = None,
    smooth_quant: SmoothQuantOpt = True,
    keep_fp32: KeepFp32Opt = None,
    fp16_io: Fp16IoOpt = False,
    fp16_logits: Fp16LogitsOpt = False,
    block_size: BlockSizeOpt = "32",
    symmetric: SymmetricOpt = False,
    accuracy_level: AccuracyLevelOpt = "0",
    int4_method: Int4MethodOpt = "minmax",
    min_top1_agreement: MinTop1Opt = 0.9,
    max_perplexity_increase: MaxPplOpt = 0.05,
    eval_text: EvalTextOpt = None,
    lm_head: LmHeadOpt = "float",
    embedding: EmbeddingOpt = "int8",
    weight_only: WeightOnlyOpt = False,
    no_engine: NoEngineOpt = False,
    profile: ProfileOpt = None,
    shapes: ShapesAliasOpt = None,
    workspace_mb: WorkspaceOpt = None,
    opt_level: OptLevelOpt = 3,
    version_compatible: VersionCompatibleOpt = False,
    hardware_compatibility: HardwareCompatibilityOpt = "none",
    timing_cache: TimingCacheOpt = None,
    engine_cache: EngineCacheOpt = None,
    no_engine_cache: NoEngineCacheOpt = False,
) -> None:
    """Compile MODEL for a target and verify the result against the original."""
    from llmc.compiler.build import build as build_model
    from llmc.model.shape_specs import parse_shape_specs

    dump_names, dump_dir = _dump_request(dump_ir_after)
    quantization = _quantize_options(
        calibration_method, calibration_samples, holdout_samples, max_accuracy_loss,
        exclude_nodes, exclude_op_types, smooth_quant, threads,
    )
    engine = _engine_settings(
        [*(profile or ()), *(shapes or ())], workspace_mb, opt_level, version_compatible,
        hardware_compatibility, timing_cache, engine_cache, no_engine_cache,
    )
    fp16 = _fp16_options(keep_fp32, fp16_io, fp16_logits)
    int4 = int4_options(
        int4_method, block_size, symmetric, accuracy_level, (min_top1_agreement, max_perplexity_increase, eval_text),
        lm_head, embedding,
    )
    with Progress() as progress, console.status("compiling") as status:
        artifact = build_model(
            model, target=target, precision=precision, output=output, shapes=parse_shape_specs(shape),
            inputs=inputs, passes=passes, disable_passes=disable_pass or [], device=device, threads=threads,
            verify_each=verify_each, diff_each=diff_each, dump_ir_after=dump_names, dump_dir=dump_dir,
            tolerance=tolerance, external_data=external_data, seed=seed,
            fusions=_fusion_overrides(enable_fusion, disable_fusion), calibration_data=calibration_data,
            tokenizer=tokenizer, quantization=quantization, no_engine=no_engine, fp16=fp16, int4=int4,
            weight_only=weight_only, engine=engine, alignment=alignment, cache=not no_cache,
            log=lambda msg: status.update(msg), progress=progress.update,
        )
    print_build(artifact.manifest, artifact.path, explain_fusion=explain_fusion)


def _dump_request(dump_ir_after: tuple[str, Path] | None) -> tuple[list[str], Path | None]:
    """--dump-ir-after NAME[,NAME...]|all DIR as (pass names, directory)."""
    if not dump_ir_after:
        return [], None
    return [n for n in dump_ir_after[0].split(",") if n], dump_ir_after[1]


def _quantize_options(
    method: str,
    samples: int,
    holdout: int,
    max_accuracy_loss: float,
    exclude_nodes: list[str] | None,
    exclude_op_types: list[str] | None,
    smooth_quant: bool,
    threads: int,
) -> QuantizeOptions:
    from llmc.int8.options import QuantizeOptions

    return QuantizeOptions(
        method=method,
        samples=samples,
        holdout=holdout,
        max_accuracy_loss=max_accuracy_loss,
        exclude_nodes=tuple(exclude_nodes or ()),
        exclude_op_types=tuple(exclude_op_types or ()),
        smooth_quant=smooth_quant,
        threads=threads,
    )


def _engine_settings(
    profiles: list[str],
    workspace_mb: int | None,
    opt_level: int,
    version_compatible: bool,
    hardware_compatibility: str,
    timing_cache: Path | None,
    engine_cache: Path | None,
    no_engine_cache: bool,
) -> EngineSettings:
    from llmc.targets.trt.config import EngineSettings
    from llmc.targets.trt.profiles import parse_profile_specs

    if workspace_mb is not None and workspace_mb <= 0:
        raise LlmcError(f"--workspace must be a positive number of MiB, not {workspace_mb}")
    return EngineSettings(
        profiles=parse_profile_specs(profiles),
        workspace_bytes=workspace_mb << 20 if workspace_mb else None,
        optimization_level=opt_level,
        version_compatible=version_compatible,
        hardware_compatibility=hardware_compatibility,
        timing_cache=timing_cache,
        engine_cache=engine_cache,
        use_engine_cache=not no_engine_cache,
    )


def _fp16_options(keep_fp32: list[str] | None, fp16_io: bool, fp16_logits: bool) -> Fp16Options:
    from llmc.fp16.options import Fp16Options

    return Fp16Options(io_fp16=fp16_io, fp16_head=fp16_logits, keep_fp32=tuple(keep_fp32 or ()))


def _fusion_overrides(enable: list[str] | None, disable: list[str] | None) -> dict[str, bool]:
    overrides = {name: True for name in enable or []}
    for name in disable or []:
        if overrides.get(name):
            raise LlmcError(f"fusion '{name}' is both enabled and disabled; pick one")
        overrides[name] = False
    return overrides
