"""Attention heads pruned (BERT: PrunedBertModel; LLaMA: whole heads per key/value group), LLaMA
decoders compressed end to end with logit distillation, Taylor importance."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llmc.cli.main import app
from tests.compression.conftest import assert_export_matches, batch

torch = pytest.importorskip("torch")
runner = CliRunner()


def _load(path, decoder=False):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    model = (AutoModelForCausalLM if decoder else AutoModel).from_pretrained(str(path)).eval()
    return model, AutoTokenizer.from_pretrained(str(path))


def test_bert_heads_removed_are_the_silent_ones_and_the_directory_reloads(bert4_dir, tmp_path):
    from transformers import AutoModel

    from llmc.compression import importance
    from llmc.compression.arch import BERT
    from llmc.compression.prune import Plan, prune
    from llmc.export.pruned_bert import PrunedBertModel

    model, tokenizer = _load(bert4_dir)
    feeds = batch(tokenizer, ["w4 w5 w6 w7", "w8 w9"])
    with torch.no_grad():
        model.encoder.layer[1].attention.output.dense.weight[:, 16:24] = 0.0  # head 2 of layer 1 adds nothing
    ffn, heads = importance.activation(model, BERT, [feeds])
    assert heads[1][2] == 0.0 and heads[1].argmin() == 2 and heads[0].min() > 0
    full = prune(model, BERT, Plan([0, 1], 64, 4), ffn, heads)
    assert type(full).__name__ == "BertModel"  # no head removed: a plain BertConfig
    small = prune(model, BERT, Plan([0, 1], 64, 3), ffn, heads)
    assert isinstance(small, PrunedBertModel) and small.config.attention_heads_kept == [3, 3]
    assert tuple(small.encoder.layer[1].attention.self.query.weight.shape) == (24, 32)
    with torch.no_grad():  # layer 1 lost only a silent head; layer 0 lost a real one
        torch.testing.assert_close(small.encoder.layer[1].attention.output.dense.weight,
                                   model.encoder.layer[1].attention.output.dense.weight[:, [*range(16), *range(24, 32)]])
    small.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "pruned_bert.py").is_file()
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "llmc_pruned_bert" and config["auto_map"]["AutoModel"] == "pruned_bert.PrunedBertModel"
    for loaded in (AutoModel.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True),
                   PrunedBertModel.from_pretrained(str(tmp_path / "hf"))):
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(**feeds).last_hidden_state, small(**feeds).last_hidden_state)


def test_compress_bert_heads_exports_what_the_hf_directory_computes(bert4_dir, text, tmp_path):
    out = tmp_path / "small"
    result = runner.invoke(app, ["compress", str(bert4_dir), "--data", str(text), "-o", str(out), "--heads", "0.5",
                                 "--ffn", "0.25", "--minutes", "0.02", "--allow-loss"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "compress_report.json").read_text())
    assert report["attention_heads"] == {"before": 4, "after": 2} and report["ffn_neurons"]["after"] == 48
    assert report["flops_per_token"]["after"] < report["flops_per_token"]["before"]
    assert report["latency_ms"]["original"] > 0 and report["latency_ms"]["compressed"] > 0
    from llmc.export.pruned_bert import PrunedBertModel

    student = PrunedBertModel.from_pretrained(str(out / "hf")).eval()
    _, tokenizer = _load(bert4_dir)
    assert_export_matches(out / "model.onnx", student, tokenizer, "w4 w5 w6 w7 w8")
    # llmc export reads the directory with llmc's own class (no code from the directory runs)
    again = runner.invoke(app, ["export", str(out / "hf"), "-o", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output


def test_llama_heads_keep_every_key_value_group(llama_dir):
    from llmc.compression import importance
    from llmc.compression.arch import LLAMA
    from llmc.compression.prune import Plan, heads_kept, kept_heads, prune

    model, tokenizer = _load(llama_dir, decoder=True)
    feeds = batch(tokenizer, ["w4 w5 w6 w7", "w8 w9"])
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight[:, 0:8] = 0.0  # query head 0 (group 0) adds nothing
    ffn, heads = importance.activation(model, LLAMA, [feeds])
    assert heads[0][0] == 0.0
    assert heads_kept(model.config, 0.25) == 4 and heads_kept(model.config, 0.5) == 2  # whole heads per group
    assert kept_heads(model.config, heads[0], 2).tolist() == [1, 2 + int(heads[0][3] > heads[0][2])]
    same = prune(model, LLAMA, Plan([0, 1], 64, 4), ffn, heads)
    with torch.no_grad():
        torch.testing.assert_close(same(**feeds).logits, model(**feeds).logits)
    small = prune(model, LLAMA, Plan([0], 48, 2), ffn, heads)
    config = small.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 2, 8)
    assert (config.intermediate_size, config.num_hidden_layers) == (48, 1)
    assert tuple(small.model.layers[0].self_attn.k_proj.weight.shape) == (16, 32)  # the KV cache is unchanged


def test_taylor_scores_a_unit_that_writes_nothing_zero(llama_dir):
    from llmc.compression import importance
    from llmc.compression.arch import LLAMA

    model, tokenizer = _load(llama_dir, decoder=True)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, 7] = 0.0
    ffn, heads = importance.taylor(model, LLAMA, [batch(tokenizer, ["w4 w5 w6 w7 w8", "w9 w10"])])
    assert ffn[1][7] == 0.0 and ffn[1].max() > 0 and heads[0].shape == (4,) and heads[0].max() > 0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # left as it was found


def test_compress_llama_end_to_end(llama_dir, text, tmp_path):
    out = tmp_path / "small"
    result = runner.invoke(app, ["compress", str(llama_dir), "--data", str(text), "-o", str(out), "--heads", "0.5",
                                 "--ffn", "0.25", "--layers", "1", "--minutes", "0.2", "--importance", "taylor", "--allow-loss"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "compress_report.json").read_text())
    agree = report["held_out_agreement"]
    assert agree["distilled"]["teacher_perplexity"] == agree["pruned"]["teacher_perplexity"] > 1
    assert 0 <= agree["distilled"]["top1_agreement"] <= 1 and report["distillation"]["steps"] >= 1
    assert "decode step" in report["latency_ms"]["what"]
    student, _ = _load(out / "hf", decoder=True)
    assert student.config.num_attention_heads == 2 and student.config.num_hidden_layers == 1
    assert {"model.onnx", "tokenizer.json", "generation_config.json"} <= set(report["files"])
    import llmc

    artifact = llmc.build(out / "model.onnx", output=tmp_path / "art")
    tokens = llmc.load(artifact.path).generate([[4, 5, 6]], max_new_tokens=3, min_new_tokens=3)[0].token_ids
    with torch.no_grad():
        want = student.generate(torch.tensor([[4, 5, 6]]), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert tokens == want[0, 3:].tolist()


def test_target_speedup_is_for_encoders(llama_dir, text, tmp_path):
    result = runner.invoke(app, ["compress", str(llama_dir), "--data", str(text), "-o", str(tmp_path / "o"),
                                 "--target-speedup", "1.5"])
    assert result.exit_code == 1 and "for a decoder give --heads/--ffn/--layers" in result.output
