"""The artifact integrity contract: every file hashed at build time, checked at every use.

The build hashes each file of the artifact (model, external data, TensorRT engine, calibration
statistics, tokenizer...) right after writing it, before verifying it, and checks the hashes
again just before moving the artifact into place: the manifest's ``artifact.sha256`` vouches for
the bytes that were verified. ``llmc.load``, ``llmc bench``, ``llmc check`` and ``llmc inspect``
refuse an artifact whose manifest is not the object llmc writes, lacks the hashes
(``llmc.runtime.manifest``, which checks the manifest), or whose files are missing, are symlinks,
or do not match them (:func:`check_files`).
"""

from __future__ import annotations

from pathlib import Path

from llmc.errors import LlmcError
from llmc.model.files import sha256_file

REBUILD = "rebuild the artifact with `llmc build`"


def hash_files(directory: Path, names: list[str]) -> dict[str, str]:
    """``{name: sha256}`` of regular files in ``directory`` (a symlink is refused)."""
    hashes = {}
    for name in names:
        path = directory / name
        if path.is_symlink() or not path.is_file():
            raise LlmcError(f"{path}: not a regular file; an artifact's files are never links, {REBUILD}")
        hashes[name] = sha256_file(path)
    return hashes


def check_files(path: Path, hashes: dict[str, str]) -> None:
    """Every file the manifest hashes (``artifact.sha256``: ``hashes``) is a regular file in
    ``path`` with that sha256."""
    for name, expected in hashes.items():
        file = path / name
        if file.is_symlink():
            raise LlmcError(f"{file}: is a symlink; an artifact's files are never links, {REBUILD}")
        if not file.is_file():
            raise LlmcError(f"{file}: missing (the manifest lists it); {REBUILD}")
        if sha256_file(file) != expected:
            raise LlmcError(
                f"{file}: sha256 does not match the manifest; the file was modified after the build, "
                f"{REBUILD}"
            )
