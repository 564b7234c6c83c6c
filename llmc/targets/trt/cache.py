"""The caches around an engine build: built plans by key, and the timing cache's path.

Both live under ``$LLMC_CACHE_DIR/trt`` (else ``~/.cache/llmc/trt``). The engine cache key
covers everything that decides the engine (model, TensorRT, GPU, profiles, flags); the timing
cache only speeds builds up, so it is not part of the key. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from llmc.model.files import cache_root
from llmc.runtime.trt.trust import sign_plan
from llmc.targets.trt.profiles import ProfileShape


def default_cache_dir() -> Path:
    """``$LLMC_CACHE_DIR/trt``, else ``~/.cache/llmc/trt``."""
    return cache_root() / "trt"


def default_timing_cache_path() -> Path:
    return default_cache_dir() / "timing.cache"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def engine_cache_key(
    model_sha256: str,
    trt_version: str,
    compute_capability: str,
    profiles: dict[str, Any],
    flags: dict[str, Any],
) -> str:
    """SHA-256 over everything that decides the engine: model, TensorRT, GPU, shapes, flags."""
    shapes = {
        name: shape.to_dict() if isinstance(shape, ProfileShape) else shape
        for name, shape in profiles.items()
    }
    payload = {
        "model_sha256": model_sha256,
        "tensorrt_version": trt_version,
        "compute_capability": compute_capability,
        "profiles": shapes,
        "flags": flags,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class EngineCache:
    """Built plans by cache key, as ``<directory>/<key>.plan`` (atomic writes).

    With ``signing_key``, each plan gets a ``<key>.plan.hmac`` beside it and :meth:`get` treats a
    plan whose MAC does not match as a miss, so a tampered cache entry is rebuilt, never reused.
    """

    def __init__(self, directory: Path | None = None, *, signing_key: bytes | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.signing_key = signing_key

    def path(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]+", key):
            raise ValueError(f"engine cache keys are lowercase hex, got {key!r}")
        return self.directory / f"{key}.plan"

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        if not path.is_file():
            return None
        data = path.read_bytes()
        if self.signing_key is not None:
            mac = path.with_name(path.name + ".hmac")
            expected = sign_plan(data, self.signing_key)
            if not mac.is_file() or not hmac.compare_digest(mac.read_text().strip(), expected):
                return None
        return data

    def put(self, key: str, data: bytes) -> Path:
        path = self.path(key)
        if self.signing_key is not None:
            atomic_write(path.with_name(path.name + ".hmac"), sign_plan(data, self.signing_key).encode())
        atomic_write(path, data)
        return path
