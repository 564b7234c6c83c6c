"""The decode benchmark's bookkeeping (no model runs): medians over rounds, agreement, the table."""

from __future__ import annotations

import numpy as np

from benchmarks import decode


def test_row_takes_medians_and_scores_against_the_reference():
    windows = [[1, 2, 3, 4], [4, 3, 2, 1]]
    reference = [np.eye(5, dtype=np.float32)[[2, 3, 4, 0]], np.eye(5, dtype=np.float32)[[3, 2, 1, 0]]]
    found = [reference[0], reference[1].copy()]
    found[1][0] = np.eye(5)[4]  # one of 6 scored positions disagrees
    runs = {
        "b1@128": [{"ttft_ms": 10, "ms_per_token": 3, "tokens": [[1, 2]], "bytes": 100},
                   {"ttft_ms": 30, "ms_per_token": 5, "tokens": [[1, 2]]}, {"error": "boom"}],
        "b1@1024": [{"error": "n/a: no"}],
        "b4@128": [{"ttft_ms": 1, "ms_per_token": 2, "tokens": [[1], [1], [1], [1]]}],
    }
    row = decode._row(runs, found, reference, windows)
    assert row["b1@128"] == {"ttft_ms": 20, "ms_per_token": 4} and row["b1@1024"] == {"error": "n/a: no"}
    assert row["bytes"] == 100 and row["tokens"] == [1, 2]
    assert abs(row["top1"] - 5 / 6) < 1e-9 and row["perplexity"] > 1
    assert decode._same_prefix([1, 2, 3], [1, 2, 4]) == 2


def test_table_renders_every_system_and_its_floor():
    good = {
        "b1@128": {"ttft_ms": 100.0, "ms_per_token": 10.0}, "b1@1024": {"ttft_ms": 1.0, "ms_per_token": 12.0},
        "b4@128": {"error": "n/a: batch"}, "bytes": 1e9, "perplexity": 12.0, "top1": 0.95, "greedy_same": 30,
    }
    rows = {system: dict(good) for system in decode.SYSTEMS}
    rows["llamacpp"] = {"b1@128": {"error": "n/a: no GGUF"}, "b1@1024": {"error": "x"}, "b4@128": {"error": "x"},
                        "accuracy": "n/a: no GGUF"}
    text = decode.table("m", rows, gbs=100.0)
    assert text.count("\n| ") == len(decode.SYSTEMS) + 1  # header + one row per system
    assert "| 10.00 / 100% |" in text and "| 95.0% | 30/32 |" in text and "n/a: no GGUF" in text
