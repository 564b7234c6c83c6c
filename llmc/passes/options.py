"""The passes' constructor arguments (light: no IR imports; the build cache key reads them).

The build fills them from its target and request (``llmc.compiler.stages.pass_options``); every
field has the default a pass runs with on its own.
"""

from __future__ import annotations

import dataclasses

from llmc.spec.target import FamilyUse


@dataclasses.dataclass(frozen=True)
class PassOptions:
    """Options a pass factory may read."""

    # Constant folding never creates a tensor over this many elements unless it replaces
    # at least as many (so folding never duplicates weights).
    fold_size_limit: int = 1 << 16
    # Inputs over this many elements are folded only by ops that consume them alone.
    fold_input_size_limit: int = 1 << 20
    # The fusion families to apply, in order (the build target's enabled ones).
    fusions: tuple[FamilyUse, ...] = ()
    # Memory planning: concrete input shape sets (each ((name, dims), ...)) and arena alignment
    # (0: the planner's default).
    memory_shapes: tuple[tuple[tuple[str, tuple[int, ...]], ...], ...] = ()
    memory_alignment: int = 0
    # Decoders take ``logits_to_keep`` (llmc.passes.logits); off where ONNX Runtime hands the graph
    # to TensorRT (its scalar would need a range in every engine profile).
    keep_logits: bool = True
