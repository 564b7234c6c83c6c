"""The ``fp16`` precision: its options, its stage and how the artifact is judged.

The stage converts to float16 with float32 islands and the numeric check (:mod:`llmc.fp16.stage`);
it also runs after int8 where the target runs the rest of an int8 graph in float16 (TensorRT).
Verification judges the float16 graph by its CPU emulation (ONNX Runtime's CPU run keeps float32
between nodes, so overflows inside a chain would hide); the plain CPU run is recorded beside it.
"""

from __future__ import annotations

from typing import Any, Optional

from llmc.errors import LlmcError
from llmc.fp16.options import Fp16Options
from llmc.spec.options import Flag, Option, Section
from llmc.spec.precision import Judgement, Precision, Result, Step
from llmc.spec.target import Target

PANEL = "fp16 (--precision fp16)"

SECTION = Section(
    "fp16",
    Fp16Options,
    (
        Option("keep_fp32", (), "Keep these nodes in float32 (names or globs; repeatable).", Optional[list[str]],
               PANEL, "fp16", flags=(Flag(("--keep-fp32",), Optional[list[str]], None,
                                          "Keep these nodes in float32 (names or globs; repeatable)."),)),
        Option("fp16_io", False, "Make the float graph inputs/outputs (e.g. a KV cache) float16; logits stay "
               "float32 unless --fp16-logits.", bool, PANEL, "fp16", "io_fp16"),
        Option("fp16_logits", False, "Run the final logits head in float16 too.", bool, PANEL, "fp16", "fp16_head"),
    ),
    PANEL,
    make=lambda fields, general: Fp16Options(**{**fields, "keep_fp32": tuple(fields["keep_fp32"] or ())}),
)


class Fp16(Precision):
    def check(self, request: Any, target: Target) -> None:
        if not target.runs_float16(request.device):
            raise LlmcError(
                "--precision fp16 is for GPUs: use --device cuda or --device tensorrt, or --target trt; "
                "on a CPU use --precision int8"
            )

    def apply(self, step: Step) -> Result:
        from llmc.fp16.stage import convert_for_build

        after_quantization = step.before is not None and step.before.quantized
        converted = convert_for_build(
            step.model, step.feeds, self.settings(step.request), after_quantization, step.tolerance, step.log,
            step.accuracy if after_quantization else None,
        )
        return Result(converted.model, converted.report, converted.float32_outputs)

    def judge(self, judgement: Judgement) -> Any:
        from llmc.fp16.stage import run_emulated
        from llmc.model.compare import compare_outputs

        comparison = compare_outputs(judgement.reference, run_emulated(judgement.model, judgement.feeds),
                                     judgement.tolerance)
        check = judgement.report["check"]
        check["ort_cpu"] = compare_outputs(judgement.reference, judgement.outputs, judgement.tolerance).summary()
        check["emulated"] = comparison.summary()
        return comparison

    @property
    def reference_note(self) -> str:
        return (
            " (the float16 graph run by its CPU emulation: float32 compute, float16 rounding after "
            "every float16 node)"
        )

    def verified_line(self, errors: str) -> str:
        return f"verified against the source (float16 emulated on CPU): {errors}"

    def describe(self, f: dict[str, Any]) -> list[str]:
        from rich.markup import escape

        check = f["check"]
        lines = [
            f"float16: {f['nodes']['fp16']} node(s) in float16, {f['nodes']['fp32']} in float32, {f['casts']} "
            f"cast(s); worst layer drift {check['worst_layer_error']:.3g} over {check['layers']} layers (CPU emulation)"
        ]
        acc = check.get("accuracy") or {}
        if acc.get("holdout"):
            lines.append(
                f"  the artifact (float16 emulated) on {acc['holdout']} held-out samples: cosine to fp32 mean "
                f"{acc['cosine_mean']:.5f}, worst {acc['cosine_worst']:.5f} (budget: mean >= {acc['budget']})"
            )
        for reason, group in f["fp32_islands"].items():
            if not reason.startswith("fed only") and not reason.startswith("layout op"):
                lines.append(f"  float32 x{group['count']}: {escape(reason)}")
        for r in f["fallback"]:
            lines.append(f"  numeric check: layer {r['layer']} ({r['nodes']} nodes) back to float32: {escape(r['finding'])}")
        w = f["weights"]
        if w["clamped"] or w["flushed"]:
            lines.append(f"  weights: {w['clamped']} value(s) clamped to float16's range, {w['flushed']} flushed to 0")
        return lines


FP16 = Fp16(
    "fp16", "float16 with float32 islands (TensorRT, or ONNX Runtime on a GPU), judged on a CPU emulation",
    tolerance=1e-2, section=SECTION, manifest_section="fp16", step_name="the float16 conversion",
)
