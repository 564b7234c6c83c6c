"""The benchmarks' shared harness (RESULTS.md sections) and the GPU benchmark's CLI, without a GPU."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from benchmarks import gpu, harness

BEGIN, END = "<!-- x:begin -->", "<!-- x:end -->"


def test_write_section_appends_then_replaces(tmp_path):
    path = tmp_path / "RESULTS.md"
    harness.write_section(BEGIN, END, f"{BEGIN}\none\n{END}", path)  # no file yet
    assert path.read_text() == f"\n\n{BEGIN}\none\n{END}\n"
    path.write_text(f"# Results\n\nbefore\n\n{BEGIN}\none\n{END}\n\nafter\n")
    harness.write_section(BEGIN, END, f"{BEGIN}\ntwo\nlines\n{END}", path)
    assert path.read_text() == f"# Results\n\nbefore\n\n{BEGIN}\ntwo\nlines\n{END}\n\nafter\n"
    harness.write_section("<!-- y:begin -->", "<!-- y:end -->", "<!-- y:begin -->\nthree\n<!-- y:end -->", path)
    assert path.read_text().endswith(f"{END}\n\nafter\n\n<!-- y:begin -->\nthree\n<!-- y:end -->\n")


def test_sentences_are_the_vendored_file_inside_the_checkout():
    # Byte-identical to the text the benchmarks' figures and int8 calibration were measured on.
    assert harness.SENTENCES == harness.ROOT / "benchmarks" / "data" / "sentences.txt"  # via benchmarks.corpus
    data = harness.SENTENCES.read_bytes()
    assert hashlib.sha256(data).hexdigest() == "4dc2bd565fa2d402b24b56643e7c046821e0223a26ee2bc8f023dc5ed123ec0f"
    lines = harness.sentences(0, 5000)
    assert len(lines) == 2000 and harness.sentences(1000, 1032) == lines[1000:1032]


def test_machine_line_names_machine_and_versions():
    line = harness.machine_line()
    assert line.startswith("Machine: ") and "logical cores" in line and "llmc " in line and line.endswith(".")


def _job_ok(n: int) -> dict:
    return {"n": n}


def _job_fails(n: int) -> dict:
    raise RuntimeError(f"job {n} failed")


def test_job_adds_wall_time_and_the_childs_peak_or_reports_the_error():
    result = harness.job(_job_ok, 3)
    assert result["n"] == 3 and result["wall_s"] > 0 and 10 < result["peak_rss_mb"] < 2000
    failed = harness.job(_job_fails, 4)
    assert failed["error"] == "RuntimeError: job 4 failed" and set(failed) == {"error", "wall_s"}


def _row(x: float) -> dict:
    return {"b1_p50": x, "b1_p90": x, "b8_p50": 4 * x, "b8_p90": 4 * x}


def test_gpu_imports_and_parses_without_a_gpu(capsys):
    code = "import sys, benchmarks.gpu; print(sorted(m for m in ('tensorrt', 'torch', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    with pytest.raises(SystemExit) as exit_:
        gpu.parse_args(["--help"])
    assert exit_.value.code == 0 and "--runs" in capsys.readouterr().out
    args = gpu.parse_args(["--runs", "150", "--models", "minilm"])
    assert (args.runs, args.warmup, args.models) == (150, 20, "minilm")
    with pytest.raises(SystemExit):
        gpu.parse_args(["--runs", "5"])


def test_gpu_render_rows_and_failures():
    rows = [
        {"model": "BERT-base", "label": "ORT CUDA EP fp32, raw export", "build_s": None, **_row(2.0)},
        {"model": "BERT-base", "label": "llmc trt-fp16", "build_s": 41.3, **_row(0.5)},
        {"model": "BERT-base", "label": "llmc trt-int8", "error": "build failed: a|b"},
    ]
    text = gpu.render(rows, gpu="NVIDIA H200, 570.1, 143771 MiB", cuda="12.8", commit="abc1234",
                      stack="TensorRT 10, onnxruntime 1.22 (CUDAExecutionProvider), torch 2.7", runs=200, warmup=20)
    assert "- GPU: NVIDIA H200 (143771 MiB), driver 570.1, CUDA 12.8 (driver API)" in text
    assert "| llmc trt-fp16 | 41 | 0.500 | 0.500 | 0.25 | 2.000 | 2.000 | 0.25 |" in text
    assert "| ORT CUDA EP fp32, raw export | - | 2.000 |" in text
    assert "| llmc trt-int8 | build failed: a/b | | | | | | |" in text
    assert f"`llmc build MODEL ... {' '.join(gpu.SHAPES)}`" in text and "input_ids:1x128:1x128:8x128" in text
