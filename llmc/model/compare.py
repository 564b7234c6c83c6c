"""Output comparison, modelled on Polygraphy's comparator.

Per output: max absolute error, max relative error (absolute error over the reference's largest
magnitude, i.e. relative to the output's scale), and cosine similarity. An output passes when
its max absolute error is within ``tolerance * max(1, max|reference|)``; integer and boolean
outputs must match exactly; NaN/Inf must appear in the same places.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class OutputDiff:
    name: str
    max_abs_error: float
    max_rel_error: float
    cosine: float
    scale: float
    passed: bool
    reason: str = ""


@dataclasses.dataclass
class Comparison:
    outputs: list[OutputDiff]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((o.max_rel_error for o in self.outputs), default=0.0)

    @property
    def cosine_min(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    def worst(self) -> OutputDiff | None:
        failed = [o for o in self.outputs if not o.passed]
        return failed[0] if failed else None

    def summary(self) -> dict[str, float]:
        return {
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "cosine_min": self.cosine_min,
        }


def compare_outputs(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], tolerance: float = 1e-4
) -> Comparison:
    diffs = []
    for name, ref in reference.items():
        if name not in candidate:
            diffs.append(OutputDiff(name, np.inf, np.inf, 0.0, 0.0, False, "output missing"))
            continue
        diffs.append(_compare_one(name, np.asarray(ref), np.asarray(candidate[name]), tolerance))
    return Comparison(diffs)


def _compare_one(name: str, ref: np.ndarray, out: np.ndarray, tolerance: float) -> OutputDiff:
    if ref.shape != out.shape:
        return OutputDiff(
            name, np.inf, np.inf, 0.0, 0.0, False, f"shape {out.shape} != reference {ref.shape}"
        )
    if ref.dtype.kind in "OUS" or out.dtype.kind in "OUS":
        same = bool(np.array_equal(ref, out))
        return OutputDiff(name, 0.0 if same else np.inf, 0.0 if same else np.inf, 1.0 if same else 0.0,
                          0.0, same, "" if same else "values differ")
    exact = ref.dtype.kind in "biu"
    ref64 = ref.astype(np.float64)
    out64 = out.astype(np.float64)
    ref_nan, ref_inf = np.isnan(ref64), np.isinf(ref64)
    same_special = (
        np.array_equal(ref_nan, np.isnan(out64))
        and np.array_equal(ref_inf, np.isinf(out64))
        and np.array_equal(ref64[ref_inf], out64[ref_inf])
    )
    if not same_special:
        return OutputDiff(name, np.inf, np.inf, 0.0, 0.0, False, "NaN/Inf differ from the reference")
    finite = ~(ref_nan | ref_inf)
    diff = np.abs(ref64[finite] - out64[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref64[finite]).max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    similarity = cosine(ref64[finite], out64[finite])
    limit = 0.0 if exact else tolerance * max(1.0, scale)
    passed = max_abs <= limit
    reason = "" if passed else f"max abs error {max_abs:.3g} > {limit:.3g}"
    return OutputDiff(name, max_abs, max_rel, similarity, scale, passed, reason)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays as vectors: 1.0 for two zero vectors, 0.0 when either is
    zero alone or not finite (NaN/Inf never count as agreement)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    if not np.isfinite(na * nb):
        return 0.0
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))
