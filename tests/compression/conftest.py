"""Tiny models and text for the compression tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

WORDS = "w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20 w21 w22 w23".split()


@pytest.fixture(scope="session")
def text(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("text") / "sentences.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS, size=rng.integers(4, 12))) for _ in range(64)) + "\n")
    return path


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """A 2-layer LLaMA with grouped-query attention: 4 query heads over 2 key/value heads."""
    from llmc.export.models import llama_model
    from tests.export.test_export_cli import _save

    model = llama_model(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                        intermediate_size=64, vocab_size=64, max_position_embeddings=128)
    return _save(model, tmp_path_factory.mktemp("hf") / "llama", 64)


@pytest.fixture(scope="session")
def bert4_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT with 4 heads of size 8."""
    from llmc.export import bert_model
    from tests.export.test_export_cli import _save

    model = bert_model(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=64,
                       max_position_embeddings=64)
    return _save(model, tmp_path_factory.mktemp("hf") / "bert4", 64)


def batch(tokenizer, lines):
    return dict(tokenizer(lines, padding=True, return_tensors="pt"))


def assert_export_matches(model_path: Path, student, tokenizer, line: str) -> None:
    """The exported encoder computes what the Hugging Face student computes on ``line``."""
    import onnxruntime as ort
    import torch

    feeds = {k: v.numpy() for k, v in batch(tokenizer, [line]).items()}
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    (got, *_) = session.run(None, {k: v for k, v in feeds.items() if k in names})
    with torch.no_grad():
        want = student(**{k: torch.as_tensor(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
