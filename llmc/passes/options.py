"""What a pass may be configured with (light: no IR imports; the build cache key reads it)."""

from __future__ import annotations

import dataclasses

TARGETS = ("ort", "trt")


@dataclasses.dataclass(frozen=True)
class PassOptions:
    """Options a pass factory may read. Every field has a safe default."""

    # Constant folding never creates a tensor over this many elements unless it replaces
    # at least as many (so folding never duplicates weights).
    fold_size_limit: int = 1 << 16
    # Inputs over this many elements are folded only by ops that consume them alone.
    fold_input_size_limit: int = 1 << 20
    # The build's target and device: target-specific passes (fusion) read them.
    target: str = "ort"
    device: str = "cpu"
    # Fusion families turned on/off against the target's defaults: ((name, on), ...).
    fusions: tuple[tuple[str, bool], ...] = ()
    # Memory planning: concrete input shape sets (each ((name, dims), ...)) and arena alignment.
    memory_shapes: tuple[tuple[tuple[str, tuple[int, ...]], ...], ...] = ()
    memory_alignment: int = 64
