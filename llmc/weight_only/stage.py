"""Weight-only quantization as one build stage: measure the fp32 graph, quantize, run the gate,
and fall back node by node until the gate passes.

``llmc.compiler`` calls :func:`quantize_int4_for_build` after the fp32 passes were judged exact;
everything it needs about it lives in this package (``quantize``: the rewrite; ``gate``: the
perplexity and agreement with fp32; ``fallback``: which nodes leave int4 when the gate fails).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from llmc.errors import LlmcError
from llmc.weight_only.choose import choose_settings
from llmc.weight_only.fallback import fallback_plan
from llmc.weight_only.gate import Runner, evaluation
from llmc.weight_only.kernel import ORT_OP, resolve, use_kernels
from llmc.weight_only.options import Int4Options
from llmc.weight_only.quantize import Settings, quantize_model

CHOICE_FEEDS = 2  # evaluation windows whose activations the per-node choice is measured on

LIBRARY = "onnxruntime.quantization.matmul_nbits_quantizer (rtn, hqq); llmc.weight_only.blocks (minmax, 8-bit)"


def quantize_int4_for_build(
    model: ir.Model,
    feeds: dict[str, np.ndarray],
    options: Int4Options,
    seed: int,
    log: Callable[[str], None],
    text_ids: list[int] | None = None,
    device: str = "cpu",
) -> tuple[ir.Model, dict[str, Any]]:
    """The quantized model and the manifest's ``quantization``.

    Refuses, in one line, a model whose gate fails even with every fallback (all MatMuls int8,
    the head float).
    """
    start = time.perf_counter()
    # None: the 4-bit float32 MatMuls go onto llmc's kernel (the choice times them there, the gate
    # judges that graph); else why ONNX Runtime's MatMulNBits keeps them
    kernel_off = resolve(options.kernel, device) if options.body == "int4" else "8-bit weights"
    fp32 = Runner(model)
    judged_on = evaluation(model, feeds, options, seed, fp32, text_ids)
    del fp32
    settings: Settings = {}
    chosen = None
    if options.auto:
        settings, chosen = choose_settings(
            model, judged_on.feeds[:CHOICE_FEEDS], options, log, kernel=kernel_off is None
        )
    source = ir.serde.deserialize_model(ir.serde.serialize_model(model))  # fallbacks start from it
    attempts: list[dict[str, Any]] = []
    overrides: dict[str, str] = {}
    plan = None
    while True:
        candidate = model if not attempts else ir.serde.deserialize_model(ir.serde.serialize_model(source))
        log(f"int4: quantizing ({options.method}, block {options.block_size}; {_describe(overrides)})")
        began = time.perf_counter()
        record = quantize_model(candidate, options, overrides, settings)
        kernel = use_kernels(candidate) if kernel_off is None else {"op": ORT_OP, "nodes": 0, "reason": kernel_off}
        quantize_seconds = time.perf_counter() - began
        log(f"int4: gate on {judged_on.source}")
        measured = judged_on.judge(Runner(candidate), options)
        attempts.append({"overrides": _count(overrides), **measured})
        if measured["passed"]:
            break
        plan = plan or fallback_plan(source, options, settings)
        overrides = plan.next(overrides)
        if overrides is None:
            raise LlmcError(_refusal(measured, options))
        log(f"int4: gate failed ({_summary(measured)}); falling back: {_describe(overrides)}")
    report = _report(record, options, measured, attempts, quantize_seconds, time.perf_counter() - start)
    report["kernel"] = kernel
    if chosen is not None:
        report["per_node_choice"] = chosen
    return candidate, report


def _count(overrides: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for precision in overrides.values():
        counts[precision] = counts.get(precision, 0) + 1
    return counts


def _describe(overrides: dict[str, str]) -> str:
    counts = _count(overrides)
    return ", ".join(f"{n} node(s) {p}" for p, n in sorted(counts.items())) or "every candidate int4"


def _summary(measured: dict[str, Any]) -> str:
    if measured["metric"] == "perplexity":
        return f"perplexity +{100 * measured['increase']:.2f}%, top-1 agreement {measured['top1_agreement']:.4f}"
    return f"worst output cosine {measured['value']:.4f}"


def _refusal(measured: dict[str, Any], options: Int4Options) -> str:
    if measured["metric"] == "perplexity":
        return (
            f"--precision {options.body} (weight-only) fails its gate even with every fallback (MatMuls int8 or float, "
            "the head float): "
            f"{_summary(measured)} on {measured['on']} (limits: +{100 * options.max_perplexity_increase:g}%, "
            f"{options.min_top1_agreement}); raise --max-perplexity-increase / lower --min-top1-agreement, "
            "or build --precision fp32"
        )
    return (
        f"--precision int4 keeps {_summary(measured)} with fp32 on {measured['samples']} samples even with every "
        f"fallback, below --min-top1-agreement {options.min_top1_agreement}; build --precision fp32 or int8"
    )


def _report(
    record: dict[str, Any], options: Int4Options, measured: dict[str, Any], attempts: list[dict[str, Any]],
    quantize_seconds: float, seconds: float,
) -> dict[str, Any]:
    settings = {
        "method": options.method, "block_size": options.block_size, "symmetric": options.symmetric,
        "accuracy_level": options.accuracy_level,
    }
    nodes = [{"node": name, **info} for name, info in record["quantized"].items()]
    nodes += [{"node": name, "precision": "float", "reason": reason} for name, reason in record["kept_float"].items()]
    counts: dict[str, int] = {}
    int4_settings: dict[str, int] = {}
    for info in record["quantized"].values():
        counts[info["precision"]] = counts.get(info["precision"], 0) + 1
        if info["precision"] == "int4":
            key = f"block {info['block_size']}, level {info['accuracy_level']}"
            int4_settings[key] = int4_settings.get(key, 0) + 1
    return {
        "precision": options.body,
        "weight_only": True,
        "op": "com.microsoft MatMulNBits",
        "library": LIBRARY,
        **settings,
        "int8_accuracy_level": 4,
        "lm_head": options.head,
        "lm_head_accuracy_level": options.head_level,
        "embeddings": record["embeddings"],
        "nodes_by_precision": {**counts, "float": len(record["kept_float"])},
        "int4_nodes_by_setting": int4_settings,
        "nodes_quantized": len(record["quantized"]),
        "nodes_float": len(record["kept_float"]),
        "nodes": nodes,
        "weights_bytes": record["weights_bytes"],
        "gate": measured,
        "attempts": attempts,
        "seconds": {"quantize": round(quantize_seconds, 3), "total": round(seconds, 3)},
    }
