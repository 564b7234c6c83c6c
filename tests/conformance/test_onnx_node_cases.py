"""ONNX backend node cases: every case ONNX Runtime passes must still pass after `llmc build`'s
default pipeline. Counts for RESULTS.md: `python -m benchmarks.conformance`."""

from __future__ import annotations

import pytest

from benchmarks import conformance

conformance.quiet()
CASES = {case.name: case for case in conformance.load_cases()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_node_case_survives_default_pipeline(name: str) -> None:
    result = conformance.check_case(CASES[name])
    if result.status == "skip":
        pytest.skip(result.reason)
    assert result.status == "pass", result.reason


def test_most_node_cases_run() -> None:
    """Guard against the harness silently skipping everything."""
    sample = [conformance.check_case(CASES[n]) for n in sorted(CASES)[:200]]
    ran = sum(r.status != "skip" for r in sample)
    assert ran >= 150, conformance.summarize(sample)
