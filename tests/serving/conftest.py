"""Artifacts the serving tests serve: a tiny BERT (``/v1/infer``) and a tiny llama decoder (completions),
built once per session (the tiny task models, ``embedder`` and ``cross_encoder``, are in
tests/conftest.py)."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def artifacts(tiny_bert_dynamo, tmp_path_factory):
    """(a tiny BERT encoder, a tiny llama decoder exported by ``llmc export``), built."""
    pytest.importorskip("transformers")
    import llmc
    from llmc.cli.main import app
    from llmc.export import llama_model
    from tests.export.test_export_cli import _save

    root = tmp_path_factory.mktemp("serve")
    encoder = llmc.build(tiny_bert_dynamo, output=root / "bert", cache=False, threads=1)
    model = llama_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=64, max_position_embeddings=128, bos_token_id=2, eos_token_id=3)
    source = _save(model, root / "hf", 64)
    assert CliRunner().invoke(app, ["export", str(source), "-o", str(root / "export")]).exit_code == 0
    decoder = llmc.build(root / "export" / "model.onnx", output=root / "llama", cache=False, threads=1)
    return encoder.path, decoder.path
