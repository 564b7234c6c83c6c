"""The build cache under attack: tampered entries and settings that make no sense.

A seed cache is built once per process (``seed()``): model A (``relu_add``) and model B (the same
inputs and outputs, other weights) each built once, so the cache holds a signed entry for each;
A's genuine artifact is kept to compare against. Each example copies the seed (cache and key)
into its own directory outside the workspace, damages it in one of :data:`ENTRY_ATTACKS` ways or
breaks a setting (:data:`SETTING_ATTACKS`), and builds A again.

The contract: the build exits 0 with A's own artifact (byte-identical to the genuine one; a hit
only when the entry was left intact) or, for a broken setting, exits 1 with one line naming the
setting; never a traceback, never B's model served as A's.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx
from hypothesis import strategies as st

from tests.fuzz.models import relu_add

_SEED: dict[str, Any] = {}

# Entry attacks that leave the entry as this user's llmc stored it (a hit is right for these).
HARMLESS = {"none", "touch", "extra-file"}  # a file the record does not list is never copied
ENTRY_ATTACKS = [
    "none", "touch", "swap-consistent", "swap-one-consistent", "edit-hash", "edit-field", "add-field",
    "flip-byte", "resign-other-key", "drop-mac", "mac-not-text", "record-garbage", "record-not-object",
    "record-empty", "record-missing", "file-to-link", "entry-is-link", "other-entry-moved-here", "extra-file",
    "file-missing", "manifest-other-key",
]
# (what, value): a setting and what it is set to; ``None`` values are laid out by ``apply_setting``.
SETTING_ATTACKS = [
    ("max-mb", "nan"), ("max-mb", "-1"), ("max-mb", "inf"), ("max-mb", "-inf"), ("max-mb", "lots"),
    ("max-mb", ""), ("max-mb", "1e400"), ("max-mb", "0x10"), ("max-mb", "0"), ("max-mb", "0.001"),
    ("max-mb", "10240"), ("max-mb", " 5 "), ("max-mb", "-0"), ("max-mb", "1_0"),
    ("dir", "file"), ("dir", "under-file"), ("dir", "dangling-link"), ("dir", "link-to-private-dir"),
    ("dir", "missing-parents"), ("mode", 0o777), ("mode", 0o775), ("mode", 0o757), ("mode", 0o1777),
    ("mode", 0o755), ("mode", 0o700), ("builds-mode", 0o777), ("builds-mode", 0o720),
    ("owner", "root-dir"), ("owner", "builds"), ("key", "mode-644"), ("key", "link"), ("key", "garbage"),
    ("key", "empty"), ("key", "directory"), ("key", "other-owner"),
]


def other_model() -> onnx.ModelProto:
    """B: relu_add's inputs and outputs, other weights (what a swapped entry would serve)."""
    model = relu_add()
    model.graph.initializer[0].float_data[:] = []
    model.graph.initializer[0].raw_data = bytes(range(12))
    return model


def seed() -> dict[str, Any]:
    """Once per process: a config dir with a key and a cache with A's and B's signed entries."""
    if not _SEED:
        import atexit

        import llmc

        keep = Path(tempfile.mkdtemp(prefix="llmc-fuzz-cache-"))
        atexit.register(shutil.rmtree, keep, True)
        for name, model in (("a", relu_add()), ("b", other_model())):
            (keep / "models").mkdir(exist_ok=True)
            onnx.save(model, keep / "models" / f"{name}.onnx")
        with environment(keep / "cache", keep / "config"):
            a = llmc.build(keep / "models" / "a.onnx", output=keep / "a")
            b = llmc.build(keep / "models" / "b.onnx", output=keep / "b")
        _SEED.update(dir=keep, key_a=a.manifest.cache.key, key_b=b.manifest.cache.key,
                     model_a=(keep / "a" / "model.onnx").read_bytes(), model_b=(keep / "b" / "model.onnx").read_bytes())
        assert _SEED["model_a"] != _SEED["model_b"]
    return _SEED


