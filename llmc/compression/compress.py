"""``llmc compress``: prune an encoder's FFN neurons and layers on the user's text, distill the
pruned model against the original, export it, and report what it cost and what it kept.

The text (one sentence per line) is split: the last tenth (at least 16 lines) is held out and
never trained on; agreement with the original is measured on it before and after distillation.
``DIR/model.onnx`` is exported as ``llmc export`` does (tokenizer included); ``DIR/hf`` holds the
pruned weights as a Hugging Face directory; ``DIR/compress_report.json`` the report.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmc.errors import LlmcError

BATCH, MAX_LENGTH, MIN_LINES = 16, 128, 32
REPORT = "compress_report.json"


@dataclasses.dataclass(frozen=True)
class CompressOptions:
    ffn: float = 0.5  # fraction of every layer's FFN neurons removed
    layers: int | None = None  # layers kept (None: all)
    minutes: float = 5.0  # distillation budget
    seed: int = 0

    def check(self, num_layers: int) -> None:
        if not 0.0 <= self.ffn <= 0.95:
            raise LlmcError(f"--ffn is the fraction of FFN neurons removed, 0 to 0.95, not {self.ffn}")
        if self.layers is not None and not 1 <= self.layers <= num_layers:
            raise LlmcError(f"--layers keeps 1 to {num_layers} layers (the model has {num_layers}), not {self.layers}")
        if self.minutes < 0:
            raise LlmcError(f"--minutes must be >= 0, not {self.minutes}")


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise LlmcError(f"--data {path}: no such file")
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise LlmcError(f"--data {path}: not UTF-8 text (one sentence per line)") from None
    if len(lines) < MIN_LINES:
        raise LlmcError(f"--data {path}: {len(lines)} non-empty lines; give at least {MIN_LINES} sentences, one per line")
    return lines


def _batches(tokenizer: Any, lines: list[str]) -> list[dict[str, Any]]:
    return [
        dict(tokenizer(lines[i : i + BATCH], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))
        for i in range(0, len(lines), BATCH)
    ]


def _parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _gemm_flops(config: Any) -> int:
    """Multiply-adds x 2 per token of the encoder's matrix products (attention scores aside)."""
    hidden, ffn = config.hidden_size, config.intermediate_size
    return 2 * config.num_hidden_layers * (4 * hidden * hidden + 2 * hidden * ffn)


def compress(source: Path, data: Path, output: Path, options: CompressOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Compress the Hugging Face encoder at ``source`` into ``output``; returns the report."""
    from transformers import AutoModel, AutoTokenizer

    from llmc.compression.distill import agreement, distill
    from llmc.compression.prune import check_model, ffn_importance, layer_importance, prune

    if not (source / "config.json").is_file():
        raise LlmcError(f"{source}: not a Hugging Face model directory (no config.json)")
    lines = read_lines(data)
    if output.is_symlink() or output.is_file() or (output.is_dir() and any(output.iterdir())):
        raise LlmcError(f"-o {output} exists and is not an empty directory; choose a new directory")
    began = time.perf_counter()
    teacher = AutoModel.from_pretrained(str(source)).eval()
    check_model(teacher, str(source))
    options.check(teacher.config.num_hidden_layers)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    held = max(16, len(lines) // 10)
    train, holdout = _batches(tokenizer, lines[:-held]), _batches(tokenizer, lines[-held:])
    log(f"measuring importance on {len(lines) - held} sentences ({held} held out)")
    scores = ffn_importance(teacher, train[:8])
    layers = list(range(teacher.config.num_hidden_layers))
    if options.layers is not None and options.layers < len(layers):
        by_layer = layer_importance(teacher, train[:4])
        layers = sorted(np.argsort(by_layer)[::-1][: options.layers].tolist())
    keep_ffn = max(1, round(teacher.config.intermediate_size * (1.0 - options.ffn)))
    student = prune(teacher, keep_ffn, layers, scores)
    before = agreement(student, teacher, holdout)
    log(f"pruned: layers {layers}, {keep_ffn} FFN neurons each; held-out cosine {before['cosine_mean']:.4f}")
    trained = distill(student, teacher, train, options.minutes, log, options.seed)
    after = agreement(student, teacher, holdout)
    log(f"distilled {trained['steps']} steps: held-out cosine {after['cosine_mean']:.4f} (worst {after['cosine_worst']:.4f})")
    report = {
        "source": str(source), "data": str(data), "sentences": {"train": len(lines) - held, "held_out": held},
        "layers_kept": layers, "ffn_neurons": {"before": teacher.config.intermediate_size, "after": keep_ffn},
        "parameters": {"before": _parameters(teacher), "after": _parameters(student)},
        "gemm_flops_per_token": {"before": _gemm_flops(teacher.config), "after": _gemm_flops(student.config)},
        "held_out_agreement": {"pruned": before, "distilled": after}, "distillation": trained,
    }
    _write(student, tokenizer, source, output, report, log)
    report["seconds"] = round(time.perf_counter() - began, 1)
    (output / REPORT).write_text(json.dumps(report, indent=2))
    return report


def _write(student: Any, tokenizer: Any, source: Path, output: Path, report: dict[str, Any], log: Callable[[str], None]) -> None:
    """``output``: the ONNX export (tokenizer included), ``hf/`` the pruned weights."""
    from llmc.export.hf import export_pretrained

    with tempfile.TemporaryDirectory(prefix=".llmc-compress-", dir=output.parent if output.parent.exists() else None) as tmp:
        hf = Path(tmp) / "hf"
        student.save_pretrained(hf)
        tokenizer.save_pretrained(hf)
        log("exporting the compressed model")
        export_pretrained(hf, output, task="encoder")
        shutil.move(str(hf), str(output / "hf"))
    report["files"] = sorted(p.name for p in output.iterdir())
