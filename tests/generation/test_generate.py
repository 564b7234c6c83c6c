"""KV-cache generation on a built decoder artifact: greedy matches a plain ONNX Runtime loop on
the exported model, batching, seeded sampling, full-sequence logits, perplexity and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.errors import LlmcError
from tests.cli.test_bad_inputs import _assert_one_line_error

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from tests.export.test_export_cli import _save  # noqa: E402  (needs transformers)

runner = CliRunner()
VOCAB, EOS = 64, 3


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory) -> Path:
    from llmc.export import llama_model

    model = llama_model(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=256, tie_word_embeddings=False, initializer_range=0.5,
        bos_token_id=2, eos_token_id=EOS,
    )  # 256 positions: llmc export records them, and test_min_new_tokens_masks_eos_until_reached goes to 205
    return _save(model, tmp_path_factory.mktemp("hf") / "llama", VOCAB)


@pytest.fixture(scope="module")
def export_dir(hf_source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "llama"
    result = runner.invoke(app, ["export", str(hf_source), "-o", str(out), "--legacy"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def artifact(export_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "llama"
    llmc.build(export_dir / "model.onnx", output=out, cache=False)
    return out


@pytest.fixture(scope="module")
def loaded(artifact):
    return llmc.load(artifact)


def _reference_greedy(model: Path, prompt: list[int], steps: int) -> list[int]:
    """A plain numpy loop on the exported model: present fed back as past, no llmc."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    feeds = {p.name: np.zeros((1, p.shape[1], 0, p.shape[3]), np.float32) for p in pasts}
    ids, length, out = np.array([prompt], np.int64), len(prompt), []
    positions = np.arange(length, dtype=np.int64)[None]
    for _ in range(steps):
        feeds.update(input_ids=ids, attention_mask=np.ones((1, length), np.int64), position_ids=positions)
        logits, *present = session.run(None, feeds)
        token = int(np.argmax(logits[0, -1]))
        out.append(token)
        feeds.update({p.name: value for p, value in zip(pasts, present, strict=True)})
        ids, positions, length = np.array([[token]], np.int64), np.array([[length]], np.int64), length + 1
    return out


def _no_eos(tokens: list[int]) -> list[int]:
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


def test_greedy_is_token_identical_to_a_plain_onnxruntime_loop(loaded, export_dir):
    prompt = [5, 17, 9, 40, 22]
    result = loaded.generate(prompt, max_new_tokens=16)
    assert result.token_ids == _no_eos(_reference_greedy(export_dir / "model.onnx", prompt, 16))
    assert len(set(result.token_ids)) > 1  # the model does not just repeat a token
    assert result.prompt_tokens == 5 and result.ttft_ms > 0 and result.text is not None
    assert result.stop_reason == ("eos" if result.token_ids[-1] == EOS else "length")


def test_a_text_prompt_is_tokenized_with_the_artifact_tokenizer(loaded):
    by_text = loaded.generate("w5 w17 w9", max_new_tokens=8)
    by_ids = loaded.generate([5, 17, 9], max_new_tokens=8)
    assert by_text.token_ids == by_ids.token_ids
    assert by_text.text == " ".join(f"w{t}" for t in by_text.token_ids if t != EOS)


def test_batched_left_padded_greedy_equals_each_prompt_alone(loaded):
    prompts = [[5, 17, 9, 40, 22, 8], [11], [30, 31, 12]]
    batch = loaded.generate(prompts, max_new_tokens=12)
    assert [r.token_ids for r in batch] == [loaded.generate(p, max_new_tokens=12).token_ids for p in prompts]


def test_seeded_sampling_is_reproducible(loaded):
    options = dict(max_new_tokens=12, temperature=1.5, top_k=20, top_p=0.95)
    first = loaded.generate([5, 6], seed=7, **options)
    assert loaded.generate([5, 6], seed=7, **options).token_ids == first.token_ids
    others = [loaded.generate([5, 6], seed=s, **options).token_ids for s in range(8, 12)]
    assert any(tokens != first.token_ids for tokens in others)


