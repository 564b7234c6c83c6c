"""`llmc compress` of a decoder with one key/value head (multi-query attention): heads are pruned
within the single group and the student keeps its one key/value head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmc.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def mqa_dir(tmp_path_factory) -> Path:
    from llmc.export.models import llama_model
    from tests.export.test_export_cli import _save

    model = llama_model(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                        intermediate_size=64, vocab_size=64, max_position_embeddings=128)
    return _save(model, tmp_path_factory.mktemp("hf") / "mqa", 64)


@pytest.mark.parametrize("heads", ["0", "0.5"])
def test_a_decoder_with_one_kv_head_compresses(mqa_dir, text, tmp_path, heads):
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", str(mqa_dir), "--data", str(text), "-o", str(out), "--minutes", "0",
                                 "--heads", heads, "--ffn", "0.5", "--allow-loss"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "hf" / "config.json").read_text())
    assert config["num_key_value_heads"] == 1
    assert config["num_attention_heads"] == (2 if heads == "0.5" else 4)
