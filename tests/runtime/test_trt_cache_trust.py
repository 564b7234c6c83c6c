"""ONNX Runtime's TensorRT engine and timing caches are trusted like the build cache: created mode
0700, and a directory another user owns or others can write is one line, before ONNX Runtime
deserializes anything from it (no GPU needed: the check runs before the session)."""

from __future__ import annotations

import os
import stat

import pytest

from llmc.errors import LlmcError
from llmc.runtime.ort.loader import _make_cache_dirs

posix = pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX ownership and modes")


@posix
def test_a_new_cache_directory_is_private(tmp_path):
    where = tmp_path / "cache" / "ort-trt"
    _make_cache_dirs([{"trt_engine_cache_path": str(where), "trt_timing_cache_path": str(where)}, {"device_id": 0}])
    assert where.is_dir() and stat.S_IMODE(where.stat().st_mode) == 0o700


@posix
def test_a_cache_others_can_write_is_refused(tmp_path):
    where = tmp_path / "ort-trt"
    where.mkdir()
    where.chmod(0o777)
    with pytest.raises(LlmcError, match="writable by group or others"):
        _make_cache_dirs([{"trt_engine_cache_path": str(where)}])


@posix
def test_a_dangling_link_is_refused(tmp_path):
    where = tmp_path / "ort-trt"
    where.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LlmcError, match="is a link to"):
        _make_cache_dirs([{"trt_timing_cache_path": str(where)}])
