"""What a build target declares (onnxruntime-genai's builder resolves precision and execution
provider once per model; Polygraphy's TensorRT config is data a loader consumes): its default
pipeline, the fusion families it uses and where they are off, what it can run (contrib ops,
float16 on which devices), how int8 is written for it, and its finishing step.

A target is an instance (or subclass) of :class:`Target` in its own module of ``llmc.targets``,
listed once in ``llmc.compiler.registry``. Nothing outside ``llmc.targets`` compares a target's
name: code asks the object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmc.spec.options import Section

if TYPE_CHECKING:
    import onnx_ir as ir


@dataclasses.dataclass(frozen=True)
class FamilyUse:
    """How a target uses one fusion family (``llmc.passes.fusion.families``)."""

    name: str
    # device -> why the family is off by default there (a measured figure).
    off_by_default: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # The lowest default-domain opset at which the fused op exists on this target (0: any).
    min_opset: int = 0

    def enabled_by_default(self, device: str) -> bool:
        return device not in self.off_by_default


@dataclasses.dataclass(frozen=True)
class QdqRules:
    """How an int8 graph is written for a target; ``llmc.int8`` reads it.

    ``integer_ops``: ONNX Runtime's integer kernels (uint8 asymmetric activations, u8 x s8 MatMuls,
    dynamic per-node activation quantization allowed, the packed-QKV ``Attention`` quantizable);
    otherwise explicit Q/DQ pairs with int8 symmetric activations (zero point 0), static only.
    ``float_rest``: the precision the rest of an int8 graph runs in (None: float32).
    """

    integer_ops: bool
    activations: str  # how the manifest describes the activations
    float_rest: str | None = None


@dataclasses.dataclass(frozen=True)
class Finish:
    """What a target's finishing step gets: the written model and where the artifact is built."""

    work_dir: Path
    model: ir.Model
    model_sha256: str
    sparse_2_4: bool  # the artifact keeps 2:4 sparse weights
    log: Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Target:
    """One build target. Subclasses override the hooks; the fields are data."""

    name: str
    description: str
    pipeline: str  # the default pipeline text (``llmc passes``)
    fusions: tuple[FamilyUse, ...]  # in the families' application order
    qdq: QdqRules
    contrib_ops: bool  # runs ONNX Runtime contrib ops (MatMulNBits, GroupQueryAttention...)
    section: Section | None = None  # the target's own options (trt: the engine)
    measures_padding: bool = False  # the build measures whether padding can be skipped (ONNX Runtime)

    def runs_float16(self, device: str) -> bool:
        """Whether float16 graphs run fast on ``device`` with this target."""
        return True

    def check(self, request: Any) -> None:
        """Refuse, in one line, what this target cannot build (before any work)."""

    def preflight(self, request: Any, model: ir.Model) -> None:
        """Checks against the loaded model, before compiling (e.g. a profile per dynamic input)."""

    def cacheable(self, request: Any) -> bool:
        """Whether the build cache may hold this build (an engine signed for this host may not)."""
        return True

    def finish(self, request: Any, step: Finish) -> dict[str, Any] | None:
        """The finishing step after the ONNX model is written and verified: the manifest's
        ``engine`` section, or None when the target has none."""
        return None
