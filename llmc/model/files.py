"""The artifact's file names and file hashing: what the build cache and ``llmc.load`` need
without importing onnx (so a cache hit and ``llmc --help`` stay fast)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from llmc.errors import LlmcError

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


def check_private_dir(path: Path, what: str) -> None:
    """``path`` is owned by this user and writable by nobody else (POSIX; elsewhere, nothing)."""
    if not hasattr(os, "geteuid"):
        return
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise LlmcError(
            f"{what} {path} is owned by another user (uid {info.st_uid}): set LLMC_CACHE_DIR to a directory of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LlmcError(
            f"{what} {path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o}): "
            f"run chmod go-w {path}, or set LLMC_CACHE_DIR to a private directory"
        )


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) mode 0700 if missing, then check it as above."""
    if path.is_symlink() and not path.exists():
        raise LlmcError(
            f"cache directory {path} is a link to {os.readlink(path)}, which does not exist: create that directory, "
            "or set LLMC_CACHE_DIR to another one"
        )
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise LlmcError(
            f"cannot create cache directory {path} ({exc.strerror or exc}): set LLMC_CACHE_DIR to a writable "
            "directory, or build with --no-cache"
        ) from None
    if not path.is_dir():
        raise LlmcError(f"LLMC_CACHE_DIR {path} is not a directory: point LLMC_CACHE_DIR at a directory, or unset it")
    check_private_dir(path, "cache directory")


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


def model_root(directory: str | os.PathLike) -> Path:
    """The folder a model directory's files must resolve into: the directory itself (resolved),
    or, for a snapshot of the Hugging Face hub cache (``models--ORG--NAME/snapshots/REV``, whose
    files are links to ``../../blobs/SHA``), the repository folder that holds the blobs."""
    directory = Path(directory).resolve()
    repo = directory.parent.parent
    if directory.parent.name == "snapshots" and repo.name.startswith("models--") and (repo / "blobs").is_dir():
        return repo
    return directory


def check_inside(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """``path`` resolved (links followed), or one line when it resolves outside ``root`` (a link,
    or a linked folder on its way, to a file elsewhere on the machine): llmc reads nothing from
    outside a model directory into an export or an artifact."""
    path, root = Path(path), Path(root)
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise LlmcError(
            f"{path}: a link to {resolved}, outside the model directory {root}; llmc copies nothing from "
            f"outside it: replace the link with the file itself (cp --remove-destination {resolved} {path})"
        )
    return resolved


def check_model_directory(directory: str | os.PathLike) -> None:
    """One line for the first entry under ``directory`` (config, weights, tokenizer, modules...)
    that resolves outside :func:`model_root`. Links are not followed into folders, and hidden
    folders (``.git``, ``.cache``: nothing a loader reads) are checked but not entered."""
    root = model_root(directory)
    pending = [Path(directory)]
    while pending:
        for entry in sorted(pending.pop().iterdir()):
            check_inside(entry, root)
            if entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
                pending.append(entry)


def companion_files(directory: str | os.PathLike) -> list[str]:
    """The tokenizer and generation config files in ``directory`` (regular files, or links to
    them inside the model directory: their content is what is copied), in :data:`COMPANION_FILES`
    order; one line for one that resolves outside the model directory (:func:`check_inside`)."""
    directory = Path(directory)
    root = model_root(directory)
    names = [name for name in COMPANION_FILES if os.path.lexists(directory / name)]
    for name in names:
        check_inside(directory / name, root)
    return [name for name in names if (directory / name).is_file()]


def copy_companions(source: str | os.PathLike, destination: str | os.PathLike) -> list[str]:
    """Copy :func:`companion_files` of ``source`` into ``destination`` as regular files."""
    names = companion_files(source)
    for name in names:
        copy_contents(Path(source) / name, Path(destination) / name)
    return names


def copy_contents(source: Path, target: Path) -> None:
    """``source``'s bytes into a new regular file ``target`` (an entry there, a link included, is
    replaced, never written through), created with the umask's mode and no more open than
    ``source``: a private file's copy stays private, and no execute or set-id bit travels."""
    target.unlink(missing_ok=True)
    with open(source, "rb") as src, open(target, "xb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        allowed = stat.S_IMODE(os.fstat(src.fileno()).st_mode) | stat.S_IWUSR | stat.S_IRUSR
        os.fchmod(dst.fileno(), stat.S_IMODE(os.fstat(dst.fileno()).st_mode) & allowed & 0o666)


def mib(n: int) -> str:
    """A size in bytes as people read it: MiB from 1 MiB up (and 0), KiB below."""
    return f"{n / 2**20:,.2f} MiB" if n >= 2**20 or n == 0 else f"{n / 1024:,.1f} KiB"