class environment:
    """LLMC_CACHE_DIR / XDG_CONFIG_HOME set (cache on) for the duration; restored after."""

    def __init__(self, cache: Path | str, config: Path, max_mb: str | None = None) -> None:
        self.values = {"LLMC_CACHE_DIR": str(cache), "XDG_CONFIG_HOME": str(config), "LLMC_NO_CACHE": None,
                       "LLMC_CACHE_MAX_MB": max_mb}

    def __enter__(self) -> None:
        self.before = {k: os.environ.get(k) for k in self.values}
        for name, value in self.values.items():
            _set(name, value)

    def __exit__(self, *_: Any) -> None:
        for name, value in self.before.items():
            _set(name, value)


def _set(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def copy_seed(into: Path) -> tuple[Path, Path]:
    """The seed's cache and config directories copied under ``into``: (cache, config)."""
    source = seed()["dir"]
    shutil.copytree(source / "cache", into / "cache", symlinks=True)
    shutil.copytree(source / "config", into / "config", symlinks=True)
    return into / "cache", into / "config"


def _rehash(entry: Path) -> None:
    """Make the record's hashes match the files again, as a tamperer without the key can."""
    info = json.loads((entry / "entry.json").read_text())
    for name in info["files"]:
        if (entry / name).is_file():
            info["files"][name] = hashlib.sha256((entry / name).read_bytes()).hexdigest()
    (entry / "entry.json").write_text(json.dumps(info))


def _edit_record(entry: Path, change) -> None:
    info = json.loads((entry / "entry.json").read_text())
    change(info)
    (entry / "entry.json").write_text(json.dumps(info))


def attack_entry(kind: str, cache: Path, draw) -> None:
    """Damage A's entry in ``cache`` in the way ``kind`` names (``draw`` picks the details)."""
    s = seed()
    entry, other = cache / "builds" / s["key_a"], cache / "builds" / s["key_b"]
    files = sorted(json.loads((entry / "entry.json").read_text())["files"])
    name = draw(st.sampled_from(files))
    if kind == "touch":
        os.utime(entry / "entry.json", (1, 1))
    elif kind in ("swap-consistent", "swap-one-consistent"):
        for item in files if kind == "swap-consistent" else ["model.onnx"]:
            shutil.copyfile(other / item, entry / item)
        _rehash(entry)
    elif kind == "edit-hash":
        _edit_record(entry, lambda info: info["files"].__setitem__(name, draw(st.sampled_from(
            ["0" * 64, secrets.token_hex(32), "", "x"]))))
    elif kind == "edit-field":
        field = draw(st.sampled_from(["key", "format", "source", "target", "precision", "external", "created"]))
        _edit_record(entry, lambda info: info.__setitem__(field, draw(st.sampled_from(
            [s["key_b"], 1, None, {"w.bin": "0" * 64}, "int8", -1]))))
    elif kind == "add-field":
        _edit_record(entry, lambda info: info.__setitem__("extra", draw(st.text(max_size=5))))
    elif kind == "flip-byte":
        raw = bytearray((entry / name).read_bytes())
        at = draw(st.integers(0, len(raw) - 1))
        raw[at] ^= draw(st.integers(1, 255))
        (entry / name).write_bytes(bytes(raw))
    elif kind == "resign-other-key":
        from llmc.compiler import cache_trust

        shutil.copyfile(other / "model.onnx", entry / "model.onnx")
        _rehash(entry)
        _edit_record(entry, lambda info: info.__setitem__("mac", cache_trust.sign(secrets.token_bytes(32), info)))
    elif kind == "drop-mac":
        _edit_record(entry, lambda info: info.pop("mac", None))
    elif kind == "mac-not-text":
        _edit_record(entry, lambda info: info.__setitem__("mac", draw(st.sampled_from([None, 0, [], {}, 1.5]))))
    else:
        _attack_layout(kind, entry, other, name, draw)


def _attack_layout(kind: str, entry: Path, other: Path, name: str, draw) -> None:
    if kind == "record-garbage":
        (entry / "entry.json").write_bytes(draw(st.binary(max_size=40)))
    elif kind == "record-not-object":
        (entry / "entry.json").write_text(json.dumps(draw(st.sampled_from([[], 1, "x", None]))))
    elif kind == "record-empty":
        (entry / "entry.json").write_text("")
    elif kind == "record-missing":
        (entry / "entry.json").unlink()
    elif kind == "file-to-link":
        (entry / name).unlink()
        (entry / name).symlink_to(other / name)
    elif kind == "entry-is-link":
        shutil.rmtree(entry)
        entry.symlink_to(other)
    elif kind == "other-entry-moved-here":
        shutil.rmtree(entry)
        shutil.copytree(other, entry)
    elif kind == "extra-file":
        (entry / draw(st.sampled_from(["notes.txt", "model.onnx.data", ".hidden"]))).write_bytes(b"x")
    elif kind == "file-missing":
        (entry / name).unlink()
    elif kind == "manifest-other-key":
        shutil.copyfile(other / "manifest.json", entry / "manifest.json")
        _rehash(entry)


def apply_setting(what: str, value: Any, cache: Path, config: Path) -> tuple[str, str | None, str | None]:
    """Break (or keep) one setting: returns (LLMC_CACHE_DIR, LLMC_CACHE_MAX_MB, the word the
    one-line error must hold, or None where the setting is fine)."""
    if what == "max-mb":
        return str(cache), value, None if _valid_mb(value) else "LLMC_CACHE_MAX_MB"
    if what == "dir":
        return _lay_out_dir(value, cache)
    if what in ("mode", "builds-mode"):
        (cache if what == "mode" else cache / "builds").chmod(value)
        return str(cache), None, "chmod go-w" if value & 0o022 else None
    if what == "owner":
        _chown_other(cache if value == "root-dir" else cache / "builds")
        return str(cache), None, "owned by another user"
    key = config / "llmc" / "cache.key"
    if value == "other-owner":
        _chown_other(key)
        return str(cache), None, "owned by another user"
    if value == "mode-644":
        key.chmod(0o644)
    elif value == "link":
        shutil.copyfile(key, config / "elsewhere")
        key.unlink()
        key.symlink_to(config / "elsewhere")
    elif value in ("garbage", "empty"):
        key.write_text("not a key at all\n" if value == "garbage" else "")
    elif value == "directory":
        key.unlink()
        key.mkdir()
    return str(cache), None, "cache.key"


def _valid_mb(value: str) -> bool:
    import math

    try:
        number = float(value)
    except ValueError:
        return False
    return math.isfinite(number) and number >= 0


def _lay_out_dir(kind: str, cache: Path) -> tuple[str, None, str | None]:
    spare = cache.with_name("spare")
    if kind == "file":
        shutil.rmtree(cache)
        cache.write_text("not a directory")
        return str(cache), None, "LLMC_CACHE_DIR"
    if kind == "under-file":
        spare.write_text("x")
        return str(spare / "cache"), None, "cache"
    if kind == "dangling-link":
        shutil.rmtree(cache)
        cache.symlink_to(spare)
        return str(cache), None, "LLMC_CACHE_DIR"  # never created through a link
    if kind == "link-to-private-dir":
        cache.rename(spare)
        cache.symlink_to(spare)
        return str(cache), None, None
    return str(cache.parent / "new" / "deeper" / "cache"), None, None  # missing-parents: created


def _chown_other(path: Path) -> None:
    """Give ``path`` to another user: chown as root; otherwise the check is made to see another
    euid (``owner_patch``)."""
    if os.geteuid() == 0:
        os.chown(path, 4321, -1, follow_symlinks=False)


def owner_patch(value: Any):
    """Where the test is not root (no chown), llmc is made to see another user's id instead."""
    import contextlib
    from unittest import mock

    from llmc.compiler import cache_trust

    if value not in ("root-dir", "builds", "other-owner") or os.geteuid() == 0:
        return contextlib.nullcontext()
    return mock.patch.object(cache_trust.os, "geteuid", lambda: os.getuid() + 1)
