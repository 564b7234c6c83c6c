"""The ``int8`` precision (calibrated): its options, its stage and its manifest section.

The stage calibrates on ``--calibration-data``, keeps every node whose int8 form stays within the
accuracy budget on held-out samples, and writes the graph by the build target's Q/DQ rules
(:mod:`llmc.int8.stage`); the calibration statistics are reused through the build cache and from
an earlier build into the same directory. On TensorRT the rest of the graph then runs in float16
(the target's ``QdqRules.float_rest``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from llmc.errors import LlmcError
from llmc.int8.options import QuantizeOptions
from llmc.model.files import CALIBRATION_FILE
from llmc.spec.options import BUILD, Flag, Option, Section
from llmc.spec.precision import QuantizedPrecision, Result, Step
from llmc.spec.target import Target

PANEL = "int8 (--precision int8)"


def _settings(fields: dict[str, Any], general: Any) -> QuantizeOptions:
    fields = {**fields, "exclude_nodes": tuple(fields["exclude_nodes"] or ()),
              "exclude_op_types": tuple(fields["exclude_op_types"] or ())}
    return QuantizeOptions(threads=general["threads"], **fields)


SECTION = Section(
    "quantization",
    QuantizeOptions,
    (
        Option("calibration_data", None, "A directory of .npz feeds, one .npz of stacked samples, or a text file "
               "(with --tokenizer).", Optional[Path], PANEL, BUILD, file=True),
        Option("tokenizer", None, "Hugging Face tokenizer directory for text calibration data.", Optional[Path],
               PANEL, BUILD, file=True),
        Option("calibration_samples", 256, "Samples to calibrate on; the next ones are held out (data no longer than this: a quarter held out).", int, PANEL,
               "quantization", "samples"),
        Option("holdout_samples", 128, "Held-out samples checking the accuracy budget (at most).", int, PANEL,
               "quantization", "holdout"),
        Option("calibration_method", "entropy", "max, percentile, entropy or mse.", str, PANEL, "quantization",
               "method"),
        Option("max_accuracy_loss", 0.005, "1 - the mean cosine to fp32 to keep on held-out samples; nodes fall "
               "back to float until it holds.", float, PANEL, "quantization"),
        Option("exclude_nodes", (), "Keep these nodes in float (names or globs; repeatable).", Optional[list[str]],
               PANEL, "quantization", flags=(Flag(("--exclude-nodes",), Optional[list[str]], None,
                                                  "Keep these nodes in float (names or globs; repeatable)."),)),
        Option("exclude_op_types", (), "Keep every node of this op type in float (repeatable).",
               Optional[list[str]], PANEL, "quantization",
               flags=(Flag(("--exclude-op-types",), Optional[list[str]], None,
                           "Keep every node of this op type in float (repeatable)."),)),
        Option("smooth_quant", True, "SmoothQuant outlier migration (alpha per node).", bool, PANEL,
               "quantization", flags=(Flag(("--smooth-quant/--no-smooth-quant",), bool, True,
                                           "SmoothQuant outlier migration (alpha per node)."),)),
    ),
    PANEL,
    make=_settings,
)


class Int8(QuantizedPrecision):
    def check(self, request: Any, target: Target) -> None:
        if request.calibration_data is None:
            raise LlmcError(
                "--precision int8 needs --calibration-data PATH (a directory of .npz feeds, one .npz with "
                "stacked samples, or a text file with --tokenizer DIR), or --weight-only"
            )

    def then(self, target: Target) -> str | None:
        return target.qdq.float_rest

    def apply(self, step: Step) -> Result:
        from llmc.int8.stage import quantize_for_build

        stats_path = step.work_dir / CALIBRATION_FILE
        if step.calibration is not None and step.calibration.fetch(stats_path):
            step.log("calibration statistics from the cache")
        previous = step.out_dir / CALIBRATION_FILE  # a rebuild into the same -o (the quantizer checks its key)
        if not stats_path.exists() and previous.is_file() and not previous.is_symlink():
            shutil.copyfile(previous, stats_path)
        request = step.request
        model, report, accuracy = quantize_for_build(
            step.model, step.target, request.calibration_data, request.tokenizer, self.settings(request), step.feeds,
            stats_path, step.log, step.progress,
        )
        if step.calibration is not None:
            step.calibration.keep(stats_path)
        return Result(model, report, accuracy=accuracy)


    def describe(self, q: dict[str, Any]) -> list[str]:
        from rich.markup import escape

        acc = q["accuracy"]
        lines = [
            f"int8 ({q['method']} calibration, {q['samples']['calibration']} samples"
            f"{', statistics reused' if q['statistics']['reused'] else ''}; activations {q['activations']}, "
            f"weights {q['weights']}): {q['nodes_quantized']} node(s) quantized, {q['nodes_float']} in float"
        ]
        if acc.get("holdout"):
            lines.append(
                f"  accuracy on {acc['holdout']} held-out samples: cosine mean {acc['cosine_mean']:.5f}, "
                f"worst {acc['cosine_worst']:.5f} (budget: mean >= {acc['budget']})"
            )
        else:
            lines.append(f"  accuracy: {acc['note']}")
        pad = q.get("padding_skipped")
        if pad:
            lines.append(
                f"  padding skipped: cosine mean {pad['alone']['cosine_mean']:.5f} alone, "
                f"{pad['batched']['cosine_mean']:.5f} in batches of {pad['batched']['batch']} "
                f"({'within the budget: skipped by default' if pad['met'] else 'below the budget: computed'})"
            )
        modes: dict[str, int] = {}
        for node in q["nodes"]:
            if node["precision"] == "float":
                lines.append(f"  float: {escape(node['node'])} ({node['op_type']}): {escape(node['reason'])}")
            elif node["precision"] == "int8":
                key = f"{node['activations']}" + (f", smooth alpha {node['smooth_alpha']}" if node["smooth_alpha"] else "")
                modes[key] = modes.get(key, 0) + 1
        if modes:
            lines.append("  int8 nodes: " + "; ".join(f"{k} x{n}" for k, n in modes.items()))
        lines.append(
            f"  calibration {q['calibration_seconds']:.1f} s, accuracy budget {q['budget_seconds']:.1f} s, "
            f"peak RSS {q['peak_rss_mb']:.0f} MB"
        )
        return lines

    def mismatch_note(self, q: dict[str, Any] | None, worst: float, loose: float) -> str | None:
        acc = (q or {}).get("accuracy") or {}
        measured = (
            f"cosine mean {acc['cosine_mean']:.5f}, worst {acc['cosine_worst']:.5f} to fp32 on {acc['holdout']} "
            f"held-out samples (budget: mean >= {acc['budget']})"
            if acc.get("holdout") else acc.get("note", "no accuracy measured")
        )
        return (
            f"ARTIFACT is an int8 build: it is not meant to match within fp32's tolerance; its build measured "
            f"{measured}. Compare it with --tolerance {loose:g} (this run's worst max rel error {worst:.3g}) "
            "or read the cosine column"
        )

    def padding_verdict(self, padding: dict[str, Any] | None, report: dict[str, Any] | None) -> dict[str, Any] | None:
        """Skipping padding judged against fp32 within the accuracy budget
        (``llmc.int8.padding_budget``), not against the untrimmed int8 run, whose dynamic
        activation scales include the padding: the probe's own differences stay recorded."""
        measured = (report or {}).get("padding_skipped")
        if not isinstance(padding, dict) or not padding.get("applies") or measured is None:
            return padding
        verdicts = dict(padding, judged_by="int8 accuracy budget against fp32 (quantization.padding_skipped)")
        for mode in ("trim", "bucket"):
            probe = padding[mode]
            if mode == "bucket" and probe.get("max_difference") is None:
                continue  # rows not separable: the probe's reason stands
            verdicts[mode] = {**probe, "safe": bool(measured["met"]), "same_as_untrimmed": bool(probe["safe"])}
        if isinstance(padding.get("pack"), dict) and padding["pack"].get("applies"):
            # A packed row's dynamic activation scales span every text in it: a text's answer would
            # depend on its neighbours, so packing keeps the strict probe's verdict.
            verdicts["pack"] = {**padding["pack"], "judged_by": "the untrimmed int8 run"}
        return verdicts


INT8 = Int8(
    "int8", "int8 weights and activations, calibrated; within --max-accuracy-loss of fp32 on held-out samples",
    section=SECTION, manifest_section="quantization", step_name="int8 quantization", check_name="accuracy budget",
)
