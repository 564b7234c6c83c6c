"""The weight-only precisions: ``int4`` and ``int8 --weight-only`` (MatMulNBits blocks), their
options, their stage and their manifest section.

The stage quantizes the MatMul weights (``--int4-method``, block size, accuracy level, LM head
and embedding), then gates the graph on perplexity and top-1 agreement with the fp32 graph,
falling back node by node (:mod:`llmc.weight_only.stage`). Both need ONNX Runtime's contrib ops.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from llmc.errors import LlmcError
from llmc.spec.options import BUILD, Flag, Option, Section
from llmc.spec.precision import QuantizedPrecision, Result, Step
from llmc.spec.target import Target
from llmc.weight_only.options import Int4Options

PANEL = "weight-only: int4, int8 --weight-only"
BLOCK_HELP = (
    "Weights per 4-bit block along K: 16, 32, 64, 128 or 256 (smaller: more accurate), or auto "
    "(per node: the fastest measured of 32/64/128 within 10% of the most accurate's output error)."
)
LEVEL_HELP = (
    "MatMulNBits compute: 0 float32 activations (on the CPU: llmc's 4-bit kernel, see --int4-kernel); 1 fp32, "
    "2 fp16, 3 bf16, 4 int8 (least accurate; faster than float32 only on MatMulNBits); "
    "auto: per node, 4 where measured faster and within 10% of level 0's output error."
)
METHOD_HELP = (
    "minmax (block minimum and range, a float minimum: llama.cpp's Q4_1, exact on Q4_1 GGUF weights), "
    "rtn (ONNX Runtime's round to nearest, integer zero points) or hqq (half-quadratic, error-minimising)."
)
HEAD_HELP = (
    "LM head weights: int8 (Q8_0 rounding; one 8-bit node at level 4, its top logits rescored by "
    "--lm-head-rescore; two exact 4-bit digits with --lm-head-accuracy-level 0), int4 or float."
)


def number_or_auto(value: str | int) -> str | int:
    """``"64"`` -> 64; ``auto`` and anything else unchanged (Int4Options names a bad value)."""
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else text


SECTION = Section(
    "int4",
    Int4Options,
    (
        Option(
            "weight_only", False, "With --precision int8: weights only, as 8-bit MatMulNBits blocks (no calibration "
            "data; the int4 gate and head/embedding options apply).", bool, PANEL, BUILD,
        ),
        Option("block_size", 32, BLOCK_HELP, str, PANEL, "int4", from_cli=number_or_auto),
        Option("symmetric", False, "Symmetric blocks (no zero points) or asymmetric (a zero point per block; "
               "more accurate).", bool, PANEL, "int4",
               flags=(Flag(("--symmetric/--asymmetric",), bool, False, "Symmetric blocks (no zero points) or "
                           "asymmetric (a zero point per block; more accurate)."),)),
        Option("accuracy_level", 0, LEVEL_HELP, str, PANEL, "int4", from_cli=number_or_auto),
        Option("int4_method", "minmax", METHOD_HELP, str, PANEL, "int4", "method"),
        Option("min_top1_agreement", 0.9, "Gate: fraction of positions whose argmax must match fp32 (decoders; "
               "others: worst output cosine).", float, PANEL, "int4"),
        Option("max_perplexity_increase", 0.05, "Gate: perplexity may rise this fraction over fp32 (0.05: 5%); a "
               "failing graph falls back to float32 activations, a float head, then 8-bit blocks for its worst "
               "MatMuls.", float, PANEL, "int4"),
        Option("eval_text", None, "Held-out text the gate measures perplexity on (tokenizer beside MODEL or "
               "--tokenizer).", Optional[str], PANEL, "int4", file=True,
               flag_extra={"metavar": "FILE", "show_default": "sequences the fp32 model samples itself"}),
        Option("lm_head", "int8", HEAD_HELP, str, PANEL, "int4", "head"),
        Option("lm_head_accuracy_level", None, "LM head MatMulNBits compute, apart from --accuracy-level: 0 "
               "float32 activations, 4 int8 (an int8 head at 4 is one 8-bit node).", Optional[int], PANEL, "int4",
               "head_accuracy_level", flag_extra={"show_default": "4 for an int8 head, else --accuracy-level"}),
        Option("lm_head_rescore", 8, "A quantized LM head's top K logits recomputed from its float rows (TopK, "
               "a Gather of K rows, ScatterElements): the greedy token is exact whenever it is among the K; 0 off.",
               int, PANEL, "int4", "head_rescore"),
        Option("embedding", "int8", "Token embedding: int8 (GatherBlockQuantized, shares a tied head's blocks) "
               "or float.", str, PANEL, "int4"),
        Option("int4_kernel", "auto", "Who computes 4-bit MatMuls with float32 activations on the CPU: llmc "
               "(ai.llmc::MatMulInt4: weights dequantized once per 8 rows, a row's output the same alone or batched), "
               "ort (MatMulNBits), or auto (llmc where its kernel library is built and the CPU has AVX-512 or AVX2).",
               str, PANEL, "int4", "kernel"),
    ),
    PANEL,
)


@dataclasses.dataclass(frozen=True)
class WeightOnly(QuantizedPrecision):
    bits: int = 4  # the body's bits (every MatMul but the head)
    refusal: str = ""  # the one line when the target cannot run MatMulNBits

    def check(self, request: Any, target: Target) -> None:
        if not target.contrib_ops:
            raise LlmcError(self.refusal)
        options = self.settings(request)  # a bad combination of options is one line now, not after compiling
        if options.body == "int4":
            from llmc.weight_only.kernel import resolve

            resolve(options.kernel, request.device)

    def settings(self, request: Any) -> Int4Options:
        options = request.section("int4")
        return dataclasses.replace(options, body="int8") if self.bits == 8 else options

    def preflight(self, request: Any, source_dir: Path | None) -> list[int] | None:
        """``--eval-text`` as token ids (``--tokenizer`` DIR's tokenizer or the source's)."""
        text = self.settings(request).eval_text
        if text is None:
            return None
        from llmc.weight_only.gate import eval_text_ids

        folder = Path(request.tokenizer) if request.tokenizer else source_dir
        return eval_text_ids(text, folder)

    def apply(self, step: Step) -> Result:
        from llmc.runtime.ort.errors import compiled_runs
        from llmc.weight_only.stage import quantize_int4_for_build

        request = step.request
        with compiled_runs():
            model, report = quantize_int4_for_build(
                step.model, step.feeds, self.settings(request), request.seed, step.log, step.prepared,
                device=request.device,
            )
        return Result(model, report)


    def describe(self, q: dict[str, Any]) -> list[str]:
        from rich.markup import escape

        from llmc.model.files import mib

        sizes = q["weights_bytes"]
        counts = ", ".join(f"{n} {p}" for p, n in q["nodes_by_precision"].items())
        settings = (
            f"int4 ({q['method']}, block {q['block_size']}, {'symmetric' if q['symmetric'] else 'asymmetric'}, "
            f"accuracy_level {q['accuracy_level']}; MatMulNBits blocks)"
            if self.bits == 4
            else f"int8 weight-only (block {q['block_size']}, Q8_0 rounding, accuracy_level 4; MatMulNBits)"
        )
        lines = [
            f"{settings}: MatMuls {counts}; LM head {q['lm_head']}; "
            f"{len(q['embeddings'])} embedding(s) int8; weights {mib(sizes['before'])} -> {mib(sizes['after'])}",
            f"  {_measured(q)}",
        ]
        kernel = q.get("kernel")
        if kernel:
            lines.append(f"  {_kernel_line(kernel)}")
        if q.get("per_node_choice"):
            chosen = ", ".join(f"{n} {s}" for s, n in q.get("int4_nodes_by_setting", {}).items())
            chosen = chosen or "none left int4 after the fallback"
            lines.append(f"  per-node int4 settings (measured): {chosen}; see manifest 'per_node_choice'")
        if len(q["attempts"]) > 1:
            lines.append(f"  gate passed after {len(q['attempts']) - 1} fallback step(s); see manifest 'attempts'")
        for node in q["nodes"]:
            if node["precision"] == "float" and not node["reason"].startswith("B is computed"):
                lines.append(f"  float: {escape(node['node'])}: {escape(node['reason'])}")
        return lines

    def mismatch_note(self, q: dict[str, Any] | None, worst: float, loose: float) -> str | None:
        return (
            f"ARTIFACT is an {self.name} build: it is not meant to match within fp32's tolerance; its build measured "
            f"{_measured(q or {})}. Compare it with --tolerance {loose:g} (this run's worst max rel error {worst:.3g})"
        )


def _kernel_line(kernel: dict[str, Any]) -> str:
    """The manifest's ``quantization.kernel`` in one line."""
    if not kernel.get("nodes"):
        return f"4-bit MatMuls: ONNX Runtime's MatMulNBits ({kernel.get('reason', 'no node fits llmc kernel')})"
    kept = ", ".join(f"{n} {why}" for why, n in kernel.get("kept", {}).items())
    return (
        f"4-bit MatMuls: {kernel['nodes']} on llmc's {kernel['op']} ({kernel['offsets_folded']} with their "
        f"block offsets folded in)" + (f"; MatMulNBits kept: {kept}" if kept else "")
    )


