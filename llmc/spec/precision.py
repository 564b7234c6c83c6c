"""What a precision declares: its name, default tolerance, options (a :class:`Section`), its
build stage (:meth:`Precision.apply`), how the artifact is judged (:meth:`Precision.judge`) and
its manifest section.

A precision is an instance (or subclass) of :class:`Precision` in its own module (``llmc.fp16``,
``llmc.int8``, ``llmc.weight_only``; fp32 is :data:`FP32` here), listed once in
``llmc.compiler.registry``; ``llmc.register_precision`` adds one from outside llmc. The build
runs the stage between the fp32 passes and verification, then the precision it names for the
rest of the graph (:meth:`Precision.then`: TensorRT's int8 runs the rest in float16).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmc.spec.options import Section

if TYPE_CHECKING:  # light: `llmc --help` reads the precisions' options
    import numpy as np
    import onnx_ir as ir

    from llmc.model.compare import Comparison
    from llmc.spec.target import Target


@dataclasses.dataclass
class Step:
    """What a precision's stage gets: the fp32 graph (or the previous step's) and the build."""

    model: ir.Model
    feeds: dict[str, np.ndarray]  # the verification inputs
    reference: dict[str, np.ndarray]  # the source model's outputs on them
    request: Any  # llmc.compiler.request.BuildRequest
    target: Target
    tolerance: float
    log: Callable[[str], None]
    progress: Callable[[str, int, int], None] | None
    work_dir: Path  # where the artifact is being written
    out_dir: Path  # where it will be moved once verified
    before: Precision | None = None  # the precision whose stage ran before this one in the chain
    prepared: Any = None  # what this precision's ``preflight`` returned
    calibration: Any = None  # the build cache's calibration statistics (fetch/keep), or None
    accuracy: Accuracy | None = None  # the previous step's own accuracy check (``Result.accuracy``)


# A stage's accuracy check run on a later form of its graph: (that graph as the CPU computes it,
# what its feeds become for it) -> the check's report, ``met`` saying whether it holds.
Accuracy = Callable[["ir.Model", Callable[[dict[str, "np.ndarray"]], dict[str, "np.ndarray"]]], dict[str, Any]]


@dataclasses.dataclass
class Result:
    """A stage's graph and its manifest section; ``float32_outputs``: the graph's own float32 run
    on the verification inputs if the stage made one (it then judges the passes' exactness).
    ``accuracy``: the stage's own accuracy check, for the next step of the chain to hold its graph
    to (TensorRT runs the rest of an int8 graph in float16: the artifact keeps int8's budget)."""

    model: ir.Model
    report: dict[str, Any] | None = None
    float32_outputs: dict[str, np.ndarray] | None = None
    accuracy: Accuracy | None = None


@dataclasses.dataclass
class Judgement:
    """What verification judges: the saved artifact's outputs against the source's."""

    model: ir.Model  # the saved artifact, read back
    outputs: dict[str, np.ndarray]  # its outputs in ONNX Runtime (ORT_DISABLE_ALL)
    reference: dict[str, np.ndarray]
    feeds: dict[str, np.ndarray]
    tolerance: float
    fp32_comparison: Comparison | None  # the passes' fp32 graph against the source, if judged
    report: dict[str, Any] | None  # this precision's manifest section (it may record the check)


@dataclasses.dataclass(frozen=True)
class Precision:
    """One precision; fp32 as it is, subclasses override the stage and the judgement."""

    name: str
    description: str
    tolerance: float = 1e-4  # the default --tolerance (over each output's scale)
    weight_only: bool = False  # selected by --weight-only with this name
    section: Section | None = None  # its options
    manifest_section: str | None = None  # the manifest key of its report
    # Changes the numbers on purpose: the passes' fp32 graph is judged exact before the stage, the
    # artifact by the stage's own accuracy check, and the memory order is planned again after it.
    quantized: bool = False
    step_name: str = ""  # the validity check's name for the stage ("int8 quantization")

    def check(self, request: Any, target: Target) -> None:
        """Refuse, in one line, what cannot be built at this precision (before any work)."""

    def preflight(self, request: Any, source_dir: Path | None) -> Any:
        """Checks and reads done before any compiling (``source_dir``: the folder of the source
        model file, None for an in-memory model); the result reaches the stage as ``prepared``."""
        return None

    def settings(self, request: Any) -> Any:
        """The section's settings this build uses (None without a section)."""
        return request.section(self.section.name) if self.section is not None else None

    def then(self, target: Target) -> str | None:
        """The precision the rest of the graph runs in after this stage, on ``target``."""
        return None

    def apply(self, step: Step) -> Result:
        return Result(step.model)

    def judge(self, judgement: Judgement) -> Comparison:
        """The artifact's comparison with the source model (a mismatch fails the build)."""
        from llmc.model.compare import compare_outputs

        return compare_outputs(judgement.reference, judgement.outputs, judgement.tolerance)

    @property
    def reference_note(self) -> str:
        """What the manifest's ``verification.reference`` adds for this precision."""
        return ""

    def verified_line(self, errors: str) -> str:
        """``llmc build``'s line on what was verified (``errors``: the worst errors measured)."""
        return f"verified against the source: {errors}"

    def describe(self, report: dict[str, Any]) -> list[str]:
        """``llmc build``'s lines (rich markup) about this precision's manifest section."""
        return []

    def mismatch_note(self, report: dict[str, Any] | None, worst: float, loose: float) -> str | None:
        """``llmc check``'s line when the artifact misses the tolerance (``worst``: this run's
        worst max rel error, ``loose``: a tolerance that would pass): why, and what its build
        measured. None: the generic line."""
        return None

    def padding_verdict(self, padding: dict[str, Any] | None, report: dict[str, Any] | None) -> dict[str, Any] | None:
        """The manifest's ``padding`` section for this precision's artifact, from the probe's
        (``llmc.runtime.padding.probe``: skipping padding against the artifact's own untrimmed run)
        and this precision's ``report``. By default the probe's verdicts stand."""
        return padding


FP32 = Precision("fp32", "float32, as exported: every output within --tolerance of the source model")


@dataclasses.dataclass(frozen=True)
class QuantizedPrecision(Precision):
    """A precision that changes the numbers on purpose: the passes' fp32 graph was judged exact
    before its stage, its own check (``check_name``, in its manifest section) judged the quantized
    graph, and the artifact must give finite outputs."""

    quantized: bool = True
    check_name: str = ""  # what judged the quantized graph ("accuracy budget")

    def judge(self, judgement: Judgement) -> Comparison:
        import numpy as np

        from llmc.errors import LlmcError

        bad = [k for k, v in judgement.outputs.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        if bad:
            raise LlmcError(f"the {self.name} model gives NaN/Inf in output '{bad[0]}'; rebuild with --precision fp32")
        assert judgement.fp32_comparison is not None, "a quantized precision's stage judges the fp32 graph first"
        return judgement.fp32_comparison

    @property
    def reference_note(self) -> str:
        return (
            f" (the fp32 graph before quantization; the {self.name} artifact is checked by the "
            f"{self.check_name} in '{self.manifest_section}')"
        )

    def verified_line(self, errors: str) -> str:
        return f"the passes' fp32 graph verified against the source: {errors}; {self.name} judged by its {self.check_name}"
