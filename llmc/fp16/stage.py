"""FP16 as one build stage: convert with float32 islands and the numeric check, and run the
float16 graph the way a GPU rounds (the CPU emulation) for verification."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from llmc.fp16.check import Fp16Result, convert_fp16, emulation_feeds
from llmc.fp16.convert import Fp16Options
from llmc.fp16.emulate import emulate_float16
from llmc.model import io as model_io
from llmc.spec.precision import Accuracy


def convert_for_build(
    model: ir.Model,
    feeds: dict[str, np.ndarray],
    options: Fp16Options | None,
    after_quantization: bool,
    tolerance: float,
    log: Callable[[str], None],
    accuracy: Accuracy | None = None,
) -> Fp16Result:
    """The float16 graph of ``model`` (``after_quantization``: the rest of an int8 graph, as
    TensorRT's int8 runs it, held to ``accuracy``: the quantization's own budget)."""
    log("converting to float16 with float32 islands")
    options = options or Fp16Options()
    if after_quantization:
        # Quantization steps flip under float16 rounding (an input a hair from a step's edge moves
        # one step): the float16 graph is not a float32 one within a tolerance, it is the artifact
        # the quantization's accuracy budget answers for. Judged by NaN/Inf and that budget (the
        # held-out samples against fp32, on the emulation); without one, by similarity to the
        # quantized graph in float32.
        result = convert_fp16(
            model, feeds, options, tolerance=None, layer_tolerance=None, min_cosine=0.999 if accuracy is None else 0.0,
            accuracy=accuracy, log=log,
        )
    else:
        result = convert_fp16(model, feeds, options, tolerance=tolerance, log=log)
    model_io.release_freed_memory()
    return result


def run_emulated(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of a float16 graph computed in float32 with a float16 rounding after every float16
    node: ONNX Runtime's CPU run keeps float32 between nodes, so overflows inside a chain hide."""
    from llmc.runtime.ort import run_model

    return run_model(emulate_float16(model), emulation_feeds(model, feeds))
