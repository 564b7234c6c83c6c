"""Benchmark models, exported once and cached under .cache/models (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

from llmc.export import bert_model, export_decoder, export_encoder, gpt2_model, llama_model, minilm_model

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


def gpt2(dynamo: bool = True) -> Path:
    """GPT-2 small (124M, GPT2Config defaults) with its KV cache, random weights; see export_decoder."""
    path = CACHE / f"gpt2-{'dynamo' if dynamo else 'legacy'}.onnx"
    if not path.exists():
        export_decoder(gpt2_model(), path, dynamo=dynamo)
    return path


def llama(dynamo: bool = True) -> Path:
    """The ~100M LLaMA-style decoder of llama_model() (GQA 12/4 heads) with its KV cache, random weights."""
    path = CACHE / f"llama-{'dynamo' if dynamo else 'legacy'}.onnx"
    if not path.exists():
        export_decoder(llama_model(), path, dynamo=dynamo)
    return path
