"""The output directory: checked before any work, written privately, moved into place whole.

Used by ``llmc build`` (an artifact: :data:`ARTIFACT_LAYOUT`) and ``llmc export`` (an exported
model: :data:`EXPORT_LAYOUT`). A build never writes into ``-o DIR`` itself. It writes into a private temporary directory
beside it (``.DIR.llmc-<random>``, mode 0700, same filesystem) and, once the artifact is verified
and hashed, swaps that directory into place with one rename (``renameat2(RENAME_EXCHANGE)`` on
Linux when ``DIR`` exists; two renames elsewhere). So:

- a build killed midway leaves the previous artifact whole (and a temporary directory that the
  next build into ``DIR`` removes);
- a symlink inside ``DIR`` (``model.onnx`` -> elsewhere) is replaced, never written through, and
  ``DIR`` itself being a symlink is refused;
- two builds into one ``DIR`` are serialized by an exclusive lock (``.DIR.llmc-lock`` beside it,
  ``flock``): the second one is refused with one line instead of racing.

``DIR`` is replaced as a whole, so a directory that holds anything but an llmc artifact is
refused rather than deleted.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from llmc.errors import LlmcError
from llmc.model.files import ARTIFACT_FILES, EXPORT_FILES, MANIFEST_FILE, MODEL_FILE

TEMP_INFIX = ".llmc-"
LOCK_SUFFIX = ".llmc-lock"
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


class DirLayout(NamedTuple):
    """What an output directory of one kind holds: the file that marks it, every file it may
    hold, what it is called in messages, and the command that writes it."""

    marker: str
    files: frozenset[str]
    what: str
    writer: str


ARTIFACT_LAYOUT = DirLayout(MANIFEST_FILE, ARTIFACT_FILES, "llmc artifact", "llmc build")
EXPORT_LAYOUT = DirLayout(MODEL_FILE, EXPORT_FILES, "llmc export", "llmc export")


def check_output(path: Path, layout: DirLayout = ARTIFACT_LAYOUT) -> None:
    """Refuse an output path llmc cannot replace safely, before any compiling."""
    flag = f"-o {path}"
    if path.is_symlink():
        state = "a dangling symlink" if not path.exists() else f"a symlink to {os.readlink(path)}"
        raise LlmcError(f"{flag} is {state}; llmc never writes through links: give a real directory path")
    if path.exists() and not path.is_dir():
        raise LlmcError(f"{flag} is an existing file, not a directory; choose a directory path")
    if path.is_dir():
        _check_replaceable(path, layout)
    parent = _existing_ancestor(path.parent)
    if not parent.is_dir():
        raise LlmcError(f"{flag}: {parent} is not a directory; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LlmcError(f"{flag}: cannot write into {parent} (permission denied); choose another output path")


def _check_replaceable(path: Path, layout: DirLayout) -> None:
    """``path`` is empty or holds the files of ``layout`` only (it is replaced as a whole)."""
    names = sorted(entry.name for entry in path.iterdir())
    if not names:
        return
    if layout.marker not in names:
        raise LlmcError(
            f"-o {path} is a directory that holds no {layout.what} ({names[0]}, ...); llmc replaces "
            "the whole output directory: choose a new or empty one"
        )
    known = layout.files | _recorded_files(path / MANIFEST_FILE)
    foreign = [name for name in names if name not in known]
    if foreign:
        raise LlmcError(
            f"-o {path} holds '{foreign[0]}', which is not part of an {layout.what}; llmc replaces the "
            "whole output directory: move it away or choose another directory"
        )


def _recorded_files(manifest_path: Path) -> frozenset[str]:
    """The file names an existing artifact's manifest lists (tokenizer files, say)."""
    try:
        section = json.loads(manifest_path.read_text()).get("artifact", {})
        return frozenset(str(name) for name in [*section.get("files", []), *section.get("sha256", {})])
    except (OSError, ValueError, AttributeError, TypeError):
        return frozenset()


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class OutputWriter:
    """``with OutputWriter(dir) as out: ...write into out.path...; out.commit()``.

    Holds the destination's lock from enter to exit; an exit without ``commit`` (an error, a
    refused build) removes the temporary directory and leaves ``dir`` as it was.
    """

    def __init__(self, destination: Path, layout: DirLayout = ARTIFACT_LAYOUT) -> None:
        self.destination = Path(destination)
        self.layout = layout
        self.path: Path | None = None
        self._lock_fd: int | None = None

    def __enter__(self) -> OutputWriter:
        check_output(self.destination, self.layout)
        parent = self.destination.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        lock_path = parent / f".{self.destination.name}{LOCK_SUFFIX}"
        self._lock_fd = _lock(lock_path, self.destination, self.layout.writer)
        try:
            _remove_stale(parent, self.destination.name)
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}{TEMP_INFIX}", dir=parent))
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.path is not None and self.path.exists():
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self._unlock()

    def commit(self) -> Path:
        """Move the finished artifact into place; return the destination."""
        assert self.path is not None, "commit() outside the with block"
        check_output(self.destination, self.layout)  # still not a link or a foreign directory
        os.chmod(self.path, 0o755 & ~_umask())
        if self.destination.exists():
            _swap(self.path, self.destination)  # self.path now holds the old artifact, removed on exit
        else:
            os.rename(self.path, self.destination)
            self.path = None
        return self.destination

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None


def _lock(lock_path: Path, destination: Path, writer: str) -> int:
    import fcntl

    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        reason = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise LlmcError(f"-o {destination}: cannot open the lock file {lock_path} ({reason}); remove it") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LlmcError(
            f"-o {destination}: another {writer} is writing this directory; wait for it to finish or "
            "choose another -o"
        ) from None
    return fd


def _remove_stale(parent: Path, name: str) -> None:
    """Temporary directories of killed runs (under the lock, nobody else is writing one)."""
    prefix = f".{name}{TEMP_INFIX}"
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix) or entry.name.endswith(LOCK_SUFFIX):
            continue
        if entry.is_symlink() or not entry.is_dir():
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _swap(new: Path, destination: Path) -> None:
    """Exchange ``new`` and ``destination`` atomically where the kernel can, else two renames."""
    if _rename_exchange(new, destination):
        return
    old = Path(tempfile.mkdtemp(prefix=f".{destination.name}{TEMP_INFIX}", dir=destination.parent))
    os.rmdir(old)
    os.rename(destination, old)
    os.rename(new, destination)
    os.rename(old, new)


def _rename_exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
