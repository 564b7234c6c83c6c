"""The build cache trusts only itself: signed entries, a private directory, sane settings."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.compiler import cache_trust
from llmc.compiler.cache import BuildCache
from llmc.errors import LlmcError
from tests.helpers import make_model

runner = CliRunner()


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LLMC_CACHE_DIR", str(root))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("LLMC_NO_CACHE", raising=False)
    monkeypatch.delenv("LLMC_CACHE_MAX_MB", raising=False)
    return root


@pytest.fixture()
def no_compile(monkeypatch):
    """Any compile fails the test: settings must be refused before one starts."""
    import llmc.compiler.build as build

    def compile_(*_a, **_k):
        raise AssertionError("compiled before the cache's settings were checked")

    monkeypatch.setattr(build, "_compile", compile_)


def _entry(root: Path) -> Path:
    (entry,) = [p for p in (root / "builds").iterdir() if not p.name.startswith(".")]
    return entry


def _other_model(path: Path) -> Path:
    """y = Relu(x - w): another model with relu.onnx's inputs and outputs."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])
    w = onnx.numpy_helper.from_array(np.full(3, 100, dtype=np.float32), "w")
    onnx.save(make_model([oh.make_node("Sub", ["x", "w"], ["s"]), oh.make_node("Relu", ["s"], ["y"])], [x], [y], [w]), path)
    return path


def _rehash(entry: Path, names: list[str]) -> None:
    """Rewrite the entry's hash record to match its (edited) files, as a tamperer without the key would."""
    info = json.loads((entry / "entry.json").read_text())
    for name in names:
        info["files"][name] = hashlib.sha256((entry / name).read_bytes()).hexdigest()
    (entry / "entry.json").write_text(json.dumps(info))


def test_a_consistently_swapped_entry_is_a_miss_not_another_model(cache_dir, tmp_path, relu_model):
    first = llmc.build(relu_model, output=tmp_path / "a")
    entry = _entry(cache_dir)
    other = llmc.build(_other_model(tmp_path / "other.onnx"), output=tmp_path / "other", cache=False)
    for name in ("model.onnx", "manifest.json"):
        (entry / name).write_bytes((tmp_path / "other" / name).read_bytes())
    _rehash(entry, ["model.onnx", "manifest.json"])
    lines: list[str] = []
    again = llmc.build(relu_model, output=tmp_path / "b", log=lines.append)
    assert again.manifest.cache.hit is False and not any("build cache" in line and "copying" in line for line in lines)
    assert (tmp_path / "b" / "model.onnx").read_bytes() == (tmp_path / "a" / "model.onnx").read_bytes()
    assert (tmp_path / "b" / "model.onnx").read_bytes() != (tmp_path / "other" / "model.onnx").read_bytes()
    assert again.manifest.cache.key == first.manifest.cache.key and other.manifest.source.sha256 != first.manifest.source.sha256
    assert llmc.build(relu_model, output=tmp_path / "c").manifest.cache.hit is True  # the rebuild's entry is signed


def test_an_edited_hash_record_alone_is_a_miss_and_removed(cache_dir, tmp_path):
    cache = BuildCache().prepare()
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"model")
    assert cache.store("k", out, ["model.onnx"], {})
    entry = cache.root / "builds" / "k"
    info = json.loads((entry / "entry.json").read_text())
    info["files"]["model.onnx"] = "0" * 64
    (entry / "entry.json").write_text(json.dumps(info))
    assert cache.lookup("k") is None and not entry.exists()  # never a hit that then fails its check


def test_an_entry_signed_by_another_key_or_moved_to_another_key_is_a_miss(cache_dir, tmp_path):
    cache = BuildCache().prepare()
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"model")
    assert cache.store("k1", out, ["model.onnx"], {})
    assert cache.lookup("k1") is not None
    os.rename(cache.root / "builds" / "k1", cache.root / "builds" / "k2")
    assert cache.lookup("k2") is None  # signed for k1, not k2
    assert cache.store("k1", out, ["model.onnx"], {})
    stranger = BuildCache()
    stranger.secret = b"\1" * 32  # another user's key
    assert stranger.lookup("k1") is None and not (cache.root / "builds" / "k1").exists()


