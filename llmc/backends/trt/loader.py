"""TensorRT loader: ONNX -> serialized engine (a "plan"), plus the caches around the build.

The build follows the TensorRT 10/11 Python API: ``Builder`` -> strongly typed network ->
``OnnxParser.parse_from_file`` -> ``IBuilderConfig`` (workspace, optimization level, hardware
compatibility, one optimization profile, timing cache) -> ``build_serialized_network``.
Precision is never a builder flag here: llmc's passes already wrote it into the graph (Cast
nodes, Q/DQ pairs), which is the only form TensorRT 11 accepts, so 10 and 11 build alike.

``tensorrt`` (and ``torch``, for device queries) are imported inside functions, so this
module imports on machines without them; functions that take a ``trt`` argument accept any
module with the same names, which is how the tests exercise them without a GPU.
Parser and build failures become one :class:`LlmcError` line naming the ONNX node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmc.backends.trt.profiles import ProfileShape, check_profiles
from llmc.backends.trt.trust import sign_plan
from llmc.errors import LlmcError, first_line

INSTALL_HINT = (
    "--target trt needs TensorRT: pip install 'llmc[trt]' (TensorRT 10 or 11 on an NVIDIA GPU host), "
    "or add --no-engine to write the TensorRT-ready ONNX here"
)
HARDWARE_LEVELS = {
    "none": "NONE",
    "ampere_plus": "AMPERE_PLUS",
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
}
PRECISIONS = ("fp32", "fp16", "int8")
SUPPORT_MATRIX_HINT = "see the TensorRT ONNX operator support matrix"
_LOG = logging.getLogger("llmc.trt")


# --- importing TensorRT -------------------------------------------------------------------


def tensorrt_available() -> bool:
    """Whether ``tensorrt`` is installed (found on the path, not imported)."""
    try:
        return importlib.util.find_spec("tensorrt") is not None
    except (ImportError, ValueError):  # a None/broken entry in sys.modules
        return False


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or one clear error saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise LlmcError(INSTALL_HINT) from None
    return tensorrt


def trt_major(trt: Any) -> int:
    """The major version of a ``tensorrt`` module (``"10.13.0.35"`` -> 10)."""
    match = re.match(r"\s*(\d+)", str(trt.__version__))
    if not match:
        raise ValueError(f"unparseable TensorRT version {trt.__version__!r}")
    return int(match.group(1))


def tensorrt_version() -> str:
    return str(import_tensorrt().__version__)


# --- build configuration ------------------------------------------------------------------


@dataclasses.dataclass
class EngineConfig:
    """How to build one engine.

    Requires: ``optimization_level`` in 0..5; ``hardware_compatibility`` one of
    :data:`HARDWARE_LEVELS`; ``precision`` one of :data:`PRECISIONS` (it records the precision
    already in the graph; it sets no builder flag); ``workspace_bytes`` None (TensorRT's default:
    all device memory) or > 0. ``profiles`` maps every dynamic input to its shapes
    (:func:`~llmc.backends.trt.profiles.check_profiles` fills in static ones).
    """

    profiles: dict[str, ProfileShape] = dataclasses.field(default_factory=dict)
    workspace_bytes: int | None = None
    optimization_level: int = 3
    version_compatible: bool = False
    hardware_compatibility: str = "none"
    precision: str = "fp32"
    timing_cache: Path | None = None
    strongly_typed: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.optimization_level, bool) or self.optimization_level not in range(6):
            raise LlmcError(
                f"TensorRT optimization level must be 0..5 (got {self.optimization_level}); 3 is the default"
            )
        if self.hardware_compatibility not in HARDWARE_LEVELS:
            raise LlmcError(
                f"unknown hardware compatibility '{self.hardware_compatibility}'; "
                f"valid: {', '.join(HARDWARE_LEVELS)}"
            )
        if self.precision not in PRECISIONS:
            raise LlmcError(f"unknown engine precision '{self.precision}'; valid: {', '.join(PRECISIONS)}")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise LlmcError(f"--workspace must be a positive number of bytes (got {self.workspace_bytes})")
        if self.timing_cache is not None:
            self.timing_cache = Path(self.timing_cache)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``flags``: every setting that changes the engine built.

        Profiles are recorded separately; the timing cache only speeds the build, so it is left out
        (it must not change the engine cache key).
        """
        return {
            "workspace_bytes": self.workspace_bytes,
            "optimization_level": self.optimization_level,
            "version_compatible": self.version_compatible,
            "hardware_compatibility": self.hardware_compatibility,
            "precision": self.precision,
            "strongly_typed": self.strongly_typed,
        }

    @classmethod
    def from_dict(
        cls, flags: dict[str, Any], profiles: dict[str, ProfileShape] | None = None
    ) -> EngineConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"profiles", "timing_cache"}
        return cls(profiles=dict(profiles or {}), **{k: v for k, v in flags.items() if k in names})


