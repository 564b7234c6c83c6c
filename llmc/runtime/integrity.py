"""The artifact integrity contract: every file hashed at build time, checked at every use.

The build hashes each file of the artifact (model, external data, TensorRT engine, calibration
statistics, tokenizer...) right after writing it, before verifying it, and checks the hashes
again just before moving the artifact into place: the manifest's ``artifact.sha256`` vouches for
the bytes that were verified. ``llmc.load``, ``llmc bench``, ``llmc check`` and ``llmc inspect``
refuse an artifact whose manifest is not the object llmc writes, lacks the hashes, or whose files
are missing, are symlinks, or do not match them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError
from llmc.model.files import MANIFEST_FILE, MODEL_FILE, PLAN_FILE, sha256_file

_SHA256 = re.compile(r"[0-9a-f]{64}")
_REBUILD = "rebuild the artifact with `llmc build`"


def hash_files(directory: Path, names: list[str]) -> dict[str, str]:
    """``{name: sha256}`` of regular files in ``directory`` (a symlink is refused)."""
    hashes = {}
    for name in names:
        path = directory / name
        if path.is_symlink() or not path.is_file():
            raise LlmcError(f"{path}: not a regular file; an artifact's files are never links, {_REBUILD}")
        hashes[name] = sha256_file(path)
    return hashes


def check_manifest(path: Path, manifest: Any) -> dict[str, Any]:
    """``manifest`` as llmc writes it (the fields its readers use, with their types), else one line."""
    where = path / MANIFEST_FILE

    def refuse(what: str) -> LlmcError:
        return LlmcError(f"{where}: {what}; this is not a manifest llmc wrote (or it was edited): {_REBUILD}")

    if not isinstance(manifest, dict):
        raise refuse(f"holds a JSON {type(manifest).__name__}, not an object")
    for key in ("target", "precision"):
        if not isinstance(manifest.get(key), str):
            raise refuse(f"'{key}' is missing or not a string")
    section = manifest.get("artifact")
    if not isinstance(section, dict):
        raise refuse("the 'artifact' section is missing")
    hashes = section.get("sha256")
    if not isinstance(hashes, dict) or not hashes:
        raise refuse("'artifact.sha256' (the hash of every file) is missing; artifacts built before llmc "
                     "recorded it cannot be checked")
    for name, digest in hashes.items():
        if not _plain_name(name) or not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise refuse(f"'artifact.sha256' has a bad entry '{name}'")
    files = section.get("files")
    if not isinstance(files, list) or MODEL_FILE not in files or any(f not in hashes for f in files):
        raise refuse("'artifact.files' must list model.onnx and files hashed in 'artifact.sha256'")
    _check_sections(manifest, refuse)
    return manifest


def _check_sections(manifest: dict[str, Any], refuse: Any) -> None:
    session = manifest.get("session", {})
    if not isinstance(session, dict) or not isinstance(session.get("options", {}), dict):
        raise refuse("'session' must be an object with an 'options' object")
    engine = manifest.get("engine")
    if engine is not None and not isinstance(engine, dict):
        raise refuse("'engine' must be an object")
    if engine and engine.get("built") and PLAN_FILE not in manifest["artifact"]["sha256"]:
        raise refuse(f"the engine is built but {PLAN_FILE} is not hashed in 'artifact.sha256'")
    for key in ("verification", "quantization", "fp16", "memory"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise refuse(f"'{key}' must be an object")


def check_files(path: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest hashes is a regular file in ``path`` with that sha256."""
    for name, expected in manifest["artifact"]["sha256"].items():
        file = path / name
        if file.is_symlink():
            raise LlmcError(f"{file}: is a symlink; an artifact's files are never links, {_REBUILD}")
        if not file.is_file():
            raise LlmcError(f"{file}: missing (the manifest lists it); {_REBUILD}")
        if sha256_file(file) != expected:
            raise LlmcError(
                f"{file}: sha256 does not match the manifest; the file was modified after the build, "
                f"{_REBUILD}"
            )


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name and name != MANIFEST_FILE
