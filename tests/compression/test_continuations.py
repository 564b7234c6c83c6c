"""Decoders write their own training text: the original continues training lines (sampled,
seeded), the tokenizer's padding side is restored, and the texts join the distillation text of a
decoder compress run (counted in its report), never for encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from llmc.cli.main import app

torch = pytest.importorskip("torch")
runner = CliRunner()


def test_the_original_continues_the_lines_reproducibly(llama_dir):
    from llmc.compression.arch import load_teacher
    from llmc.compression.continuations import continuations

    teacher, tokenizer, _ = load_teacher(llama_dir)
    lines = [f"w{i} w{i + 1} w{i + 2}" for i in range(4, 40)]
    first = continuations(teacher, tokenizer, lines, count=8, new_tokens=6, seed=3)
    assert len(first) == 8 and tokenizer.padding_side == "right"
    assert all(len(t.split()) > len(line.split()) for t, line in zip(first, lines[:: len(lines) // 8], strict=False))
    assert continuations(teacher, tokenizer, lines, count=8, new_tokens=6, seed=3) == first
    assert continuations(teacher, tokenizer, [], count=8) == []


def test_a_decoder_run_trains_on_them_and_reports_it(llama_dir, tmp_path):
    rng = np.random.default_rng(0)
    text = tmp_path / "t.txt"
    text.write_text("\n".join(" ".join(f"w{i}" for i in rng.integers(4, 60, size=8)) for _ in range(40)) + "\n")
    out = tmp_path / "o"
    result = runner.invoke(app, ["compress", str(llama_dir), "--data", str(text), "-o", str(out), "--ffn", "0.25",
                                 "--minutes", "0.05", "--allow-loss"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "compress_report.json").read_text())
    assert report["self_text"]["texts"] > 0 and "continuations" in result.output