def _measured(q: dict[str, Any]) -> str:
    """What the gate measured, from the manifest's ``quantization``."""
    gate = q.get("gate") or {}
    if gate.get("metric") == "perplexity":
        return (
            f"perplexity {gate['perplexity']:.3f} vs fp32 {gate['perplexity_fp32']:.3f} "
            f"({100 * gate['increase']:+.2f}%, limit +{100 * gate['max_increase']:g}%), top-1 agreement "
            f"{gate['top1_agreement']:.4f} (minimum {gate['min_top1_agreement']}) over {gate['positions']} positions "
            f"of {gate['on']}"
        )
    if "value" in gate:
        return f"worst output cosine {gate['value']:.4f} with fp32 on {gate['samples']} seeded samples"
    return "no gate recorded"


COMMON = {"section": SECTION, "manifest_section": "quantization", "check_name": "perplexity / agreement gate"}
INT4 = WeightOnly(
    "int4", "4-bit MatMul weights (MatMulNBits), gated on perplexity and top-1 agreement with fp32",
    step_name="int4 quantization", bits=4, refusal=(
        "--precision int4 (MatMulNBits, an ONNX Runtime contrib op) is for --target ort; "
        "for TensorRT use --precision int8 or fp16"
    ), **COMMON,
)
INT8_WEIGHT_ONLY = WeightOnly(
    "int8", "8-bit MatMul weights only (MatMulNBits), no calibration data; the int4 gate applies",
    weight_only=True, step_name="int8 quantization", bits=8,
    refusal="--weight-only (MatMulNBits, an ONNX Runtime contrib op) is for --target ort", **COMMON,
)
