"""The roofline benchmark's tables (no model runs): a row per system, n/a rows, op types by system."""

from __future__ import annotations

from benchmarks import roofline


def _report(ms: float, ops: dict[str, float]) -> dict:
    return {
        "ms_per_token": ms, "bytes_per_token": 2e6, "weight_bytes": 1.5e6, "kv_bytes": 0.5e6, "gathered_out": 1e6,
        "achieved_gbs": 2e6 / ms / 1e6, "floor_ms": 0.2, "floor_pct": 100 * 0.2 / ms, "file_nodes": 10,
        "session_nodes": 9, "kernels_per_step": 9.0, "profiled_ms": ms * 1.2, "between_kernels_ms": 0.1,
        "ops": [{"op_type": op, "ms": t, "nodes": 2, "bytes": 1e6 if op == "MatMulNBits" else 0, "gbs": 1.0,
                 "floor_pct": 10.0} for op, t in ops.items()],
    }


def test_tables():
    reports = {
        "llmc-int4": _report(2.0, {"MatMulNBits": 1.5, "Add": 0.2, "Sub": 0.01}),
        "llmc-int4-fast": _report(1.0, {"MatMulNBits": 0.7, "Shape": 0.02}),
        "llmc-int4-genai": {"error": "n/a: failed"},
        "genai-int4": _report(0.9, {"MatMulNBits": 0.6, "GroupQueryAttention": 0.1}),
    }
    summary = roofline.summary(reports)
    assert summary.count("\n| ") == len(roofline.SYSTEMS) and "n/a: failed" in summary  # a row each
    table = roofline.by_op(reports)
    lines = table.splitlines()
    assert lines[2].startswith("| MatMulNBits | 1.50 ms x2, 1.0 MB")
    assert "| 2 op types under 0.05 ms each | 0.01 ms | 0.02 ms | 0.00 ms |" in table
    assert "| Add | 0.20 ms x2 |  |  |" in table and table.rstrip().endswith("| 2.40 ms | 1.20 ms | 1.08 ms |")
