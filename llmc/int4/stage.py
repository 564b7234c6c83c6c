"""INT4 as one build stage: measure the fp32 graph, quantize its MatMul weights, run the gate.

``llmc.compiler`` calls :func:`quantize_int4_for_build` after the fp32 passes were judged exact;
everything it needs about INT4 lives in this package (``quantize``: the rewrite around ORT's
quantizer; ``gate``: the top-1 agreement with fp32).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from llmc.errors import LlmcError
from llmc.int4.gate import Runner, agreement, gate_feeds
from llmc.int4.options import Int4Options
from llmc.int4.quantize import quantize_model

LIBRARY = "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer"


def quantize_int4_for_build(
    model: ir.Model,
    feeds: dict[str, np.ndarray],
    options: Int4Options,
    seed: int,
    log: Callable[[str], None],
) -> tuple[ir.Model, dict[str, Any]]:
    """The int4 model (``model`` rewritten in place) and the manifest's ``quantization``.

    Refuses, in one line, an int4 graph whose agreement with fp32 is below
    ``options.min_top1_agreement``.
    """
    start = time.perf_counter()
    fp32 = Runner(model)
    samples = gate_feeds(model, feeds, seed, options.gate_samples, fp32)
    references = [fp32(sample) for sample in samples]
    del fp32
    log(f"int4: quantizing MatMul weights ({options.method}, block {options.block_size})")
    quantize_start = time.perf_counter()
    record = quantize_model(model, options)
    quantize_seconds = time.perf_counter() - quantize_start
    log(f"int4: checking top-1 agreement with fp32 on {len(samples)} samples")
    int4 = Runner(model)
    measured = agreement(references, [int4(sample) for sample in samples])
    measured.update(minimum=options.min_top1_agreement, passed=measured["value"] >= options.min_top1_agreement)
    report = _report(record, options, measured, quantize_seconds, time.perf_counter() - start)
    if not measured["passed"]:
        what = "top-1 agreement" if measured["metric"] == "top1_agreement" else "worst output cosine"
        raise LlmcError(
            f"--precision int4 keeps {what} {measured['value']:.4f} with fp32 on {measured['samples']} samples, "
            f"below --min-top1-agreement {options.min_top1_agreement}; try a smaller --block-size, --asymmetric, "
            "--accuracy-level 0, --int4-method hqq, or --precision int8"
        )
    return model, report


def _report(
    record: dict[str, Any], options: Int4Options, measured: dict[str, Any], quantize_seconds: float, seconds: float
) -> dict[str, Any]:
    settings = {
        "method": options.method, "bits": 4, "block_size": options.block_size, "symmetric": options.symmetric,
        "accuracy_level": options.accuracy_level,
    }
    nodes = [{"node": name, "precision": "int4", **info, **settings} for name, info in record["quantized"].items()]
    nodes += [{"node": name, "precision": "float", "reason": reason} for name, reason in record["kept_float"].items()]
    return {
        "precision": "int4",
        "op": "com.microsoft MatMulNBits",
        "library": LIBRARY,
        **settings,
        "lm_head": "int4" if options.quantize_head else "float",
        "nodes_quantized": len(record["quantized"]),
        "nodes_float": len(record["kept_float"]),
        "nodes": nodes,
        "weights_bytes": record["weights_bytes"],
        "gate": measured,
        "seconds": {"quantize": round(quantize_seconds, 3), "total": round(seconds, 3)},
    }