def test_sampling_cuts():
    from llmc.generation.sampling import Sampling, choose

    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 200))
    rng = np.random.default_rng(0)
    assert set(choose(logits, Sampling(1.0, top_k=2), rng).tolist()) == {0, 1}
    assert set(choose(logits, Sampling(1.0, top_p=0.7), rng).tolist()) == {0, 1}
    assert set(choose(logits, Sampling(1.0, top_p=0.5), rng).tolist()) == {0}
    assert choose(logits, Sampling(), rng).tolist() == [0] * 200
    with pytest.raises(LlmcError, match="--top-p"):
        Sampling(1.0, top_p=0)


def test_stop_strings_and_streaming(loaded):
    full = loaded.generate("w5 w17", max_new_tokens=10)
    words = full.text.split()
    assert len(words) >= 3
    stopped = loaded.generate("w5 w17", max_new_tokens=10, stop=[words[2]])
    assert stopped.stop_reason == "stop" and stopped.text == full.text[: full.text.index(words[2])]
    pieces: list[str] = []
    streamed = loaded.generate("w5 w17", max_new_tokens=10, stream=pieces.append)
    assert "".join(pieces) == streamed.text == full.text


def test_logits_equal_the_full_sequence_run(loaded):
    ids = np.array([5, 17, 9, 40, 22], np.int64)
    feeds = {
        "input_ids": ids[None], "attention_mask": np.ones((1, 5), np.int64),
        "position_ids": np.arange(5, dtype=np.int64)[None],
    }
    for i in loaded.session.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    expected = loaded.run(feeds)["logits"][0]
    np.testing.assert_allclose(loaded.logits(ids), expected, rtol=1e-5, atol=1e-5)
    assert loaded.logits(np.stack([ids, ids])).shape == (2, 5, VOCAB)


def _perplexity(artifact: Path, text: Path, *options: str) -> dict:
    result = runner.invoke(app, ["perplexity", str(artifact), "--text", str(text), "--json", *options])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_perplexity_cli(artifact, loaded, tmp_path):
    ids = [4 + i % 50 for i in range(100)]
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{i}" for i in ids))
    logits = loaded.logits(ids).astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = np.exp(-log_probs[np.arange(99), ids[1:]].mean())
    whole = _perplexity(artifact, text, "--max-length", "128")
    assert whole["tokens"] == 99 and whole["windows"] == 1
    assert whole["perplexity"] == pytest.approx(expected, rel=1e-6)
    # stride == max-length: the first token of each later window is not scored
    assert _perplexity(artifact, text, "--max-length", "32")["tokens"] == 99 - 3
    sliding = runner.invoke(app, ["perplexity", str(artifact), "--text", str(text), "--max-length", "32", "--stride", "16"])
    assert sliding.exit_code == 0 and "over 99 tokens" in sliding.output, sliding.output


