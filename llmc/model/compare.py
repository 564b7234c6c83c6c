"""Output comparison, modelled on Polygraphy's comparator.

Per output: max absolute error, max relative error (absolute error over the reference's largest
magnitude, i.e. relative to the output's scale), and cosine similarity. An output passes when
its max absolute error is within ``tolerance * max(1, max|reference|)``; integer and boolean
outputs must match exactly; NaN/Inf must appear in the same places (a candidate NaN/Inf where the
reference is finite is a mismatch), and an output whose reference has no finite value at all
fails: there is nothing to compare. :func:`check_finite_reference` refuses such a reference
before a build compares anything.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from llmc.errors import LlmcError
from llmc.model.decoder import LOGITS_TO_KEEP


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
    finite = np.isfinite(ref64)
    if finite.size and not finite.any():
        return _failed(name, "the reference is NaN/Inf everywhere: nothing to compare")
    if (finite & ~np.isfinite(out64)).any():
        return _failed(name, "NaN/Inf where the reference is finite")
    special = ~finite  # the reference's own NaN/Inf: the candidate must repeat them exactly
    if not np.array_equal(ref64[special], out64[special], equal_nan=True):
        return _failed(name, "NaN/Inf differ from the reference")
    diff = np.abs(ref64[finite] - out64[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref64[finite]).max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    similarity = cosine(ref64[finite], out64[finite])
    limit = 0.0 if exact else tolerance * max(1.0, scale)
    passed = max_abs <= limit
    reason = "" if passed else f"max abs error {max_abs:.3g} > {limit:.3g}"
    return OutputDiff(name, max_abs, max_rel, similarity, scale, passed, reason)


def _failed(name: str, reason: str) -> OutputDiff:
    return OutputDiff(name, np.inf, np.inf, 0.0, 0.0, False, reason)


def check_finite_reference(outputs: dict[str, np.ndarray], what: str, seeded: bool) -> None:
    """Refuse reference outputs that verification cannot judge, in one line naming the output.

    With seeded inputs any NaN/Inf is refused: the random data is outside the model's domain
    and real inputs are needed. With the user's inputs only an output with no finite value is
    (a legacy decoder export gives NaN on the rows of a fully padded prompt, and the other rows
    still verify).
    """
    for name, array in outputs.items():
        values = np.asarray(array)
        if values.dtype.kind not in "fc" or values.size == 0:
            continue
        bad = values.size - int(np.count_nonzero(np.isfinite(values)))
        if bad and (seeded or bad == values.size):
            kinds = "/".join(k for k, f in (("NaN", np.isnan), ("Inf", np.isinf)) if f(values).any())
            fix = "give real inputs with --inputs FILE.npz" if seeded else "give inputs on which it is finite"
            raise LlmcError(
                f"{what} gives {kinds} in output '{name}' ({bad} of {values.size} values) on the "
                f"{'seeded' if seeded else 'given'} verification inputs, so comparing with it proves nothing; {fix}"
            )


def check_same_interface(reference: ir.Model, candidate: ir.Model, names: tuple[str, str]) -> None:
    """Refuse comparing two models whose inputs or outputs differ in name, rank, fixed dims or
    kind of type; the line says which (``names``: how to call the two models, e.g. their files).
    Float widths may differ (an artifact built with ``--fp16-io`` takes float16)."""
    for kind, a, b in (
        ("inputs", _interface(reference.graph.inputs, reference), _interface(candidate.graph.inputs, candidate)),
        ("outputs", _interface(reference.graph.outputs), _interface(candidate.graph.outputs)),
    ):
        if set(a) != set(b):
            raise LlmcError(
                f"{names[0]} and {names[1]} have different {kind}: {', '.join(a) or 'none'} vs "
                f"{', '.join(b) or 'none'}; compare a model with an artifact built from it"
            )
        for name, (dtype, shape) in a.items():
            other_dtype, other_shape = b[name]
            if not _same_kind(dtype, other_dtype) or not _same_dims(shape, other_shape):
                raise LlmcError(
                    f"{kind[:-1]} '{name}' is {dtype} {_dims(shape)} in {names[0]} but {other_dtype} "
                    f"{_dims(other_shape)} in {names[1]}; compare a model with an artifact built from it"
                )


def _interface(values, model: ir.Model | None = None) -> dict[str, tuple[str, ir.Shape | None]]:
    """name -> (element type, shape) of graph inputs (without initializer defaults) or outputs."""
    skip = {*model.graph.initializers, LOGITS_TO_KEEP} if model is not None else set()  # a build's input (0: the source's)
    return {v.name: (_type_name(v.dtype), v.shape) for v in values if v.name not in skip}


def _type_name(dtype: ir.DataType | None) -> str:
    if dtype is None:
        return "untyped"
    try:
        return str(np.dtype(dtype.numpy()))
    except Exception:  # a type numpy lacks (e.g. float8)
        return str(dtype).lower()


def _same_kind(a: str, b: str) -> bool:
    return a == b or (a.startswith(("float", "bfloat")) and b.startswith(("float", "bfloat")))


def _same_dims(a: ir.Shape | None, b: ir.Shape | None) -> bool:
    """Same rank and the same size wherever both fix one (symbols may differ)."""
    if a is None or b is None:
        return True
    if len(a) != len(b):
        return False
    return all(x == y for x, y in zip(a, b, strict=True) if isinstance(x, int) and isinstance(y, int) and x >= 0 and y >= 0)


def _dims(shape: ir.Shape | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d.value or "?") for d in shape) + "]"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays as vectors: 1.0 for two zero vectors, 0.0 when either is
    zero alone or not finite (NaN/Inf never count as agreement)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    if not np.isfinite(na * nb):
        return 0.0
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))


def token_nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (float64) of ``ids[1:]`` under full-sequence ``logits`` [sequence,
    vocab] (position ``j`` predicts token ``j + 1``)."""
    shifted = logits[:-1].astype(np.float64)
    shifted -= shifted.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1))
    return log_z - shifted[np.arange(len(ids) - 1), np.asarray(ids)[1:]]
