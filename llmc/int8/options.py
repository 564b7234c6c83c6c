"""What an INT8 build is asked to do (light: imported by the CLI and the build cache key)."""

from __future__ import annotations

import dataclasses

from llmc.errors import LlmcError

METHODS = ("max", "percentile", "entropy", "mse")  # calibration range methods (llmc.int8.stats)
DEFAULT_MEMORY_BUDGET = 256 << 20  # captured activations per calibration batch; cached reference outputs


@dataclasses.dataclass
class QuantizeOptions:
    """Calibration, per-node choices and the accuracy budget of an INT8 build."""

    method: str = "entropy"
    samples: int = 256
    holdout: int = 128
    max_accuracy_loss: float = 0.005
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    smooth_quant: bool = True
    percentile: float = 99.99
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    threads: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LlmcError(f"unknown calibration method '{self.method}'; valid: {', '.join(METHODS)}")
        if self.samples < 1:
            raise LlmcError("--calibration-samples must be at least 1")
        if not 0.0 <= self.max_accuracy_loss < 1.0:
            raise LlmcError("--max-accuracy-loss is 1 - the cosine to keep, between 0 and 1 (e.g. 0.005)")
