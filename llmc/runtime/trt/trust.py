"""Engine trust: a serialized TensorRT engine is executable code, so llmc only loads its own.

Deserializing a plan runs code chosen by whoever wrote it (a version-compatible plan even
carries its own runtime library), so "the artifact's manifest says so" is not enough. At build
time llmc signs ``model.plan`` with HMAC-SHA256 under a per-user key kept OUTSIDE the artifact
(``$LLMC_ENGINE_KEY_FILE`` or ``~/.config/llmc/engine.key``, mode 0600); the manifest records
the MAC and the key's id, never the key. At load time :func:`verify_plan` refuses the plan
unless the MAC matches under this machine's key, and also refuses plans that this TensorRT or
this GPU cannot run, with the reason in one line. Copying an artifact to another machine
therefore means rebuilding its engine there (or copying the key, a deliberate act).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError
from llmc.model.files import PLAN_FILE

KEY_BYTES = 32
_REQUIRED = ("sha256", "hmac", "key_id", "tensorrt_version", "compute_capability")


def default_key_path() -> Path:
    """``$LLMC_ENGINE_KEY_FILE``, else ``~/.config/llmc/engine.key``."""
    env = os.environ.get("LLMC_ENGINE_KEY_FILE")
    return Path(env).expanduser() if env else Path.home() / ".config" / "llmc" / "engine.key"


def load_or_create_key(path: Path | None = None) -> bytes:
    """This user's signing key, created on first use (32 random bytes, file mode 0600)."""
    path = Path(path) if path is not None else default_key_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another build created it first: use theirs
            return _read_key(path)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
        os.chmod(path, 0o600)  # O_CREAT's mode is masked by the umask; make it exact
    return _read_key(path)


def load_key(path: Path | None = None) -> bytes | None:
    """The signing key if its file exists; never creates one (loading must not mint keys)."""
    path = Path(path) if path is not None else default_key_path()
    return _read_key(path) if path.exists() else None


def key_id(key: bytes) -> str:
    """A public name for the key (first 16 hex of its SHA-256), safe to record in manifests."""
    return hashlib.sha256(key).hexdigest()[:16]


def sign_plan(data: bytes, key: bytes) -> str:
    """HMAC-SHA256 of the plan bytes, hex."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def engine_manifest(
    plan_path: Path,
    key: bytes,
    *,
    trt_version: str,
    cuda_version: str | None,
    gpu: str,
    compute_capability: str,
    profiles: dict[str, Any],
    flags: dict[str, Any],
    cache_key: str,
) -> dict[str, Any]:
    """The manifest's ``engine`` section for a plan llmc just built and wrote to ``plan_path``."""
    data = Path(plan_path).read_bytes()
    return {
        "built": True,
        "file": Path(plan_path).name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "hmac": sign_plan(data, key),
        "key_id": key_id(key),
        "tensorrt_version": trt_version,
        "cuda_version": cuda_version,
        "gpu": gpu,
        "compute_capability": compute_capability,
        "profiles": {name: _profile_dict(shape) for name, shape in profiles.items()},
        "flags": dict(flags),
        "cache_key": cache_key,
    }


def verify_plan(
    artifact_dir: Path,
    engine: dict[str, Any] | None,
    *,
    key: bytes | None = None,
    trt_version: str | None = None,
    compute_capability: str | None = None,
) -> bytes:
    """The plan bytes, or one :class:`LlmcError` saying why they must not be loaded.

    Checked in order: an engine was built; the plan file exists; the manifest has the fields;
    a key is available (``key`` or the key file); it is the key the plan was signed with; the
    HMAC matches; the installed TensorRT (``trt_version``) and GPU (``compute_capability``) can
    run it. The last two are skipped when the caller passes None. A plan built version-compatible
    also loads on a later TensorRT; one built ``ampere_plus`` on any GPU of compute capability 8.0+.
    """
    artifact_dir = Path(artifact_dir)
    if not engine or not engine.get("built"):
        raise LlmcError(
            f"{artifact_dir} has no TensorRT engine (built with --no-engine); rebuild it with "
            "--target trt on a GPU host"
        )
    name = str(engine.get("file") or PLAN_FILE)
    if Path(name).name != name or name in (".", ".."):
        raise LlmcError(
            f"the engine manifest in {artifact_dir} names plan file '{name}', which is not a "
            "plain file name; rebuild the engine"
        )
    plan = artifact_dir / name
    if not plan.is_file():
        raise LlmcError(f"{plan} is missing; rebuild the engine with --target trt on a GPU host")
    missing = [field for field in _REQUIRED if not engine.get(field)]
    if missing:
        raise LlmcError(
            f"the engine manifest in {artifact_dir} lacks {', '.join(missing)}; rebuild the engine"
        )
    key_source = "the given key"
    if key is None:
        key_path = default_key_path()
        key_source = str(key_path)
        key = load_key(key_path)
        if key is None:
            raise LlmcError(
                f"cannot verify {plan}: the engine key file {key_path} does not exist (the plan was "
                "signed on another machine or the key was removed); rebuild the engine"
            )
    if not hmac.compare_digest(key_id(key), str(engine["key_id"])):
        raise LlmcError(
            f"{plan} was signed with key {engine['key_id']}, not this machine's key {key_id(key)} "
            f"({key_source}); rebuild the engine here"
        )
    data = plan.read_bytes()
    if not hmac.compare_digest(sign_plan(data, key), str(engine["hmac"])):
        raise LlmcError(
            f"{name} is not the engine llmc built (HMAC mismatch); refusing to load it: a serialized "
            f"engine is executable code; rebuild the engine ({plan})"
        )
    flags = engine.get("flags") or {}
    built_version = str(engine["tensorrt_version"])
    if trt_version is not None and not _version_ok(built_version, trt_version, flags):
        raise LlmcError(
            f"{plan} was built with TensorRT {built_version}, but TensorRT {trt_version} is installed; "
            f"rebuild the engine (or install TensorRT {built_version})"
        )
    built_cc = str(engine["compute_capability"])
    if compute_capability is not None and not _cc_ok(built_cc, compute_capability, flags):
        raise LlmcError(
            f"{plan} was built for compute capability {built_cc}, but this GPU is {compute_capability}; "
            "rebuild the engine on this GPU (or build with hardware compatibility ampere_plus)"
        )
    return data


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise LlmcError(
            f"engine key file {path} holds {len(key)} bytes, fewer than {KEY_BYTES}; delete it and "
            "rebuild your engines (a new key is created on the next build)"
        )
    return key


def _profile_dict(shape: Any) -> dict[str, list[int]]:
    if hasattr(shape, "to_dict"):
        return shape.to_dict()
    return {k: [int(d) for d in shape[k]] for k in ("min", "opt", "max")}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def _version_ok(built: str, installed: str, flags: dict[str, Any]) -> bool:
    if built == installed:
        return True
    # Version-compatible plans run on the TensorRT that built them and on later ones.
    return bool(flags.get("version_compatible")) and _version_tuple(installed) >= _version_tuple(built)


def _cc_ok(built: str, device: str, flags: dict[str, Any]) -> bool:
    if built == device:
        return True
    if flags.get("hardware_compatibility") == "ampere_plus":
        return _version_tuple(built) >= (8,) and _version_tuple(device) >= (8,)
    return False