def test_generate_cli(artifact):
    result = runner.invoke(app, ["generate", str(artifact), "--prompt", "w5 w17 w9", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    assert "ms/token" in result.output and "time to first token" in result.output
    as_json = runner.invoke(app, ["generate", str(artifact), "--prompt", "w5 w17 w9", "--max-new-tokens", "6", "--json"])
    assert json.loads(as_json.output)["token_ids"] == llmc.load(artifact).generate([5, 17, 9], 6).token_ids
    streamed = runner.invoke(app, ["generate", str(artifact), "--prompt", "w5 w17", "--stream", "--threads", "1"])
    assert streamed.exit_code == 0, streamed.output


def test_one_line_errors(artifact, tmp_path, tiny_bert_legacy):
    _assert_one_line_error(runner.invoke(app, ["generate", str(artifact), "--prompt", "  "]), "empty prompt")
    long_prompt = " ".join(["w5"] * 40)
    _assert_one_line_error(
        runner.invoke(app, ["generate", str(artifact), "--prompt", long_prompt, "--max-length", "32"]),
        "40 tokens", "context of 32",
    )
    _assert_one_line_error(
        runner.invoke(app, ["generate", str(artifact), "--prompt", "w5", "--chat"]), "no chat template"
    )
    _assert_one_line_error(
        runner.invoke(app, ["generate", str(artifact), "--prompt", "w5", "--top-p", "2"]), "--top-p"
    )
    bert = tmp_path / "bert"
    llmc.build(tiny_bert_legacy, output=bert, cache=False)
    _assert_one_line_error(
        runner.invoke(app, ["generate", str(bert), "--prompt", "hi"]), "is not a decoder with a KV cache", "llmc export"
    )
    alone = tmp_path / "alone" / "model.onnx"  # no tokenizer beside it to carry
    alone.parent.mkdir()
    alone.write_bytes((artifact / "model.onnx").read_bytes())
    no_tokenizer = tmp_path / "bare"
    llmc.build(alone, output=no_tokenizer, cache=False)
    _assert_one_line_error(
        runner.invoke(app, ["generate", str(no_tokenizer), "--prompt", "w5"]), "has no tokenizer", "llmc export"
    )
    assert llmc.load(no_tokenizer).generate([5, 6], 3).text is None  # ids need no tokenizer


def test_min_new_tokens_masks_eos_until_reached(loaded):
    prompt = [5, 17, 9, 40, 22]
    free = loaded.generate(prompt, max_new_tokens=200, temperature=1.5, seed=1)
    assert free.stop_reason == "eos"  # this seed reaches EOS early...
    forced = loaded.generate(prompt, max_new_tokens=200, temperature=1.5, seed=1, min_new_tokens=200)
    assert len(forced.token_ids) == 200 and EOS not in forced.token_ids  # ...unless it is masked
    assert forced.stop_reason == "length"


@pytest.fixture(scope="module")
def gqa_loaded(tmp_path_factory):
    """A decoder (head size 16: GroupQueryAttention needs a multiple of 16) exported with dynamo
    and built with --enable-fusion gqa."""
    from llmc.export import llama_model

    model = llama_model(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=128, tie_word_embeddings=False, initializer_range=0.5,
        bos_token_id=2, eos_token_id=EOS,
    )
    source = _save(model, tmp_path_factory.mktemp("hf") / "llama16", VOCAB)
    out = tmp_path_factory.mktemp("exports") / "llama-dynamo"
    result = runner.invoke(app, ["export", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.output
    art = tmp_path_factory.mktemp("artifacts") / "llama-gqa"
    built = llmc.build(out / "model.onnx", output=art, fusions={"gqa": True}, cache=False)
    assert built.manifest["fusions"].get("GroupQueryAttention") == 2
    return llmc.load(art), out


def test_gqa_artifact_updates_one_cache_buffer_in_place(gqa_loaded, monkeypatch):
    loaded, export = gqa_loaded
    prompt = [5, 17, 9, 40, 22]
    allocated = []
    from llmc.generation import loop

    original = loop.Stepper._allocate
    monkeypatch.setattr(loop.Stepper, "_allocate", lambda self, b, c: allocated.append((b, c)) or original(self, b, c))
    result = loaded.generate(prompt, max_new_tokens=16, min_new_tokens=16)
    assert allocated == [(1, 5 + 16)]  # once, for the final length
    assert result.token_ids == _reference_greedy(export / "model.onnx", prompt, 16)


def test_gqa_artifact_batches_unequal_prompts_with_each_prompts_own_answer(gqa_loaded, monkeypatch):
    loaded, _ = gqa_loaded
    assert loaded.artifact.manifest["gqa"] == {"nodes": 2, "padding_from_attention_mask": 2, "rotary_inside": 2}
    prompts = [[5, 17, 9, 40, 22, 8], [11], [30, 31, 12]]
    alone = [loaded.generate(p, max_new_tokens=8).token_ids for p in prompts]
    allocated = []
    from llmc.generation import loop

    original = loop.Stepper._allocate
    monkeypatch.setattr(loop.Stepper, "_allocate", lambda self, b, c: allocated.append((b, c)) or original(self, b, c))
    batch = loaded.generate(prompts, max_new_tokens=8)
    assert allocated == [(3, 6 + 8)]  # one left-padded batch, one buffer per cache tensor
    assert [r.token_ids for r in batch] == alone


def _padded_feeds(session, prompts: list[list[int]]) -> dict[str, np.ndarray]:
    """A left-padded prefill of ``prompts`` from an empty cache, positions from the mask."""
    width = max(map(len, prompts))
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts], np.int64)
    ids = np.array([[0] * (width - len(p)) + p for p in prompts], np.int64)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    empty = {p.name: np.zeros((len(prompts), p.shape[1], 0, p.shape[3]), np.float32) for p in pasts}
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **empty}


def test_gqa_keeps_the_exports_answers_on_left_padded_batches(gqa_loaded):
    """Prefill of a left-padded batch, then decode steps, each graph on its own cache: every real
    position's logits equal the export's. RoPE is inside the attention (``do_rotary``), which
    rotates by mask column: values are the export's, keys of a padded row are rotated further
    by its padding (attention scores depend only on position differences), unpadded rows' keys
    are the export's."""
    import onnxruntime as ort

    loaded, export = gqa_loaded
    assert loaded.artifact.manifest["gqa"]["rotary_inside"] == 2
    reference = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in reference.get_outputs()]
    prompts = [[5, 17, 9, 40, 22, 8], [11, 30], [30, 31, 12, 7]]
    feeds = _padded_feeds(reference, prompts)
    want = dict(zip(names, reference.run(None, feeds), strict=True))
    got = loaded.run(feeds)
    real = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(got["logits"][real], want["logits"][real], atol=2e-4, rtol=1e-4)
    for name in names[1:]:  # present.N.key/value [B, Hkv, T, D]
        same = slice(None) if name.endswith("value") else slice(0, 1)  # row 0 has no padding
        np.testing.assert_allclose(
            got[name][same].transpose(0, 2, 1, 3)[real[same]], want[name][same].transpose(0, 2, 1, 3)[real[same]],
            atol=2e-4, rtol=1e-4,
        )
    mask, positions = feeds["attention_mask"], feeds["position_ids"]
    for token in ([4], [6], [9]), ([7], [7], [1]):
        mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1
        step = {"input_ids": np.array(token, np.int64), "attention_mask": mask, "position_ids": positions}
        want = dict(zip(names, reference.run(None, {**step, **_as_past(want)}), strict=True))
        got = loaded.run({**step, **_as_past(got)})
        np.testing.assert_allclose(got["logits"], want["logits"], atol=2e-4, rtol=1e-4)


def _as_past(outputs: dict) -> dict:
    return {name.replace("present", "past_key_values"): v for name, v in outputs.items() if name.startswith("present")}


def test_gqa_is_on_by_default_for_cpu_decoders(gqa_loaded, tmp_path):
    _, export = gqa_loaded
    built = llmc.build(export / "model.onnx", output=tmp_path / "o", cache=False)
    assert built.manifest["fusions"].get("GroupQueryAttention") == 2


def test_gqa_fusion_refuses_a_head_size_onnxruntime_rejects(hf_source, tmp_path):
    out = tmp_path / "export"  # hf_source has head size 8: GroupQueryAttention would fail at run time
    assert runner.invoke(app, ["export", str(hf_source), "-o", str(out)]).exit_code == 0
    built = llmc.build(out / "model.onnx", output=tmp_path / "o", fusions={"gqa": True}, cache=False)
    # Before the check, the fused graph failed verification ("head_size shall be a multiple of 16").
    assert "GroupQueryAttention" not in built.manifest["fusions"]
    assert built.manifest["fusions"].get("MultiHeadAttention") == 2
