"""INT8 as one build stage: read the calibration data, quantize within the accuracy budget, lint.

``llmc.compiler`` calls :func:`quantize_for_build` between the fp32 passes and verification;
everything it needs about INT8 lives in this package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from llmc.int8.calibration_data import read_calibration_data
from llmc.int8.lint import lint
from llmc.int8.quantize import HoldoutBudget, Progress, QuantizeOptions, quantize_model
from llmc.runtime.ort.errors import run_context
from llmc.spec.target import Target


def quantize_for_build(
    model: ir.Model,
    target: Target,
    calibration_data: str | Path,
    tokenizer: str | Path | None,
    options: QuantizeOptions,
    feeds: dict[str, np.ndarray],
    stats_path: Path,
    log: Callable[[str], None],
    progress: Progress | None = None,
) -> tuple[ir.Model, dict[str, Any], HoldoutBudget]:
    """The INT8 model written by ``target``'s Q/DQ rules, the manifest's ``quantization`` report
    and the accuracy budget as a check of what the target makes of the model (TensorRT: float16).

    Text calibration data is padded to the sequence length of the verification ``feeds``;
    statistics are kept in (and reused from) ``stats_path``.
    """
    ids = feeds.get("input_ids")
    sequence = int(ids.shape[1]) if ids is not None and ids.ndim == 2 else None
    log(f"reading calibration data {calibration_data}")
    samples, skipped = read_calibration_data(
        calibration_data, model, tokenizer=tokenizer, sequence_length=sequence,
        limit=options.samples + options.holdout,
    )
    if skipped:
        log(f"skipped {skipped} calibration samples with NaN/Inf values")
    log(f"calibrating on {min(len(samples), options.samples)} samples ({options.method})")
    hint = (
        "the model ran on the verification inputs but not on these samples: give calibration data of "
        "the shapes and values it accepts"
    )
    with run_context(hint, f"calibration on {calibration_data}"):
        result = quantize_model(model, target, samples, options, stats_path=stats_path, progress=progress)
    if skipped:  # recorded only when it happened: manifests of clean data stay as they were
        result.report["samples"]["skipped_nonfinite"] = skipped
    problems = lint(result.model, target.qdq)
    if problems:
        raise AssertionError(f"int8 graph breaks the {target.name} Q/DQ rules: {problems[0]}")
    result.report["lint"] = {"rules": target.name, "passed": True}
    return result.model, result.report, result.accuracy
