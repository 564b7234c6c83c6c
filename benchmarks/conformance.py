"""ONNX backend node cases as a semantics oracle for the default pipeline.

Every node case that ONNX Runtime itself passes (ORT_DISABLE_ALL, the case's own tolerances)
must still pass after llmc's default ORT pipeline. Cases ONNX Runtime fails, or whose inputs
are not plain tensors, are skipped with the reason.

    python -m benchmarks.conformance      # prints the counts
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from llmc.compiler.stages import target_passes
from llmc.errors import LlmcError
from llmc.model import io as model_io
from llmc.passes.manager import PassManager
from llmc.runtime.ort import REFERENCE_CONFIG, OrtRunner, create_session


@dataclasses.dataclass
class CaseResult:
    name: str
    status: str  # "pass", "fail", "skip"
    reason: str = ""


def load_cases() -> list[Any]:
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np_err = np.seterr(all="ignore")
        try:
            return load_model_tests(kind="node")
        finally:
            np.seterr(**np_err)


def _run_ort(model: onnx.ModelProto, inputs: list[Any]) -> list[np.ndarray]:
    session = create_session(model.SerializeToString(), REFERENCE_CONFIG)
    names = [i.name for i in session.get_inputs()]
    runner = OrtRunner(session)
    out = runner.run(dict(zip(names, inputs, strict=True)))
    return [out[n] for n in runner.output_names]


def _matches(expected: list[Any], actual: list[np.ndarray], rtol: float, atol: float) -> str:
    if len(expected) != len(actual):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        e = np.asarray(e)
        if e.shape != a.shape:
            return f"output {i}: shape {a.shape}, expected {e.shape}"
        if e.dtype.kind in "OUS":
            if not np.array_equal(e, a):
                return f"output {i}: values differ"
            continue
        try:
            np.testing.assert_allclose(a.astype(e.dtype), e, rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError:
            return f"output {i}: values differ beyond rtol={rtol}, atol={atol}"
        except TypeError:
            if not np.array_equal(a, e):
                return f"output {i}: values differ"
    return ""


def _as_array(x: Any) -> np.ndarray | None:
    """A numpy array ONNX Runtime can take, or None (sequences, optionals, exotic dtypes)."""
    if isinstance(x, onnx.TensorProto):
        try:
            x = onnx.numpy_helper.to_array(x)
        except Exception:
            return None
    if isinstance(x, np.generic):
        x = np.asarray(x)
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biufcOUS":
        return None
    return x


def _tensor_data_sets(model: onnx.ModelProto, data_sets: list[Any]) -> list[Any] | None:
    for value in list(model.graph.input) + list(model.graph.output):
        if not value.type.HasField("tensor_type"):
            return None
    out = []
    for inputs, outputs in data_sets:
        ins, outs = [_as_array(x) for x in inputs], [_as_array(x) for x in outputs]
        if any(x is None for x in (*ins, *outs)):
            return None
        out.append((ins, outs))
    return out


def compile_default(model: onnx.ModelProto) -> onnx.ModelProto:
    """The default ORT pipeline on an in-memory model, as ``llmc build`` runs it."""
    ir_model = ir.serde.deserialize_model(model)
    model_io.normalize(ir_model)
    PassManager(*target_passes("ort")).run(ir_model)
    model_io.normalize(ir_model)
    return ir.serde.serialize_model(ir_model)


def check_case(case: Any) -> CaseResult:
    data_sets = _tensor_data_sets(case.model, case.data_sets)
    if data_sets is None:
        return CaseResult(
            case.name, "skip", "inputs/outputs are sequences, optionals or dtypes numpy lacks"
        )
    try:
        for inputs, expected in data_sets:
            if why := _matches(expected, _run_ort(case.model, inputs), case.rtol, case.atol):
                return CaseResult(case.name, "skip", f"ONNX Runtime itself fails: {why}")
    except LlmcError as exc:
        return CaseResult(case.name, "skip", f"ONNX Runtime cannot run it: {str(exc)[:120]}")
    except Exception as exc:  # ORT raises its own types for bad feeds etc.
        return CaseResult(case.name, "skip", f"ONNX Runtime cannot run it: {str(exc)[:120]}")
    compiled = compile_default(case.model)
    for inputs, expected in data_sets:
        try:
            actual = _run_ort(compiled, inputs)
        except Exception as exc:
            return CaseResult(case.name, "fail", f"compiled model does not run: {str(exc)[:200]}")
        if why := _matches(expected, actual, case.rtol, case.atol):
            return CaseResult(case.name, "fail", why)
    return CaseResult(case.name, "pass")


def summarize(results: list[CaseResult]) -> dict[str, Any]:
    counts = collections.Counter(r.status for r in results)
    reasons = collections.Counter(r.reason.split(":")[0] for r in results if r.status == "skip")
    return {
        "cases": len(results),
        "ran": counts["pass"] + counts["fail"],
        "passed": counts["pass"],
        "failed": counts["fail"],
        "skipped": counts["skip"],
        "skip_reasons": dict(reasons.most_common()),
        "failures": [f"{r.name}: {r.reason}" for r in results if r.status == "fail"],
    }


def quiet() -> None:
    """ONNX Runtime logs every failing kernel of the skipped cases; the results say enough."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)


def main() -> None:
    quiet()
    results = [check_case(case) for case in load_cases()]
    summary = summarize(results)
    for key in ("cases", "ran", "passed", "failed", "skipped"):
        print(f"{key}: {summary[key]}")
    for reason, n in summary["skip_reasons"].items():
        print(f"  skipped, {reason}: {n}")
    for failure in summary["failures"]:
        print(f"  FAIL {failure}")


if __name__ == "__main__":
    main()
