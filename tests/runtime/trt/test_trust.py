"""Engine trust: the signing key, the plan's HMAC in the manifest, and what ``verify_plan`` refuses."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from llmc.errors import LlmcError
from llmc.runtime.trt.trust import engine_manifest, key_id, load_or_create_key, sign_plan, verify_plan
from llmc.targets.trt.config import EngineSettings
from tests.runtime.trt.support import KEY_PARTS


@pytest.fixture()
def key_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "config" / "llmc" / "engine.key"
    monkeypatch.setenv("LLMC_ENGINE_KEY_FILE", str(path))
    return path


def _signed_artifact(directory: Path, key: bytes, data: bytes = b"\x00serialized engine\xff", **over) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    plan = directory / "model.plan"
    plan.write_bytes(data)
    fields = dict(
        trt_version="10.13.0.35",
        cuda_version="12.8",
        gpu="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        profiles=KEY_PARTS["profiles"],
        flags=EngineSettings().to_dict(),
        cache_key="f" * 64,
    )
    fields.update(over)
    return engine_manifest(plan, key, **fields)


def test_key_file_created_once_with_mode_0600(key_file):
    assert not key_file.exists()
    key = load_or_create_key()
    assert len(key) == 32 and key_file.read_bytes() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_or_create_key() == key
    assert len(key_id(key)) == 16 and key_id(key) != key.hex()[:16]


def test_short_key_file_is_refused(key_file):
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(b"short")
    with pytest.raises(LlmcError, match="holds 5 bytes"):
        load_or_create_key()


def test_sign_and_verify_round_trip(tmp_path, key_file):
    key = load_or_create_key()
    engine = _signed_artifact(tmp_path / "art", key)
    assert engine["built"] is True and engine["file"] == "model.plan"
    assert engine["key_id"] == key_id(key) and key.hex() not in str(engine)
    assert engine["hmac"] == sign_plan(b"\x00serialized engine\xff", key)
    assert engine["profiles"] == {"ids": {"min": [1, 1], "opt": [1, 128], "max": [8, 512]}}
    data = verify_plan(tmp_path / "art", engine, trt_version="10.13.0.35", compute_capability="9.0")
    assert data == b"\x00serialized engine\xff"
    assert verify_plan(tmp_path / "art", engine, key=key) == data


def test_tampered_plan_is_refused(tmp_path, key_file):
    engine = _signed_artifact(tmp_path / "art", load_or_create_key())
    (tmp_path / "art" / "model.plan").write_bytes(b"\x00serialized engine\xfe")
    with pytest.raises(
        LlmcError, match=r"model.plan is not the engine llmc built \(HMAC mismatch\); refusing"
    ):
        verify_plan(tmp_path / "art", engine)


def test_wrong_key_is_refused(tmp_path, key_file):
    engine = _signed_artifact(tmp_path / "art", b"other machine's key, 32 bytes..")
    load_or_create_key()  # this machine's key differs
    with pytest.raises(LlmcError, match="was signed with key .* not this machine's key"):
        verify_plan(tmp_path / "art", engine)


def test_forged_mac_under_same_key_id_is_refused(tmp_path, key_file):
    key = load_or_create_key()
    engine = _signed_artifact(tmp_path / "art", key)
    engine["hmac"] = sign_plan(b"\x00serialized engine\xff", b"x" * 32)
    with pytest.raises(LlmcError, match="HMAC mismatch"):
        verify_plan(tmp_path / "art", engine)


def test_missing_key_is_refused(tmp_path, key_file):
    engine = _signed_artifact(tmp_path / "art", b"k" * 32)
    with pytest.raises(LlmcError, match=f"engine key file {key_file} does not exist.*rebuild the engine"):
        verify_plan(tmp_path / "art", engine)
    assert not key_file.exists()  # verifying never mints a key


def test_version_and_compute_capability_mismatch_refused(tmp_path, key_file):
    engine = _signed_artifact(tmp_path / "art", load_or_create_key())
    with pytest.raises(
        LlmcError, match="built with TensorRT 10.13.0.35, but TensorRT 10.14.1.48 is installed"
    ):
        verify_plan(tmp_path / "art", engine, trt_version="10.14.1.48", compute_capability="9.0")
    with pytest.raises(LlmcError, match="built for compute capability 9.0, but this GPU is 8.9"):
        verify_plan(tmp_path / "art", engine, trt_version="10.13.0.35", compute_capability="8.9")


def test_compatibility_flags_widen_what_loads(tmp_path, key_file):
    flags = EngineSettings(version_compatible=True, hardware_compatibility="ampere_plus").to_dict()
    engine = _signed_artifact(tmp_path / "art", load_or_create_key(), flags=flags)
    assert verify_plan(tmp_path / "art", engine, trt_version="11.0.0.1", compute_capability="8.0")
    with pytest.raises(LlmcError, match="TensorRT 10.1.0"):  # never an older runtime
        verify_plan(tmp_path / "art", engine, trt_version="10.1.0")
    with pytest.raises(LlmcError, match="this GPU is 7.5"):
        verify_plan(tmp_path / "art", engine, compute_capability="7.5")


def test_no_engine_and_broken_manifests_refused(tmp_path, key_file):
    key = load_or_create_key()
    for engine in (None, {}, {"built": False}):
        with pytest.raises(LlmcError, match="built with --no-engine"):
            verify_plan(tmp_path, engine)
    engine = _signed_artifact(tmp_path / "art", key)
    (tmp_path / "art" / "model.plan").unlink()
    with pytest.raises(LlmcError, match="model.plan is missing"):
        verify_plan(tmp_path / "art", engine)
    engine = _signed_artifact(tmp_path / "art", key)
    with pytest.raises(LlmcError, match="lacks hmac, key_id"):
        verify_plan(tmp_path / "art", {k: v for k, v in engine.items() if k not in ("hmac", "key_id")})
    with pytest.raises(LlmcError, match="not a plain file name"):
        verify_plan(tmp_path / "art", {**engine, "file": "../model.plan"})
