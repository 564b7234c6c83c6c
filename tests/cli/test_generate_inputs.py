"""`llmc generate`, `perplexity` and `compress` values no run can take are one line, exit 1,
checked before the artifact or model is read; a chat template that raises is one line in
`generate --chat`; windows and prompts past the context `llmc export` recorded (a tokenizer that
names no model_max_length) are one line naming where the context came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from tests.cli.test_bad_inputs import _assert_one_line_error

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

runner = CliRunner()
CONTEXT = 48


def _tiny_llama(tmp_path_factory, positions: int, max_length: int | None, template: str | None = None) -> Path:
    """A tiny llama artifact trained for ``positions`` positions; its tokenizer_config.json names
    ``max_length`` as model_max_length (None: names none); ``template`` its chat template."""
    from llmc.export import llama_model
    from tests.export.test_export_cli import _save

    model = llama_model(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                        intermediate_size=32, vocab_size=64, max_position_embeddings=positions, bos_token_id=2,
                        eos_token_id=3)
    source = _save(model, tmp_path_factory.mktemp("hf") / "llama", 64)
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("model_max_length", None)
    if max_length is not None:
        config["model_max_length"] = max_length
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    if template is not None:
        (source / "chat_template.jinja").write_text(template)
    exported = tmp_path_factory.mktemp("exports") / "llama"
    result = runner.invoke(app, ["export", str(source), "-o", str(exported), "--legacy"])
    assert result.exit_code == 0, result.output
    out = tmp_path_factory.mktemp("artifacts") / "llama"
    llmc.build(exported / "model.onnx", output=out, cache=False)
    return out


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A tiny llama artifact whose tokenizer says a 48-token context and whose chat template raises."""
    return _tiny_llama(tmp_path_factory, 128, CONTEXT, "{{ raise_exception('this template takes no user turns') }}")


@pytest.fixture(scope="module")
def untold(tmp_path_factory) -> Path:
    """A tiny llama artifact trained for 32 positions whose tokenizer names no model_max_length:
    the context is the one `llmc export` recorded from config.json."""
    return _tiny_llama(tmp_path_factory, 32, None)


@pytest.fixture()
def words(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(" ".join(f"w{4 + i % 50}" for i in range(120)))
    return path


def test_a_chat_template_that_raises_is_one_line(artifact):
    result = runner.invoke(app, ["generate", str(artifact), "--prompt", "w5", "--chat"])
    _assert_one_line_error(result, "chat template failed", "this template takes no user turns")


@pytest.mark.parametrize(("args", "fragments"), [
    (["--seed", "-1"], ["--seed -1", ">= 0"]),
    (["--prompt", "w5 \udcff w6"], ["--prompt", "not valid UTF-8"]),
    (["--stop", "\udcfe"], ["--stop", "not valid UTF-8"]),
    (["--temperature", "nan"], ["--temperature nan", "finite"]),
])
def test_generate_values_are_refused_before_the_artifact_is_read(tmp_path, args, fragments):
    prompt = [] if "--prompt" in args else ["--prompt", "w5"]
    result = runner.invoke(app, ["generate", str(tmp_path / "no-such-artifact"), *prompt, *args])
    _assert_one_line_error(result, *fragments)


@pytest.mark.parametrize(("args", "fragments"), [
    (["--stride", "0"], ["--stride 0", "1 to --max-length"]),
    (["--stride", "-3"], ["--stride -3"]),
    (["--max-length", "16", "--stride", "17"], ["--stride 17", "(16)"]),
    (["--max-length", "1"], ["--max-length 1", "at least 2"]),
    (["--max-length", str(CONTEXT + 1)], [f"--max-length {CONTEXT + 1}", f"context of {CONTEXT} tokens"]),
])
def test_perplexity_windows_are_checked_before_any_work(artifact, tmp_path, args, fragments):
    result = runner.invoke(app, ["perplexity", str(artifact), "--text", str(tmp_path / "no-such-text"), *args])
    _assert_one_line_error(result, *fragments)


def test_perplexity_windows_default_to_the_context(artifact, words):
    result = runner.invoke(app, ["perplexity", str(artifact), "--text", str(words), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["windows"] == 3  # 121 tokens or so over 48-token windows


def test_perplexity_windows_past_the_recorded_context_are_one_line(untold, tmp_path):
    result = runner.invoke(app, ["perplexity", str(untold), "--text", str(tmp_path / "no-such-text"),
                                 "--max-length", "1024"])
    _assert_one_line_error(result, "--max-length 1024", "context of 32 tokens", "config.json's max_position_embeddings",
                           "--max-length 32 or less")


def test_perplexity_windows_default_to_the_recorded_context(untold, words):
    result = runner.invoke(app, ["perplexity", str(untold), "--text", str(words), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["windows"] == 4  # 121 tokens or so over 32-token windows


def test_generate_prompts_past_the_recorded_context_are_one_line(untold):
    prompt = " ".join(f"w{4 + i % 50}" for i in range(40))
    result = runner.invoke(app, ["generate", str(untold), "--prompt", prompt, "--max-new-tokens", "2"])
    _assert_one_line_error(result, "longer than the context of 32", "config.json's max_position_embeddings")


@pytest.mark.parametrize(("flag", "value"), [
    ("--minutes", "nan"), ("--minutes", "inf"), ("--minutes", "-1"), ("--target-speedup", "nan"),
    ("--ffn", "nan"), ("--heads", "nan"),
])
def test_compress_values_are_refused_before_the_model_is_read(tmp_path, flag, value):
    args = ["compress", str(tmp_path / "no-such-model"), "--data", str(tmp_path / "no-data"), "-o", str(tmp_path / "o")]
    _assert_one_line_error(runner.invoke(app, [*args, flag, value]), flag)
    assert not (tmp_path / "o").exists()


def test_the_tokenizer_files_of_the_artifact_were_copied_not_linked(artifact):
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert (artifact / name).is_file() and not (artifact / name).is_symlink()
