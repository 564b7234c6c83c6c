"""What an INT4 build is asked to do (light: imported by the CLI and the build cache key)."""

from __future__ import annotations

import dataclasses
import math

from llmc.errors import LlmcError

METHODS = ("rtn", "hqq")
BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


@dataclasses.dataclass(frozen=True)
class Int4Options:
    """Block-wise 4-bit weights for MatMul, and the agreement the int4 graph must keep with fp32.

    ``accuracy_level`` is MatMulNBits' compute type for the activations (0: unset, float32;
    4: int8 activations, fast but the least accurate). The LM head stays float unless
    ``quantize_head``.
    """

    method: str = "rtn"
    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int = 0
    min_top1_agreement: float = 0.9
    quantize_head: bool = False
    gate_samples: int = 3  # seeded token sequences beyond the verification feeds

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LlmcError(f"--int4-method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.block_size not in BLOCK_SIZES:
            raise LlmcError(
                f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))} (MatMulNBits' block sizes), "
                f"not {self.block_size!r}"
            )
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise LlmcError(
                f"--accuracy-level must be 0..4 (0: float32 compute, 4: int8 activations), not {self.accuracy_level!r}"
            )
        value = self.min_top1_agreement
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise LlmcError(f"--min-top1-agreement is a fraction of tokens (e.g. 0.9), not {value!r}")
        if self.method == "hqq" and self.symmetric:
            raise LlmcError("--int4-method hqq is asymmetric only (float zero points); drop --symmetric or use rtn")
        if not isinstance(self.gate_samples, int) or self.gate_samples < 0:
            raise LlmcError(f"gate_samples must be an integer >= 0, not {self.gate_samples!r}")
