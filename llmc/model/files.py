"""The artifact's file names and file hashing: what the build cache and ``llmc.load`` need
without importing onnx (so a cache hit and ``llmc --help`` stay fast)."""

from __future__ import annotations

import hashlib
import os

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
