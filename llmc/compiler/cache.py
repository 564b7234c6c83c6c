"""The build cache: a finished artifact keyed by everything that decides its bytes.

Like Olive's pass cache, the key is content, not names: the source model's bytes (external
data included), every build option that changes the output, the calibration data and tokenizer
bytes, and the versions of llmc, onnx, onnx-ir, onnxscript, onnxruntime and numpy. A hit copies
the cached ``model.onnx`` (+ data) and manifest into the output directory, so a second identical
build into another ``-o`` writes a byte-identical model without compiling, calibrating or
verifying again; the files are checked against the sha256 recorded when they were stored, and
an entry that fails the check is dropped. INT8 calibration statistics are cached apart
(``calibration/``), so a build that differs only in what comes after calibration reuses them.

The cache trusts only itself (``llmc.compiler.cache_trust``): every entry's record is signed with
a per-user key kept outside the cache (``~/.config/llmc/cache.key``), and an entry that is not
signed by it (files and hashes swapped consistently, a hash record edited) is a miss and removed
before anything is copied. The directory must be the user's and not writable by others.

Layout under ``$LLMC_CACHE_DIR`` (default ``~/.cache/llmc``)::

    builds/<key>/entry.json, model.onnx[, model.onnx.data], manifest.json[, calibration.json]
                 [, tokenizer.json, generation_config.json, ... (carried from beside the source)]
    calibration/<key>/entry.json, statistics.json
    trt/  (TensorRT engines and timing cache, managed by the trt backend)

The total of ``builds/`` and ``calibration/`` is kept under ``$LLMC_CACHE_MAX_MB`` (default 10
GiB) by evicting the least recently used entries after each store. ``llmc cache`` lists, sizes
and clears it; ``--no-cache`` / ``LLMC_NO_CACHE=1`` bypasses it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmc.compiler import cache_trust
from llmc.model.files import MANIFEST_FILE, cache_root, copy_contents, sha256_file

FORMAT = 2  # bump when the entry layout or the key's meaning changes (2: signed entries)
DEFAULT_MAX_MB = 10 * 1024
ENTRY_FILE = "entry.json"
STATISTICS_FILE = "statistics.json"
SECTIONS = ("builds", "calibration")


def cache_disabled() -> bool:
    return os.environ.get("LLMC_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no")


def max_bytes() -> int:
    """``$LLMC_CACHE_MAX_MB`` in bytes; a value that is not a finite number >= 0 is one line."""
    return cache_trust.parse_max_mb(os.environ.get("LLMC_CACHE_MAX_MB", str(DEFAULT_MAX_MB)))


def digest_key(material: dict[str, Any]) -> str:
    """The cache key of a JSON-able description (sorted keys, paths and tuples as text/lists)."""
    text = json.dumps({"format": FORMAT, **material}, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not part of a cache key")


def external_data(source: Path, model: Any) -> dict[str, str]:
    """sha256 of every external data file the source model's initializers read, by its name
    relative to the model's directory (the model file's bytes fix which files these are)."""
    import onnx_ir as ir

    files = {
        Path(v.const_value.path) for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)
    }
    base = source.parent.resolve()
    return {str(f.resolve().relative_to(base)): sha256_file(f) for f in sorted(files) if f.resolve().is_relative_to(base)}


def path_digest(path: str | Path | None) -> str | None:
    """Content hash of a file or of a directory tree (relative names and bytes), None for None."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return f"missing:{path}"  # the build itself reports the missing path
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode() + b"\0" + sha256_file(item).encode())
    return digest.hexdigest()


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name, array in sorted(arrays.items()):
        array = np.ascontiguousarray(array)
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode() + array.tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class CacheEntry:
    key: str
    path: Path
    info: dict[str, Any]


