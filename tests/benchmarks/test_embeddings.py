"""The embeddings benchmark's tables (no model runs): the ONNX backend's column and line where it
ran, the skip line where its side environment is missing."""

from __future__ import annotations

from pathlib import Path

from benchmarks import embeddings


def _row(rate: float, vs_anchor: float, vs_onnx: float | None = None) -> dict:
    row = {"sentences_per_s": rate, "runs": [rate], "vs_anchor": vs_anchor, "cosine_mean": 0.9999, "cosine_worst": 0.999}
    if vs_onnx is not None:
        row["vs_onnx"] = vs_onnx
    return row


def _rows(onnx: bool) -> dict:
    rows = {
        embeddings.TORCH: {"1": _row(70, 1.0, 0.5 if onnx else None), "32": _row(110, 1.0, 0.8 if onnx else None)},
        "llmc fp32": {"1": _row(220, 3.1, 1.6 if onnx else None), "32": _row(300, 2.7, 2.2 if onnx else None), "padding": "bucket"},
        "llmc int8": {"1": _row(400, 5.7, 2.9 if onnx else None), "32": _row(650, 5.9, 4.7 if onnx else None), "padding": "bucket"},
    }
    if onnx:
        rows[embeddings.ONNX] = {"1": _row(140, 2.0, 1.0), "32": _row(137, 1.25, 1.0), "versions": {"optimum-onnx": "0.1.0"}}
    return rows


def test_table_with_the_onnx_backend():
    rows = _rows(onnx=True)
    table = embeddings.table(rows)
    assert "vs sentence-transformers (ONNX)" in table.splitlines()[0]
    assert "| llmc int8 | 32 | 650.0 | 5.90x | 4.70x | 0.999900 / 0.999000 |" in table
    assert "| sentence-transformers (ONNX) | 1 | 140.0 | 2.00x | 1.00x |" in table
    assert "ran in .cache/venv-st-onnx" in embeddings.onnx_line(rows) and "optimum-onnx 0.1.0" in embeddings.onnx_line(rows)
    assert "ONNX" not in embeddings.verdicts(rows)  # no target against it


def test_table_without_it_says_how_to_get_it(monkeypatch, tmp_path: Path):
    rows = _rows(onnx=False)
    table = embeddings.table(rows)
    assert "(ONNX)" not in table and "| llmc fp32 | 1 | 220.0 | 3.10x | 0.999900 / 0.999000 |" in table
    assert "make bench-st-onnx" in embeddings.onnx_line(rows)
    monkeypatch.setattr(embeddings, "ST_PYTHON", tmp_path / "no-such-python")
    assert embeddings.st_onnx_model() is None