def _check_typing(trt: Any, major: int, strongly_typed: bool) -> None:
    if not strongly_typed and major >= 11:
        raise LlmcError(
            f"TensorRT {trt.__version__} builds only strongly typed networks; drop strongly_typed=False "
            "(precision comes from the graph's own types)"
        )


def network_flags(trt: Any, major: int, strongly_typed: bool = True) -> int:
    """``create_network`` flags: STRONGLY_TYPED (10 and 11; ignored but accepted by 11), and
    EXPLICIT_BATCH only before 10, where it still meant something."""
    _check_typing(trt, major, strongly_typed)
    kinds = trt.NetworkDefinitionCreationFlag
    flags = 0
    if strongly_typed:
        strong = getattr(kinds, "STRONGLY_TYPED", None)
        if strong is not None:
            flags |= 1 << int(strong)
        elif major < 11:  # 11+ is strongly typed whether or not the flag survives
            raise LlmcError(
                f"TensorRT {trt.__version__} has no strongly typed networks; install TensorRT 10 or 11 "
                "(pip install 'llmc[trt]')"
            )
    if major < 10 and hasattr(kinds, "EXPLICIT_BATCH"):
        flags |= 1 << int(kinds.EXPLICIT_BATCH)
    return flags


def builder_flags(trt: Any, major: int, config: EngineConfig) -> list[Any]:
    """The ``BuilderFlag`` members to set for ``config``.

    Deliberately no FP16/INT8/BF16/FP8 flags, on 10.x either: those "weak typing" flags let
    TensorRT 10 pick lower precision on its own, TensorRT 11 removed them, and the only
    equivalent it keeps is the graph's own types (Casts, Q/DQ), which llmc's passes already
    write. A strongly typed network rejects them anyway. VERSION_COMPATIBLE is set when asked;
    EXCLUDE_LEAN_RUNTIME never is, so a version-compatible plan carries its lean runtime and
    loads on later TensorRT versions (that runtime is host code: see
    :mod:`llmc.backends.trt.trust`).
    """
    _check_typing(trt, major, config.strongly_typed)
    flags = []
    if config.version_compatible:
        flags.append(trt.BuilderFlag.VERSION_COMPATIBLE)
    return flags


def _hardware_level(trt: Any, name: str) -> Any:
    level = getattr(getattr(trt, "HardwareCompatibilityLevel", None), HARDWARE_LEVELS[name], None)
    if level is None:
        raise LlmcError(
            f"TensorRT {trt.__version__} does not support hardware compatibility '{name}'; "
            "use none or ampere_plus"
        )
    return level


def _network_inputs(network: Any) -> list[Any]:
    return [network.get_input(i) for i in range(network.num_inputs)]


def configure_builder(trt: Any, builder: Any, network: Any, config: EngineConfig) -> Any:
    """An ``IBuilderConfig`` for ``config`` (the network must already be parsed)."""
    major = trt_major(trt)
    builder_config = builder.create_builder_config()
    if config.workspace_bytes is not None:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_bytes))
    builder_config.builder_optimization_level = config.optimization_level
    if config.hardware_compatibility != "none":
        builder_config.hardware_compatibility_level = _hardware_level(trt, config.hardware_compatibility)
    for flag in builder_flags(trt, major, config):
        builder_config.set_flag(flag)
    _add_profile(builder, builder_config, network, config.profiles)
    _set_timing_cache(builder_config, config.timing_cache)
    return builder_config


def _add_profile(builder: Any, builder_config: Any, network: Any, profiles: dict[str, ProfileShape]) -> None:
    """One optimization profile covering every dynamic network input."""
    inputs = _network_inputs(network)
    model_inputs = [(t.name, tuple(d if d >= 0 else None for d in t.shape)) for t in inputs]
    full = check_profiles(model_inputs, profiles)
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if not dynamic:
        return
    profile = builder.create_optimization_profile()
    for tensor in dynamic:
        if getattr(tensor, "is_shape_tensor", False):
            raise LlmcError(
                f"input '{tensor.name}' is a shape tensor (its values set shapes), which llmc's TensorRT "
                "build does not support; make it a constant or use --target ort"
            )
        shape = full[tensor.name]
        profile.set_shape(tensor.name, shape.min, shape.opt, shape.max)
    if builder_config.add_optimization_profile(profile) < 0:
        raise LlmcError(
            "TensorRT rejected the optimization profile ("
            + ", ".join(f"{t.name}:{full[t.name].spec()}" for t in dynamic)
            + "); check --shapes against the model's inputs"
        )


