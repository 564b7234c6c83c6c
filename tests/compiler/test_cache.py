"""The build cache: content keys, byte-identical hits, integrity, LRU bound, calibration reuse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import llmc
from llmc.compiler import cache_trust
from llmc.compiler.cache import BuildCache
from tests.helpers import make_model


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LLMC_CACHE_DIR", str(root))
    monkeypatch.delenv("LLMC_NO_CACHE", raising=False)
    monkeypatch.delenv("LLMC_CACHE_MAX_MB", raising=False)
    return root


def _external_model(directory: Path) -> Path:
    """y = MatMul(x, w) with w in model.onnx.data."""
    directory.mkdir(parents=True, exist_ok=True)
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 16])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 8])
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "w")
    model = make_model([oh.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [w])
    path = directory / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    return path


def _entries(root: Path) -> list[Path]:
    builds = root / "builds"
    return sorted(p for p in builds.iterdir() if not p.name.startswith(".")) if builds.is_dir() else []


def test_second_identical_build_is_a_byte_identical_cache_hit(cache_dir, tmp_path, relu_model):
    first = llmc.build(relu_model, output=tmp_path / "a")
    assert first.manifest["cache"]["hit"] is False and len(_entries(cache_dir)) == 1
    moved = tmp_path / "elsewhere" / "relu.onnx"
    moved.parent.mkdir()
    moved.write_bytes(relu_model.read_bytes())
    second = llmc.build(moved, output=tmp_path / "b")
    assert second.manifest["cache"] == {**second.manifest["cache"], "hit": True, "key": first.manifest["cache"]["key"]}
    assert (tmp_path / "b" / "model.onnx").read_bytes() == (tmp_path / "a" / "model.onnx").read_bytes()
    assert second.manifest["source"]["path"] == str(moved.resolve())
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["cache"]["hit"] is True
    out = second.load().run({"x": np.ones((2, 3), np.float32)})
    np.testing.assert_allclose(out["y"], np.maximum(1 + np.arange(3, dtype=np.float32), 0)[None].repeat(2, 0))


@pytest.mark.parametrize(
    "change", [{"tolerance": 1e-3}, {"seed": 1}, {"shapes": {"x": (4, 3)}}, {"passes": "prune"}, {"alignment": 128}]
)
def test_every_output_changing_option_is_in_the_key(cache_dir, tmp_path, relu_model, change):
    base = llmc.build(relu_model, output=tmp_path / "a")
    other = llmc.build(relu_model, output=tmp_path / "b", **change)
    assert other.manifest["cache"]["hit"] is False
    assert other.manifest["cache"]["key"] != base.manifest["cache"]["key"]


def test_other_external_data_bytes_are_a_miss(cache_dir, tmp_path):
    path = _external_model(tmp_path / "src")
    llmc.build(path, output=tmp_path / "a")
    assert llmc.build(path, output=tmp_path / "same").manifest["cache"]["hit"] is True
    data = path.with_name("m.onnx.data")
    raw = bytearray(data.read_bytes())
    raw[:4] = np.float32(7.0).tobytes()  # same size, same model file, different weights
    data.write_bytes(bytes(raw))
    second = llmc.build(path, output=tmp_path / "b")
    assert second.manifest["cache"]["hit"] is False
    x = np.eye(16, dtype=np.float32)[:1]
    assert second.load().run({"x": x})["y"][0, 0] == 7.0


def test_a_tampered_entry_is_dropped_and_rebuilt(cache_dir, tmp_path, relu_model):
    llmc.build(relu_model, output=tmp_path / "a")
    (entry,) = _entries(cache_dir)
    model = entry / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    again = llmc.build(relu_model, output=tmp_path / "b")
    assert again.manifest["cache"]["hit"] is False
    assert (tmp_path / "b" / "model.onnx").read_bytes() == (tmp_path / "a" / "model.onnx").read_bytes()
    assert llmc.build(relu_model, output=tmp_path / "c").manifest["cache"]["hit"] is True


def test_an_entry_from_before_the_manifest_schema_is_dropped_and_rebuilt(cache_dir, tmp_path, relu_model):
    import hashlib

    llmc.build(relu_model, output=tmp_path / "a")
    (entry,) = _entries(cache_dir)
    manifest = json.loads((entry / "manifest.json").read_text())
    del manifest["schema_version"]  # what an llmc before the typed manifest stored
    (entry / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    info = json.loads((entry / "entry.json").read_text())
    info["files"]["manifest.json"] = hashlib.sha256((entry / "manifest.json").read_bytes()).hexdigest()
    info["mac"] = cache_trust.sign(BuildCache().secret, info)  # signed: an entry this user's llmc stored
    (entry / "entry.json").write_text(json.dumps(info))  # a consistent entry: its bytes are as stored
    again = llmc.build(relu_model, output=tmp_path / "b")
    assert again.manifest.cache.hit is False
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["schema_version"] == 1
    assert (tmp_path / "b" / "model.onnx").read_bytes() == (tmp_path / "a" / "model.onnx").read_bytes()
    (entry,) = _entries(cache_dir)  # replaced by the rebuild's
    assert json.loads((entry / "manifest.json").read_text())["schema_version"] == 1
    assert llmc.build(relu_model, output=tmp_path / "c").manifest.cache.hit is True


def test_no_cache_and_diagnostics_bypass_it(cache_dir, tmp_path, relu_model, monkeypatch):
    llmc.build(relu_model, output=tmp_path / "a", cache=False)
    llmc.build(relu_model, output=tmp_path / "b", diff_each=True)
    assert _entries(cache_dir) == []
    monkeypatch.setenv("LLMC_NO_CACHE", "1")
    artifact = llmc.build(relu_model, output=tmp_path / "c")
    assert "cache" not in artifact.manifest and _entries(cache_dir) == []


def test_lru_eviction_keeps_the_cache_within_its_limit(tmp_path):
    cache = BuildCache(tmp_path / "cache", limit_bytes=2500)
    out = tmp_path / "out"
    out.mkdir()
    for i, key in enumerate(["k1", "k2", "k3"]):
        (out / "model.onnx").write_bytes(bytes([i]) * 1000)
        assert cache.store(key, out, ["model.onnx"], {})
        os.utime(cache.root / "builds" / key / "entry.json", (1000 + i, 1000 + i))
        if key == "k2":
            assert cache.lookup("k1") is not None  # k1 used again: k2 is now the oldest
            os.utime(cache.root / "builds" / "k1" / "entry.json", (2000, 2000))
    names = {p.name for p in _entries(cache.root)}
    assert names == {"k1", "k3"}
    assert sum(e[2] for e in cache.entries()) <= 2500
    total = sum(e[2] for e in cache.entries())
    assert cache.clear() == (2, total)
    assert cache.entries() == []


def test_int8_statistics_are_reused_across_output_directories(cache_dir, tmp_path, tiny_bert_dynamo):
    from tests.int8.test_quantize import _bert_samples, _npz_dir

    data = _npz_dir(tmp_path, _bert_samples(tiny_bert_dynamo, 40))
    common = dict(
        precision="int8", calibration_data=data, shapes={"input_ids": (1, 16), "attention_mask": (1, 16)},
    )
    options = llmc.int8.quantize.QuantizeOptions
    first = llmc.build(tiny_bert_dynamo, output=tmp_path / "a", quantization=options(samples=24, holdout=16), **common)
    assert first.manifest["quantization"]["statistics"]["reused"] is False
    # Another budget: a different artifact (no build-cache hit), the same calibration statistics.
    second = llmc.build(
        tiny_bert_dynamo, output=tmp_path / "b",
        quantization=options(samples=24, holdout=16, max_accuracy_loss=0.01), **common,
    )
    assert second.manifest["cache"]["hit"] is False
    assert second.manifest["quantization"]["statistics"]["reused"] is True
    third = llmc.build(tiny_bert_dynamo, output=tmp_path / "c", quantization=options(samples=24, holdout=16), **common)
    assert third.manifest["cache"]["hit"] is True
    assert (tmp_path / "c" / "model.onnx").read_bytes() == (tmp_path / "a" / "model.onnx").read_bytes()
    assert (tmp_path / "c" / "calibration.json").is_file()
    assert third.manifest["quantization"]["statistics"]["file"] == str(tmp_path / "c" / "calibration.json")


def test_a_cache_hit_imports_neither_onnx_nor_onnxruntime(cache_dir, tmp_path, relu_model):
    """A hit is the options, the source's hash and a checked file copy: no compiler stack."""
    import subprocess
    import sys

    llmc.build(relu_model, output=tmp_path / "a")
    script = (
        "import sys, llmc\n"
        f"a = llmc.build({str(relu_model)!r}, output={str(tmp_path / 'b')!r})\n"
        "assert a.manifest['cache']['hit'], a.manifest.get('cache')\n"
        "heavy = sorted(m for m in ('onnx', 'onnx_ir', 'onnxruntime', 'onnxscript') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
