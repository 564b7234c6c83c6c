"""The artifact's file names and file hashing: what the build cache and ``llmc.load`` need
without importing onnx (so a cache hit and ``llmc --help`` stay fast)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_root() -> Path:
    """llmc's cache directory: ``$LLMC_CACHE_DIR``, else ``~/.cache/llmc`` (builds, calibration
    statistics and TensorRT engines live in folders below it)."""
    root = os.environ.get("LLMC_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "llmc"


DATA_FILE = MODEL_FILE + ".data"  # external weights, when the model has them
PLAN_FILE = "model.plan"  # a TensorRT engine
CALIBRATION_FILE = "calibration.json"  # int8 calibration statistics
# Every file an artifact directory may hold (a manifest may list more, e.g. a tokenizer's).
ARTIFACT_FILES = frozenset({MODEL_FILE, DATA_FILE, MANIFEST_FILE, PLAN_FILE, CALIBRATION_FILE})