def _set_timing_cache(builder_config: Any, path: Path | None) -> None:
    """Load the timing cache at ``path`` if there is one; an empty cache otherwise.

    A cache from another TensorRT version or GPU is refused (``ignore_mismatch=False``) and
    replaced by an empty one, which :func:`build_engine` then saves over it.
    """
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = builder_config.create_timing_cache(data) if data else None
    if cache is None or not builder_config.set_timing_cache(cache, ignore_mismatch=False):
        if data:
            _LOG.warning("timing cache %s does not match this TensorRT/GPU; starting an empty one", path)
        builder_config.set_timing_cache(builder_config.create_timing_cache(b""), ignore_mismatch=False)


# --- ONNX parsing -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParserErrorInfo:
    """One ONNX parser error, detached from TensorRT (``node_index`` -1: no node).

    ``func`` is the parser function that failed (``checkFallbackPluginImporter`` when no
    importer and no plugin exist for the op).
    """

    desc: str
    node_index: int = -1
    node_name: str = ""
    op_type: str = ""
    code: str = ""
    func: str = ""

    @classmethod
    def from_trt(cls, error: Any) -> ParserErrorInfo:
        def call(method: str, default: Any) -> Any:
            fn = getattr(error, method, None)  # node_name/node_operator arrived in TensorRT 9.1
            try:
                return fn() if fn is not None else default
            except Exception:  # a binding without the field: fall back
                return default

        code = call("code", "")
        return cls(
            desc=str(call("desc", "")),
            node_index=int(call("node", -1)),
            node_name=str(call("node_name", "") or ""),
            op_type=str(call("node_operator", "") or ""),
            code=getattr(code, "name", str(code)).split(".")[-1],
            func=str(call("func", "") or ""),
        )

    @property
    def no_importer(self) -> bool:
        """Whether TensorRT has no importer (and no plugin) for the node's op at all."""
        text = self.desc.lower()
        return (
            "no importer registered" in text
            or "plugin not found" in text
            or "fallbackpluginimporter" in self.func.lower()
        )


