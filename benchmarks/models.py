"""Benchmark models, exported once and cached under .cache/models (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

from llmc.export import bert_model, export_encoder, minilm_model

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "models"


def minilm(dynamo: bool = True) -> Path:
    """all-MiniLM-L6-v2, real weights, default (dynamo) or legacy export."""
    path = CACHE / f"minilm-{'dynamo' if dynamo else 'legacy'}.onnx"
    if not path.exists():
        export_encoder(minilm_model(), path, dynamo=dynamo)
    return path


def bert_base(dynamo: bool = True) -> Path:
    """BERT-base (BertConfig defaults: 12 layers, hidden 768), random weights."""
    path = CACHE / f"bert-base-{'dynamo' if dynamo else 'legacy'}.onnx"
    if not path.exists():
        export_encoder(bert_model(), path, dynamo=dynamo)
    return path