def test_calibration_statistics_swapped_consistently_are_not_used(cache_dir, tmp_path):
    cache = BuildCache().prepare()
    stats = tmp_path / "stats.json"
    stats.write_text('{"scales": [1]}')
    cache.keep_calibration("c", stats)
    entry = cache.calibration_path("c")
    assert cache.fetch_calibration("c", tmp_path / "got.json")
    assert (tmp_path / "got.json").read_text() == stats.read_text()
    (entry / "statistics.json").write_text('{"scales": [1000]}')
    _rehash(entry, ["statistics.json"])
    assert not cache.fetch_calibration("c", tmp_path / "again.json")
    assert not (tmp_path / "again.json").exists() and not entry.exists()


def test_the_key_is_private_and_outside_the_cache(cache_dir, tmp_path):
    BuildCache().prepare()
    key = tmp_path / "config" / "llmc" / "cache.key"
    assert key.is_file() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert not any(p.name == "cache.key" for p in cache_dir.rglob("*"))
    assert BuildCache().prepare().secret == BuildCache().prepare().secret  # made once, then read
    info = runner.invoke(app, ["cache", "info"])
    assert info.exit_code == 0 and str(key) in info.output.replace("\n", ""), info.output


@pytest.mark.parametrize("damage", ["mode", "link", "garbage", "directory", "fifo"])
def test_a_key_file_that_is_not_private_or_not_a_key_is_one_line(cache_dir, tmp_path, damage):
    BuildCache().prepare()
    key = tmp_path / "config" / "llmc" / "cache.key"
    if damage == "mode":
        key.chmod(0o644)
    elif damage == "link":
        (tmp_path / "elsewhere").write_text(key.read_text())
        key.unlink()
        key.symlink_to(tmp_path / "elsewhere")
    elif damage in ("directory", "fifo"):  # never read as a key, never blocks
        key.unlink()
        key.mkdir() if damage == "directory" else os.mkfifo(key, 0o600)
    else:
        key.write_text("hello\n")
    with pytest.raises(LlmcError, match=r"cache key .*cache\.key") as info:
        BuildCache().prepare()
    assert "\n" not in str(info.value)


def test_a_cache_directory_writable_by_others_is_refused_before_compiling(cache_dir, tmp_path, relu_model, no_compile):
    cache_dir.mkdir()
    cache_dir.chmod(0o777)
    result = runner.invoke(app, ["build", str(relu_model), "-o", str(tmp_path / "a")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"chmod go-w {cache_dir}" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


def test_a_builds_section_writable_by_others_is_refused(cache_dir):
    (cache_dir / "builds").mkdir(parents=True)
    cache_dir.chmod(0o700)
    (cache_dir / "builds").chmod(0o775)
    with pytest.raises(LlmcError, match="builds is writable by group or others"):
        BuildCache()


def test_a_cache_directory_owned_by_another_user_is_refused(cache_dir, monkeypatch):
    cache_dir.mkdir(mode=0o700)
    monkeypatch.setattr(os, "geteuid", lambda: cache_dir.stat().st_uid + 1)
    with pytest.raises(LlmcError, match="owned by another user .*set LLMC_CACHE_DIR"):
        BuildCache()


@pytest.mark.parametrize("limit", ["nan", "-1", "inf", "lots", "", "1e400"])
def test_cache_settings_that_make_no_sense_are_one_line_before_compiling(cache_dir, tmp_path, relu_model, no_compile,
                                                                         monkeypatch, limit):
    monkeypatch.setenv("LLMC_CACHE_MAX_MB", limit)
    result = runner.invoke(app, ["build", str(relu_model), "-o", str(tmp_path / "a")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "LLMC_CACHE_MAX_MB" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_cache_dir_that_is_a_file_is_one_line_before_compiling(cache_dir, tmp_path, relu_model, no_compile):
    cache_dir.write_text("not a directory")
    result = runner.invoke(app, ["build", str(relu_model), "-o", str(tmp_path / "a")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "LLMC_CACHE_DIR" in result.output and "not a directory" in result.output
    info = runner.invoke(app, ["cache", "info"])
    assert info.exit_code == 1 and "not a directory" in info.output


def test_a_zero_limit_stores_nothing(cache_dir, tmp_path, relu_model, monkeypatch):
    monkeypatch.setenv("LLMC_CACHE_MAX_MB", "0")
    llmc.build(relu_model, output=tmp_path / "a")
    assert llmc.build(relu_model, output=tmp_path / "b").manifest.cache.hit is False
    assert cache_trust.parse_max_mb("1.5") == 3 << 19