def explain_parser_errors(
    errors: Sequence[ParserErrorInfo], version: str, nodes: Sequence[tuple[str, str]] | None = None
) -> LlmcError:
    """One line for a failed parse: the first error's node, TensorRT's reason, and the fix.

    ``nodes`` is the graph's ``[(name, op_type), ...]`` in order, used when the parser gives
    only a node index.
    """
    if not errors:
        return LlmcError(
            f"TensorRT {version} could not parse the ONNX model and reported no error; {SUPPORT_MATRIX_HINT}"
        )
    error = errors[0]
    name, op = error.node_name, error.op_type
    if nodes and 0 <= error.node_index < len(nodes):
        name = name or nodes[error.node_index][0]
        op = op or nodes[error.node_index][1]
    desc = _clean_desc(error.desc)
    if error.no_importer and op:
        hint = (
            f"TensorRT {version} has no importer for {op}; "
            "disable the fusion that produced it or use --target ort"
        )
    else:
        hint = SUPPORT_MATRIX_HINT
    if name or op:
        where = f"node '{name}' ({op})" if name and op else f"node '{name or op}'"
    elif error.node_index >= 0:
        where = f"node #{error.node_index}"
    else:
        where = "the model"
    more = (
        f" (+{len(errors) - 1} more parser error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    )
    return LlmcError(f"TensorRT {version} cannot import {where}: {desc}; {hint}{more}")


def parse_onnx(
    trt: Any,
    network: Any,
    onnx_path: Path,
    model_nodes: Sequence[tuple[str, str]] | None = None,
    logger: Any = None,
) -> Any:
    """Parse ``onnx_path`` into ``network``; returns the parser (keep it alive with the network).

    ``parse_from_file`` is used so external data files next to the model resolve.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise LlmcError(f"{onnx_path} does not exist; build the TensorRT-ready ONNX first")
    parser = trt.OnnxParser(network, logger if logger is not None else trt.Logger(trt.Logger.WARNING))
    if not parser.parse_from_file(str(onnx_path)):
        errors = [ParserErrorInfo.from_trt(parser.get_error(i)) for i in range(parser.num_errors)]
        raise explain_parser_errors(errors, str(trt.__version__), model_nodes)
    return parser


# --- building -----------------------------------------------------------------------------


def _make_logger(trt: Any, log: Callable[[str], None] | None) -> Any:
    """A TensorRT logger that keeps error messages (for the failure line) and forwards warnings."""
    severity = trt.ILogger.Severity
    errors = (severity.INTERNAL_ERROR, severity.ERROR)

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level: Any, msg: str) -> None:
            if level in errors:
                self.errors.append(str(msg))
            if level in errors or level == severity.WARNING:
                (log or _LOG.warning)(f"TensorRT: {msg}")

    return _Logger()


def build_engine(
    onnx_path: Path,
    config: EngineConfig,
    *,
    model_nodes: Sequence[tuple[str, str]] | None = None,
    log: Callable[[str], None] | None = None,
) -> bytes:
    """Build a serialized engine from a TensorRT-ready ONNX file; updates the timing cache file."""
    trt = import_tensorrt()
    major = trt_major(trt)
    builder_flags(trt, major, config)  # reject impossible configs before any TensorRT work
    logger = _make_logger(trt, log)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, major, config.strongly_typed))
    parser = parse_onnx(trt, network, Path(onnx_path), model_nodes, logger)
    builder_config = configure_builder(trt, builder, network, config)
    plan = builder.build_serialized_network(network, builder_config)
    del parser
    if plan is None:
        reason = first_line(logger.errors[-1]) if logger.errors else "no error message"
        raise LlmcError(
            f"TensorRT could not build the engine: {reason}; rerun with a larger --workspace or see the log"
        )
    if config.timing_cache is not None:
        cache = builder_config.get_timing_cache()
        if cache is not None:
            atomic_write(config.timing_cache, bytes(memoryview(cache.serialize())))
    return bytes(memoryview(plan))


# --- caches -------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$LLMC_CACHE_DIR/trt``, else ``~/.cache/llmc/trt``."""
    root = os.environ.get("LLMC_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "llmc") / "trt"


def default_timing_cache_path() -> Path:
    return default_cache_dir() / "timing.cache"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def engine_cache_key(
    model_sha256: str,
    trt_version: str,
    compute_capability: str,
    profiles: dict[str, Any],
    flags: dict[str, Any],
) -> str:
    """SHA-256 over everything that decides the engine: model, TensorRT, GPU, shapes, flags."""
    shapes = {
        name: shape.to_dict() if isinstance(shape, ProfileShape) else shape
        for name, shape in profiles.items()
    }
    payload = {
        "model_sha256": model_sha256,
        "tensorrt_version": trt_version,
        "compute_capability": compute_capability,
        "profiles": shapes,
        "flags": flags,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class EngineCache:
    """Built plans by cache key, as ``<directory>/<key>.plan`` (atomic writes).

    With ``signing_key``, each plan gets a ``<key>.plan.hmac`` beside it and :meth:`get` treats a
    plan whose MAC does not match as a miss, so a tampered cache entry is rebuilt, never reused.
    """

    def __init__(self, directory: Path | None = None, *, signing_key: bytes | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.signing_key = signing_key

    def path(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]+", key):
            raise ValueError(f"engine cache keys are lowercase hex, got {key!r}")
        return self.directory / f"{key}.plan"

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        if not path.is_file():
            return None
        data = path.read_bytes()
        if self.signing_key is not None:
            mac = path.with_name(path.name + ".hmac")
            expected = sign_plan(data, self.signing_key)
            if not mac.is_file() or not hmac.compare_digest(mac.read_text().strip(), expected):
                return None
        return data

    def put(self, key: str, data: bytes) -> Path:
        path = self.path(key)
        if self.signing_key is not None:
            atomic_write(path.with_name(path.name + ".hmac"), sign_plan(data, self.signing_key).encode())
        atomic_write(path, data)
        return path


# --- the device ---------------------------------------------------------------------------


def device_info(device: int = 0) -> dict[str, str | None]:
    """``{"gpu", "compute_capability", "cuda"}`` for CUDA device ``device``, via torch."""
    try:
        import torch
    except ImportError:
        raise LlmcError(
            "no CUDA GPU visible: llmc queries the GPU through torch, which is not installed; "
            "install a CUDA build of torch, or add --no-engine"
        ) from None
    if not torch.cuda.is_available():
        raise LlmcError(
            "no CUDA GPU visible (torch.cuda.is_available() is False); build TensorRT engines on an "
            "NVIDIA GPU host with a CUDA build of torch, or add --no-engine"
        )
    major, minor = torch.cuda.get_device_capability(device)
    return {
        "gpu": torch.cuda.get_device_name(device),
        "compute_capability": f"{major}.{minor}",
        "cuda": torch.version.cuda,
    }


_ASSERTION = re.compile(r'^(?:Assertion failed:\s*)?[\w.\->()\[\]!]+\s*&&\s*"(.*)"\s*$')


def _clean_desc(text: str) -> str:
    """The parser's description without its C++ assertion wrapper (``creator && "..."``)."""
    line = first_line(text)
    match = _ASSERTION.match(line)
    return match.group(1) if match else line
