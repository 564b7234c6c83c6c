"""What the build cache trusts: its own signature, and a directory only this user can write.

Every entry's record (``entry.json``: its key, the sha256 of each of its files, the summary) is
signed with an HMAC-SHA256 under a per-user secret that lives outside the cache, in
``$XDG_CONFIG_HOME/llmc/cache.key`` (else ``~/.config/llmc/cache.key``), created mode 0600 on
first use. A lookup checks the signature before anything else: an entry whose files and hashes
were replaced consistently, or whose hash record alone was edited, is not signed by this key and
is a miss (the entry is removed), never a hit. Whoever can write to the cache but cannot read
the key cannot make an entry llmc will use.

The cache directory itself (and its ``builds/`` and ``calibration/``) must be owned by the user
and not writable by group or others; the size limit must be a number of MiB >= 0. Both are
checked, as one line each, before a build compiles anything (:func:`check_settings`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError
from llmc.model.files import check_private_dir, make_private_dir

__all__ = ["check_private_dir", "make_private_dir"]  # their home is llmc.model.files

KEY_FILE = "cache.key"
MAC_FIELD = "mac"
_KEY_HEX = 64  # 32 random bytes, as hex


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/llmc`` (an absolute XDG_CONFIG_HOME only, as the spec says), else
    ``~/.config/llmc``."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "llmc"


def key_path() -> Path:
    return config_dir() / KEY_FILE


def parse_max_mb(text: str) -> int:
    """``LLMC_CACHE_MAX_MB`` as bytes: a finite number of MiB >= 0 (0 stores nothing)."""
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = math.nan
    if not math.isfinite(megabytes) or megabytes < 0:
        raise LlmcError(
            f"LLMC_CACHE_MAX_MB must be a number of MiB >= 0 (e.g. 10240), not '{text}': set it to one, or unset it"
        )
    return int(megabytes * (1 << 20))


def check_root(root: Path) -> None:
    """Refuse a cache directory that is not a directory, not the user's, or writable by others
    (it is created, mode 0700, when missing); the same for its sections that exist."""
    if root.exists() and not root.is_dir():
        raise LlmcError(f"LLMC_CACHE_DIR {root} is not a directory: point LLMC_CACHE_DIR at a directory, or unset it")
    for path in (root, root / "builds", root / "calibration"):
        if path.is_symlink() and path != root:
            raise LlmcError(f"cache directory {path} is a link: remove it (llmc recreates it)")
        if path.is_dir():
            check_private_dir(path, "cache directory")


def load_key() -> bytes:
    """The per-user signing key, created on first use (0600, in a 0700 directory)."""
    path = key_path()
    fix = f"remove {path} (a new key is made; cached builds are then rebuilt once)"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists() and not path.is_symlink():
            _create_key(path)
        # never follow a link; never block on a FIFO planted there
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if path.is_symlink():
            raise LlmcError(f"llmc's cache key {path} is a link: {fix}") from None
        raise LlmcError(
            f"cannot read or create llmc's cache key {path} ({exc.strerror or exc}): set XDG_CONFIG_HOME to a "
            "writable directory, or build with --no-cache"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LlmcError(f"llmc's cache key {path} is not a regular file: {fix}")
        text = os.read(fd, _KEY_HEX + 2)
    finally:
        os.close(fd)
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise LlmcError(f"llmc's cache key {path} is owned by another user (uid {info.st_uid}): {fix}")
    if info.st_mode & 0o077:
        raise LlmcError(f"llmc's cache key {path} is readable or writable by others: run chmod 600 {path}, or {fix}")
    key = text.strip()
    try:
        if len(key) != _KEY_HEX:
            raise ValueError
        return bytes.fromhex(key.decode("ascii"))
    except ValueError:
        raise LlmcError(f"llmc's cache key {path} is not a key llmc wrote: {fix}") from None


def _create_key(path: Path) -> None:
    """Write a fresh key beside ``path`` and link it into place: a concurrent first use reads
    either this key or the other process's, always whole."""
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(_KEY_HEX // 2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        except OSError:  # no hard links on this file system
            with contextlib.suppress(FileExistsError):
                fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd2, "wb") as out:
                    out.write(tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)


def sign(key: bytes, record: dict[str, Any]) -> str:
    """The HMAC-SHA256 of an entry's record (every field but the signature, canonical JSON)."""
    body = {k: v for k, v in record.items() if k != MAC_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def signed(key: bytes, record: dict[str, Any]) -> bool:
    """Whether ``record`` carries this key's signature of itself."""
    mac = record.get(MAC_FIELD)
    if not isinstance(mac, str):
        return False
    try:
        expected = sign(key, record)
    except (TypeError, ValueError):
        return False
    return hmac.compare_digest(mac, expected)
