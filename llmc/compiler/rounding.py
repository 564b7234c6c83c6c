"""fp32's rounding floor: how far a model's outputs move when its float arithmetic is reordered.

``--tolerance`` (1e-4 of each output's scale) judges an fp32 build. Fusions reorder float sums
(a fused norm, attention in one kernel), and how far that moves the outputs is the model's own
conditioning, not the rewrite's correctness. Most models move far less than the tolerance; some
amplify rounding: a mixture of experts re-weights its experts by router scores computed from
the perturbed hidden state. Measured on a 29M-parameter random-weight Mixtral (benchmarks.families'
size), on the build's verification inputs: ONNX Runtime's own graph optimizations (ORT_ENABLE_ALL
against ORT_DISABLE_ALL, the same graph) move its logits by 2.2e-3 (0.99x the tolerance's limit,
2.25e-3), llmc's fusions by 2.9e-3; on a 128-token prompt float32 itself is 5.2e-3 from the
float64 result (LLaMA of the same size: 3.6e-4).

So when an fp32 comparison misses the tolerance, the source model is run once more, with ONNX
Runtime's own optimizations, on the same inputs; its worst relative move times ``FACTOR`` becomes
the limit when that is larger (``FACTOR`` 4: the fusions' move stays below float32's own distance
from the exact result, 2.4x ORT's move on the model above), at most ``CAP`` times the tolerance,
and only for fp32 at the default tolerance (an explicit ``--tolerance`` is kept). The manifest records both (``verification.rounding``). A rule that
computes something else (a lost mask, a dropped scale) misses by orders of magnitude more, and
still fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from llmc.model.compare import Comparison, compare_outputs

if TYPE_CHECKING:
    from llmc.compiler.stages import Prepared

FACTOR = 4.0
CAP = 10.0  # the floor never passes more than 10x the default tolerance


def judged(prep: Prepared, reference: dict[str, np.ndarray], judge: Callable[[float], Comparison]) -> Comparison:
    """``judge(prep.tolerance)``; when that fails, ``judge`` at the model's rounding floor if higher.
    Only at the default tolerance (a ``--tolerance`` the user gave is kept as given)."""
    comparison = judge(prep.tolerance)
    if comparison.worst() is None or prep.request.values.get("tolerance") is not None:
        return comparison
    floor = min(rounding_floor(prep, reference), CAP * prep.tolerance)
    return judge(floor) if floor > prep.tolerance else comparison


def compared(prep: Prepared, reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> Comparison:
    """``outputs`` against ``reference`` at the tolerance, or at the rounding floor (:func:`judged`)."""
    return judged(prep, reference, lambda tolerance: compare_outputs(reference, outputs, tolerance))


def rounding_floor(prep: Prepared, reference: dict[str, np.ndarray]) -> float:
    """``FACTOR`` times the worst relative move of the source's outputs under ONNX Runtime's own
    optimizations (cached on ``prep``; recorded as ``prep.rounding``)."""
    if prep.rounding is None:
        from llmc.compiler.stages import source_outputs
        from llmc.runtime.ort import SessionConfig

        optimized = source_outputs(prep, SessionConfig(intra_op_num_threads=1))
        moved = max((_relative_move(reference[name], optimized[name]) for name in reference if name in optimized), default=0.0)
        prep.rounding = {"ort_optimizations_moved": moved, "factor": FACTOR, "tolerance": FACTOR * moved}
    return float(prep.rounding["tolerance"])


def _relative_move(reference: Any, other: Any) -> float:
    """The max abs difference over ``max(1, scale)``: the quantity ``--tolerance`` bounds."""
    a, b = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if a.dtype.kind not in "fc" or a.shape != b.shape:
        return 0.0
    finite = np.isfinite(a) & np.isfinite(b)
    if not finite.any():
        return 0.0
    scale = float(np.abs(a[finite]).max())
    return float(np.abs(a[finite] - b[finite]).max()) / max(1.0, scale)
