"""The artifact integrity contract: every file hashed when verified, checked at every use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.runtime.artifact import read_artifact
from tests.cli.test_bad_inputs import _assert_one_line_error
from tests.helpers import make_model

runner = CliRunner()


@pytest.fixture()
def relu_model(tmp_path) -> Path:
    """y = Relu(x @ w) with 4 KiB of weights (enough for external data) and a dynamic batch."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 32])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 32])
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32), "w")
    nodes = [oh.make_node("MatMul", ["x", "w"], ["s"]), oh.make_node("Relu", ["s"], ["y"])]
    path = tmp_path / "mm.onnx"
    onnx.save(make_model(nodes, [x], [y], [w]), path)
    return path


@pytest.fixture()
def external(tmp_path, relu_model) -> Path:
    """An artifact whose weights live in model.onnx.data."""
    return llmc.build(relu_model, output=tmp_path / "art", external_data=True, cache=False).path


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write(path: Path, manifest) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest))


def _every_use_refuses(path: Path, tmp_path: Path, relu_model: Path, *fragments: str) -> None:
    with pytest.raises(LlmcError) as info:
        llmc.load(path)
    for fragment in fragments:
        assert fragment in str(info.value)
    for args in (["bench", str(path), "--runs", "1", "--warmup", "0", "--no-rss"],
                 ["check", str(relu_model), str(path)], ["inspect", str(path)]):
        _assert_one_line_error(runner.invoke(app, args), *fragments)


def test_manifest_hashes_every_file(external):
    section = _manifest(external)["artifact"]
    assert set(section["sha256"]) == {"model.onnx", "model.onnx.data"}
    assert section["sha256"]["model.onnx"] == section["model_sha256"]
    llmc.load(external)


def test_same_size_tampered_external_data_is_refused_everywhere(external, tmp_path, relu_model):
    data = external / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    _every_use_refuses(external, tmp_path, relu_model, "model.onnx.data", "sha256 does not match")


@pytest.mark.parametrize("edit", ["no_hashes", "no_artifact", "no_model_sha", "empty_hashes"])
def test_a_manifest_without_hashes_is_refused(external, tmp_path, relu_model, edit):
    manifest = _manifest(external)
    if edit == "no_hashes":
        del manifest["artifact"]["sha256"]
    elif edit == "no_artifact":
        del manifest["artifact"]
    elif edit == "empty_hashes":
        manifest["artifact"]["sha256"] = {}
    else:  # model_sha256 is informative; deleting it changes nothing, the file hashes still bind
        del manifest["artifact"]["model_sha256"]
        (external / "model.onnx.data").write_bytes(b"\0" * (external / "model.onnx.data").stat().st_size)
    _write(external, manifest)
    _every_use_refuses(external, tmp_path, relu_model, "manifest.json" if edit != "no_model_sha" else "sha256")


@pytest.mark.parametrize("content", ["null", "[]", "3", '"text"', '{"target": "ort"}', "NaN"])
def test_a_manifest_that_is_not_an_llmc_object_is_refused(external, tmp_path, relu_model, content):
    (external / "manifest.json").write_text(content)
    _every_use_refuses(external, tmp_path, relu_model, "manifest.json")


@pytest.mark.parametrize("section,value", [("session", "cpu"), ("session", {"options": [1]}), ("engine", "yes")])
def test_a_manifest_with_wrongly_typed_sections_is_refused(external, tmp_path, relu_model, section, value):
    manifest = _manifest(external)
    manifest[section] = value
    _write(external, manifest)
    _every_use_refuses(external, tmp_path, relu_model, "manifest.json", f"'{section}'")


def test_a_hash_entry_naming_a_path_is_refused(external):
    manifest = _manifest(external)
    manifest["artifact"]["sha256"]["../outside"] = "0" * 64
    _write(external, manifest)
    with pytest.raises(LlmcError, match="bad entry"):
        read_artifact(external)


def test_a_symlinked_or_missing_file_is_refused(external, tmp_path):
    data = external / "model.onnx.data"
    copy = tmp_path / "weights.bin"
    copy.write_bytes(data.read_bytes())
    data.unlink()
    with pytest.raises(LlmcError, match="missing"):
        llmc.load(external)
    data.symlink_to(copy)  # the same bytes, through a link: still refused
    with pytest.raises(LlmcError, match="symlink"):
        llmc.load(external)


def test_the_hashed_bytes_are_the_verified_bytes(tmp_path, relu_model, monkeypatch):
    """A second writer changing the model between verification and the manifest fails the build."""
    import llmc.compiler.verify as verify_module

    assemble = verify_module.manifest_mod.assemble

    def tamper(prep, *args):
        (prep.work_dir / "model.onnx").write_bytes((prep.work_dir / "model.onnx").read_bytes() + b"\0")
        return assemble(prep, *args)

    monkeypatch.setattr(verify_module.manifest_mod, "assemble", tamper)
    with pytest.raises(LlmcError, match="model.onnx: sha256 does not match.*another process"):
        llmc.build(relu_model, output=tmp_path / "out", cache=False)
    assert not (tmp_path / "out").exists()


def test_a_cache_hit_is_checked_and_carries_the_hashes(tmp_path, relu_model, monkeypatch):
    monkeypatch.delenv("LLMC_NO_CACHE", raising=False)
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "cache"))
    first = llmc.build(relu_model, output=tmp_path / "a")
    second = llmc.build(relu_model, output=tmp_path / "b")
    assert second.manifest["cache"]["hit"] is True
    assert second.manifest["artifact"]["sha256"] == first.manifest["artifact"]["sha256"]
    llmc.load(second.path)
