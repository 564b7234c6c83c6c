"""The engine cache and its key, and the default cache paths."""

from __future__ import annotations

import pytest

from llmc.targets.trt.cache import EngineCache, engine_cache_key
from llmc.targets.trt.config import EngineSettings
from llmc.targets.trt.profiles import ProfileShape, profiles_to_dict
from tests.runtime.trt.support import KEY_PARTS


def test_engine_cache_key_is_stable_and_covers_every_part():
    base = engine_cache_key(**KEY_PARTS)
    assert base == engine_cache_key(**{**KEY_PARTS, "flags": dict(reversed(KEY_PARTS["flags"].items()))})
    assert base == engine_cache_key(**{**KEY_PARTS, "profiles": profiles_to_dict(KEY_PARTS["profiles"])})
    changed = [
        {"model_sha256": "cd" * 32},
        {"trt_version": "11.0.0.1"},
        {"compute_capability": "8.9"},
        {"profiles": {"ids": ProfileShape((1, 1), (1, 64), (8, 512))}},
        {"flags": EngineSettings(optimization_level=4).to_dict()},
        {"flags": EngineSettings(version_compatible=True).to_dict()},
    ]
    keys = {engine_cache_key(**{**KEY_PARTS, **change}) for change in changed}
    assert base not in keys and len(keys) == len(changed)
    assert len(base) == 64 and int(base, 16) >= 0


def test_engine_cache_round_trip(tmp_path):
    cache = EngineCache(tmp_path / "trt")
    key = engine_cache_key(**KEY_PARTS)
    assert cache.get(key) is None
    path = cache.put(key, b"plan-bytes")
    assert path == tmp_path / "trt" / f"{key}.plan"
    assert cache.get(key) == b"plan-bytes"
    assert [p.name for p in (tmp_path / "trt").iterdir()] == [f"{key}.plan"]  # no temp files left
    with pytest.raises(ValueError):
        cache.path("../escape")


def test_signed_engine_cache_treats_tampering_as_a_miss(tmp_path):
    cache = EngineCache(tmp_path, signing_key=b"k" * 32)
    cache.put("abc123", b"plan")
    assert cache.get("abc123") == b"plan"
    (tmp_path / "abc123.plan").write_bytes(b"evil")
    assert cache.get("abc123") is None
    assert EngineCache(tmp_path, signing_key=b"j" * 32).get("abc123") is None


def test_default_cache_dirs_follow_env(monkeypatch, tmp_path):
    from llmc.targets.trt.cache import default_cache_dir, default_timing_cache_path

    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "trt"
    assert default_timing_cache_path() == tmp_path / "trt" / "timing.cache"
    assert EngineCache().directory == tmp_path / "trt"
