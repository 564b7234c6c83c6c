"""The artifact's file names and file hashing: what the build cache and ``llmc.load`` need
without importing onnx (so a cache hit and ``llmc --help`` stay fast)."""

from __future__ import annotations

import hashlib
import os
import shutil
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
# A Hugging Face tokenizer's files (those that exist are kept), and a decoder's generation config:
# `llmc export` writes them beside model.onnx, `llmc build` carries them into the artifact.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
    "chat_template.jinja", "chat_template.json",
)
GENERATION_FILE = "generation_config.json"
COMPANION_FILES = (*TOKENIZER_FILES, GENERATION_FILE)
# Every file an artifact directory may hold (a manifest may list more).
ARTIFACT_FILES = frozenset({MODEL_FILE, DATA_FILE, MANIFEST_FILE, PLAN_FILE, CALIBRATION_FILE, *COMPANION_FILES})
# Every file `llmc export` writes.
EXPORT_FILES = frozenset({MODEL_FILE, DATA_FILE, *COMPANION_FILES})


def companion_files(directory: str | os.PathLike) -> list[str]:
    """The tokenizer and generation config files in ``directory`` (regular files, or links to
    them: their content is what is copied), in :data:`COMPANION_FILES` order."""
    directory = Path(directory)
    return [name for name in COMPANION_FILES if (directory / name).is_file()]


def copy_companions(source: str | os.PathLike, destination: str | os.PathLike) -> list[str]:
    """Copy :func:`companion_files` of ``source`` into ``destination`` as regular files."""
    names = companion_files(source)
    for name in names:
        target = Path(destination) / name
        target.unlink(missing_ok=True)  # never write through a link
        shutil.copyfile(Path(source) / name, target)
    return names


def mib(n: int) -> str:
    """A size in bytes as people read it: MiB from 1 MiB up (and 0), KiB below."""
    return f"{n / 2**20:,.2f} MiB" if n >= 2**20 or n == 0 else f"{n / 1024:,.1f} KiB"
