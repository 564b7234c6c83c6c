"""Benchmark models, exported once and cached under .cache/models (nothing is downloaded).

``eager=True`` exports with the models' eager attention (explicit MatMul-Softmax-MatMul) instead
of their default sdpa: the form ONNX Runtime's transformers optimizer was written for, so the
legacy eager export is that anchor's best case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmc.export import bert_model, export_decoder, export_encoder, gpt2_model, llama_model, minilm_model

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "models"


def _cached(name: str, make: Any, export: Any, dynamo: bool, eager: bool) -> Path:
    path = CACHE / f"{name}-{'dynamo' if dynamo else 'legacy'}{'-eager' if eager else ''}.onnx"
    if not path.exists():
        model = make()
        if eager:
            model.set_attn_implementation("eager")
        export(model, path, dynamo=dynamo)
    return path


def minilm(dynamo: bool = True, eager: bool = False) -> Path:
    """all-MiniLM-L6-v2, real weights, default (dynamo) or legacy export."""
    return _cached("minilm", minilm_model, export_encoder, dynamo, eager)


def bert_base(dynamo: bool = True, eager: bool = False) -> Path:
    """BERT-base (BertConfig defaults: 12 layers, hidden 768), random weights."""
    return _cached("bert-base", bert_model, export_encoder, dynamo, eager)


def gpt2(dynamo: bool = True, eager: bool = False) -> Path:
    """GPT-2 small (124M, GPT2Config defaults) with its KV cache, random weights; see export_decoder."""
    return _cached("gpt2", gpt2_model, export_decoder, dynamo, eager)


def llama(dynamo: bool = True, eager: bool = False) -> Path:
    """The ~100M LLaMA-style decoder of llama_model() (GQA 12/4 heads) with its KV cache, random weights."""
    return _cached("llama", llama_model, export_decoder, dynamo, eager)


def llama32() -> Path:
    """A 32-layer LLaMA-style decoder (hidden 384, GQA 6/2 heads) with its KV cache, random weights.

    Used to time the memory planner on a deep decoder graph; narrow so that it exports quickly.
    """
    from functools import partial

    make = partial(
        llama_model, num_hidden_layers=32, hidden_size=384, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=1024,
    )
    return _cached("llama32", make, export_decoder, True, False)