class BuildCache:
    """Artifacts and calibration statistics by content key, LRU-bounded in size."""

    def __init__(self, root: Path | None = None, limit_bytes: int | None = None) -> None:
        """Checks the settings (one line each): the size limit, and the directory when it exists."""
        self.root = root or cache_root()
        self.limit = max_bytes() if limit_bytes is None else limit_bytes
        cache_trust.check_root(self.root)

    def prepare(self) -> BuildCache:
        """Create the directory (0700) and load the signing key: what a build does before it
        compiles, so a cache it cannot use is one line then, not after the compile."""
        cache_trust.make_private_dir(self.root)
        _ = self.secret
        return self

    @functools.cached_property
    def secret(self) -> bytes:
        return cache_trust.load_key()

    def _section(self, name: str) -> Path:
        folder = self.root / name
        cache_trust.make_private_dir(folder)
        return folder

    def _record(self, path: Path, key: str) -> dict[str, Any] | None:
        """An entry's record if this user's key signed it for ``key``; anything else (unsigned,
        edited, moved from another key, unreadable) is removed and None."""
        try:
            info = json.loads((path / ENTRY_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            info = None
        if not isinstance(info, dict) or not cache_trust.signed(self.secret, info) or info.get("key") != key:
            self._drop(path)  # not this cache's own entry: never used
            return None
        return info

    def _write_record(self, folder: Path, info: dict[str, Any]) -> None:
        info[cache_trust.MAC_FIELD] = cache_trust.sign(self.secret, info)
        (folder / ENTRY_FILE).write_text(json.dumps(info, indent=1) + "\n")

    # ------------------------------------------------------------------ builds
    def lookup(self, key: str, source: Path | None = None) -> CacheEntry | None:
        """The entry for ``key`` if it is signed by this user's key, its files are there and the
        source model's external data (next to ``source``) is what it was built from; ``restore``
        checks the copied files' sha256."""
        path = self.root / "builds" / key
        if path.is_symlink():
            self._drop(path)
            return None
        info = self._record(path, key)
        if info is None:
            return None
        files = info.get("files")
        if not isinstance(files, dict) or not files:
            self._drop(path)
            return None
        for name in files:
            item = path / name
            if Path(name).name != name or item.is_symlink() or not item.is_file():
                self._drop(path)  # corrupted or tampered with: never used
                return None
        for name, expected in (info.get("external") or {}).items():
            data = source.parent / name if source is not None else None
            if data is None or not data.is_file() or sha256_file(data) != expected:
                return None  # other weights behind the same model file: a miss, rebuilt and replaced
        os.utime(path / ENTRY_FILE)  # last use, for LRU eviction
        return CacheEntry(key, path, info)

    def restore(self, entry: CacheEntry, out_dir: Path) -> dict[str, Any] | None:
        """Copy the entry's files into ``out_dir`` and return its manifest's JSON (the build reads
        it with ``Manifest.from_dict``), if every copy has the sha256 it was stored with; else drop
        the entry, remove the copies and return None."""
        out_dir.mkdir(parents=True, exist_ok=True)
        copied, manifest = [], None
        try:
            for name, expected in entry.info["files"].items():
                if name == MANIFEST_FILE:
                    data = (entry.path / name).read_bytes()
                    ok = hashlib.sha256(data).hexdigest() == expected
                    manifest = json.loads(data) if ok else None
                else:
                    copied.append(out_dir / name)
                    copy_contents(entry.path / name, out_dir / name)
                    ok = sha256_file(out_dir / name) == expected
                if not ok:
                    break
            else:
                if isinstance(manifest, dict):
                    return manifest
        except (OSError, ValueError):
            pass
        self._drop(entry.path)  # corrupted or tampered with: never used
        for path in copied:
            path.unlink(missing_ok=True)
        return None

    def drop(self, entry: CacheEntry) -> None:
        self._drop(entry.path)

    def store(self, key: str, out_dir: Path, files: list[str], summary: dict[str, Any]) -> bool:
        """Copy a finished artifact's ``files`` (manifest included) in under ``key``."""
        size = sum((out_dir / name).stat().st_size for name in files)
        if size > self.limit:
            return False
        target = self._store_files(self._section("builds"), key, out_dir, {name: name for name in files}, summary)
        if target is None:
            return False
        self.evict(keep=target)
        return True

    def _store_files(
        self, section: Path, key: str, source: Path, names: dict[str, str], summary: dict[str, Any]
    ) -> Path | None:
        """Copy ``source / name`` as ``names[name]`` into a fresh signed entry ``section / key``,
        renamed into place whole; None if the disk said no."""
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=section))
        try:
            hashes = {}
            for name, stored in names.items():
                copy_contents(source / name, staging / stored)
                hashes[stored] = sha256_file(staging / stored)
            info = {"key": key, "format": FORMAT, "files": hashes, "created": time.time(), **summary}
            self._write_record(staging, info)
            target = section / key
            if target.exists() or target.is_symlink():
                self._drop(target)
            os.replace(staging, target)
        except (OSError, ValueError):  # ValueError: a summary JSON cannot hold (NaN)
            shutil.rmtree(staging, ignore_errors=True)
            return None
        return target

    # ------------------------------------------------------------- calibration
    def calibration_path(self, key: str) -> Path:
        """The entry (a directory: the signed record and ``statistics.json``) of ``key``."""
        return self.root / "calibration" / key

    def fetch_calibration(self, key: str, destination: Path) -> bool:
        """Copy cached statistics to ``destination`` if the entry is signed by this user's key and
        the copy has the recorded sha256 (the quantizer also checks their own key)."""
        entry = self.calibration_path(key)
        if destination.exists() or entry.is_symlink() or not entry.is_dir():
            return False
        info = self._record(entry, key)
        if info is None:
            return False
        files = info.get("files")
        expected = files.get(STATISTICS_FILE) if isinstance(files, dict) else None
        cached = entry / STATISTICS_FILE
        if isinstance(expected, str) and not cached.is_symlink() and cached.is_file():
            destination.parent.mkdir(parents=True, exist_ok=True)
            copy_contents(cached, destination)
            if sha256_file(destination) == expected:
                os.utime(entry / ENTRY_FILE)
                return True
            destination.unlink(missing_ok=True)
        self._drop(entry)  # signed, but its file is not what it recorded: never used
        return False

    def keep_calibration(self, key: str, source: Path) -> None:
        if not source.is_file():
            return
        target = self._store_files(self._section("calibration"), key, source.parent, {source.name: STATISTICS_FILE}, {})
        if target is not None:
            self.evict(keep=target)

    # ------------------------------------------------------------ housekeeping
    def entries(self) -> list[tuple[str, Path, int, float]]:
        """(section, path, bytes, last use) of every entry, least recently used first."""
        found = []
        for section in SECTIONS:
            folder = self.root / section
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.name.startswith(".tmp"):
                    continue
                stamp = path / ENTRY_FILE if path.is_dir() else path
                try:
                    found.append((section, path, _tree_size(path), stamp.stat().st_mtime))
                except OSError:
                    continue
        return sorted(found, key=lambda e: e[3])

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Drop least recently used entries until the cache is within its size limit."""
        entries = self.entries()
        total = sum(e[2] for e in entries)
        dropped = []
        for _, path, size, _ in entries:
            if total <= self.limit:
                break
            if keep is not None and path == keep:
                continue
            self._drop(path)
            total -= size
            dropped.append(path)
        return dropped

    def clear(self, sections: tuple[str, ...] = SECTIONS) -> tuple[int, int]:
        """Remove every entry of ``sections``; returns (entries, bytes) removed."""
        count = freed = 0
        for section, path, size, _ in self.entries():
            if section in sections:
                self._drop(path)
                count += 1
                freed += size
        return count, freed

    def describe(self, path: Path) -> dict[str, Any]:
        """What ``llmc cache list`` shows of an entry."""
        if path.is_dir():
            try:
                return json.loads((path / ENTRY_FILE).read_text())
            except (OSError, ValueError):
                return {}
        return {}

    @staticmethod
    def _drop(path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
