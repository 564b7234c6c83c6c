"""``llmc compress``: FFN neurons and layers removed physically by measured importance, the
student distilled on held-in text, exported and reported; bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from llmc.cli.main import app

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from tests.compression.conftest import assert_export_matches  # noqa: E402
from tests.export.test_export_cli import bert_dir, gpt2_dir  # noqa: E402, F401  (fixtures)

runner = CliRunner()
WORDS = "the quick brown fox jumps over a lazy dog while seven bright stars slowly fade into morning".split()


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("text") / "sentences.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS, size=rng.integers(4, 12))) for _ in range(64)) + "\n")
    return path


def _batch(tokenizer, lines):
    return dict(tokenizer(lines, padding=True, return_tensors="pt"))


def test_pruning_nothing_is_the_same_model_and_pruning_removes_the_least_important(bert_dir):  # noqa: F811
    from transformers import AutoModel, AutoTokenizer

    from llmc.compression import importance
    from llmc.compression.arch import BERT
    from llmc.compression.prune import Plan, prune

    model = AutoModel.from_pretrained(str(bert_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(bert_dir))
    batches = [_batch(tokenizer, ["the quick brown fox", "a lazy dog"])]
    with torch.no_grad():
        model.encoder.layer[0].output.dense.weight[:, 5] = 0.0  # neuron 5 of layer 0 writes nothing
    ffn, heads = importance.activation(model, BERT, batches)
    assert ffn[0][5] == 0.0 and ffn[0].argmin() == 5
    same = prune(model, BERT, Plan([0, 1], model.config.intermediate_size, 2), ffn, heads)
    with torch.no_grad():
        torch.testing.assert_close(same(**batches[0]).last_hidden_state, model(**batches[0]).last_hidden_state)
    small = prune(model, BERT, Plan([1], 16, 2), ffn, heads)
    assert small.config.num_hidden_layers == 1 and small.config.intermediate_size == 16
    assert tuple(small.encoder.layer[0].intermediate.dense.weight.shape) == (16, model.config.hidden_size)
    assert tuple(small.encoder.layer[0].output.dense.weight.shape) == (model.config.hidden_size, 16)
    kept = np.sort(np.argsort(-ffn[1], kind="stable")[:16])
    torch.testing.assert_close(small.encoder.layer[0].output.dense.weight, model.encoder.layer[1].output.dense.weight[:, kept])


def test_compress_writes_export_weights_and_report(bert_dir, text, tmp_path):  # noqa: F811
    out = tmp_path / "small"
    result = runner.invoke(app, ["compress", str(bert_dir), "--data", str(text), "-o", str(out), "--ffn", "0.5",
                                 "--layers", "1", "--minutes", "0.02", "--allow-loss"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "compress_report.json").read_text())
    assert report["sentences"] == {"train": 48, "held_out": 16}
    assert report["ffn_neurons"]["after"] == report["ffn_neurons"]["before"] // 2 and len(report["layers_kept"]) == 1
    assert report["parameters"]["after"] < report["parameters"]["before"]
    assert report["distillation"]["steps"] >= 1
    for stage in ("pruned", "distilled"):
        assert -1.0 <= report["held_out_agreement"][stage]["cosine_mean"] <= 1.0
    from transformers import AutoModel, AutoTokenizer

    student = AutoModel.from_pretrained(str(out / "hf")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out / "hf"))
    assert_export_matches(out / "model.onnx", student, tokenizer, "the quick brown fox jumps")
    assert (out / "tokenizer.json").is_file()


def test_bad_input_is_one_line(bert_dir, gpt2_dir, text, tmp_path):  # noqa: F811
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    cases = [
        ([str(gpt2_dir), "--data", str(text)], "BERT-style encoders and LLaMA-style decoders"),
        ([str(bert_dir), "--data", str(text), "--heads", "1.5"], "--heads"),
        ([str(bert_dir), "--data", str(text), "--sparsity", "1:4"], "only 2:4"),
        ([str(bert_dir), "--data", str(text), "--target-speedup", "0.5"], "--target-speedup must be above 1"),
        ([str(bert_dir), "--data", str(text), "--target-speedup", "2", "--ffn", "0.5"], "not both"),
        ([str(bert_dir), "--data", str(text), "--target-speedup", "50"], "cannot be reached"),
        ([str(bert_dir), "--data", str(text), "--importance", "taylor"], "decoders only"),
        ([str(bert_dir), "--data", str(text), "--importance", "magic"], "--importance must be one of"),
        ([str(bert_dir), "--data", str(empty)], "at least 32 sentences"),
        ([str(bert_dir), "--data", str(tmp_path / "missing.txt")], "no such file"),
        ([str(bert_dir), "--data", str(text), "--ffn", "1.5"], "--ffn"),
        ([str(bert_dir), "--data", str(text), "--layers", "0"], "--layers keeps 1 to 2"),
        ([str(tmp_path), "--data", str(text)], "no config.json"),
        ([str(text), "--data", str(text)], "no config.json"),
    ]
    for index, (args, words) in enumerate(cases):
        result = runner.invoke(app, ["compress", *args, "-o", str(tmp_path / f"o{index}")])
        assert result.exit_code == 1 and words in result.output, (args, result.output)
    result = runner.invoke(app, ["compress", str(bert_dir), "--data", str(text), "-o", str(taken)])
    assert result.exit_code == 1 and "not an empty directory" in result.output


def test_replaced_tokens_keep_special_positions_and_padding():
    from llmc.compression.distill import replace_tokens

    ids = torch.arange(1, 41).reshape(2, 20)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    ids[1, 12:] = 0
    got = replace_tokens({"input_ids": ids, "attention_mask": mask}, np.random.default_rng(0), rate=0.5)["input_ids"]
    assert got[:, 0].tolist() == [1, 21] and got[0, 19] == 20 and got[1, 11] == 32  # [CLS] / [SEP] kept
    assert (got[1, 12:] == 0).all()  # padding kept
    changed = (got != ids).sum().item()
    assert 4 <= changed <= 24  # about half of the 28 inner tokens (a few draw their own value)
    inner = torch.cat([ids[0, 1:19], ids[1, 1:11]])
    assert set(got[got != ids].tolist()) <= set(inner.tolist())  # drawn from the batch's own tokens
