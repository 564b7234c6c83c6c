"""ONNX Runtime loader: session configuration, provider choice by device, and error mapping.

The loader/runner split follows Polygraphy's ``backend/onnxrt``: a loader builds an
``InferenceSession`` from a model and a :class:`SessionConfig`; the runner only runs it.
Errors from ONNX Runtime that are the user's (opset too new, op without a kernel, a custom
domain it does not know) become one :class:`LlmcError` line naming the node.

GPU devices. ``cuda`` runs on the CUDA execution provider, ``tensorrt`` on the TensorRT one
(with CUDA, then CPU, for the nodes TensorRT does not take). Their provider options are built
from the config by :meth:`SessionConfig.provider_options`, parallel to
:meth:`SessionConfig.providers`:

* CUDA: ``device_id``, ``cudnn_conv_algo_search`` (HEURISTIC: transformers have few
  convolutions, and EXHAUSTIVE, ONNX Runtime's default, makes the first run time every
  candidate algorithm), ``arena_extend_strategy`` kSameAsRequested (the arena grows by what is asked, not
  the next power of two, so the device-memory peak stays near the model's) and
  ``enable_cuda_graph`` off (a captured graph needs inputs and outputs bound at fixed device
  addresses for every run, which the runner does not do).
* TensorRT: engine and timing caches on (building an engine takes minutes; the caches make the
  next session start in seconds), under ``trt_cache_dir`` or ``$LLMC_CACHE_DIR/ort-trt`` or
  ``~/.cache/llmc/ort-trt``, resolved when the options are built so that an artifact carries no
  machine's path; workspace limit and builder optimization level; and explicit optimization
  profiles (``trt_profile_{min,opt,max}_shapes``) from ``profiles`` so that one engine serves
  the whole shape range instead of being rebuilt for each new shape. ``trt_fp16_enable`` and
  ``trt_int8_enable`` are never set: llmc puts precision into the graph (fp16 casts, Q/DQ
  nodes), and TensorRT's precision flags would let it lower any layer on its own, outside the
  accuracy budget llmc verified. ONNX Runtime's documentation asks for the engine cache to be
  emptied after upgrading ONNX Runtime or TensorRT, or changing the GPU.

A missing GPU provider is one error line by default. With ``fallback=True`` the session falls
back down the chain (tensorrt -> cuda -> cpu) with one :class:`DeviceFallbackWarning` naming what
is missing. ONNX Runtime itself falls back silently when a listed provider's libraries fail to
load at session creation (TensorRT's libnvinfer, cuDNN); :func:`create_session` checks
``session.get_providers()`` afterwards and treats that the same way.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import re
import warnings
from pathlib import Path
from typing import Any

import onnx_ir as ir

from llmc.errors import LlmcError, first_line
from llmc.model.files import cache_root
from llmc.model.io import is_session_copy
from llmc.runtime.ort.errors import checked_session_type, current_context, located
from llmc.runtime.ort.profile import Profiling

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
DEVICE_PROVIDERS = {
    "cpu": (CPU,),
    "cuda": (CUDA, CPU),
    "tensorrt": (TRT, CUDA, CPU),
}
# Where a device falls back to when its provider is missing (fallback=True).
FALLBACK_DEVICE = {"tensorrt": "cuda", "cuda": "cpu"}
KERNEL_DOMAIN = "ai.llmc"  # llmc's own custom ops (llmc.kernels), registered on every session
GRAPH_LEVELS = ("disable", "basic", "extended", "layout", "all")
CUDNN_CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
ARENA_EXTEND_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")
TRT_OPTIMIZATION_LEVELS = range(0, 6)  # TensorRT's builder optimization levels 0..5 (default 3)
# ONNX Runtime fusions that measured slower than the ops they replace, per device; artifacts
# built for that device record them as disabled (benchmarks/RESULTS.md has the A/B figures).
SLOWER_ORT_FUSIONS = {"cpu": ["SkipLayerNormFusion"]}
GPU_INSTALL_HINT = (
    "install onnxruntime-gpu (pip install 'llmc[gpu]') after uninstalling the CPU onnxruntime "
    "(pip uninstall onnxruntime: both packages provide the `onnxruntime` module), or use --device cpu"
)


class DeviceFallbackWarning(UserWarning):
    """A session runs on another device than the one asked for (``fallback=True``)."""


@dataclasses.dataclass
class SessionConfig:
    """Session options recorded in the artifact and re-applied by ``llmc.load``.

    Fields added after the first release have defaults, so manifests written before them load
    unchanged (:meth:`from_dict` fills them in).
    """

    device: str = "cpu"
    graph_optimization_level: str = "all"
    intra_op_num_threads: int = 0  # 0: ONNX Runtime's default (one per physical core)
    inter_op_num_threads: int = 0
    # False: the intra-op threads never spin; they sleep as soon as they run out of work, between
    # two operators of a run too (ONNX Runtime's session.intra_op.allow_spinning).
    allow_spinning: bool = True
    # False: they spin while a run lasts and stop when it returns (session.force_spinning_stop): a
    # server's event loop, tokenizer and clients get the cores between its runs, a loop of runs
    # back to back keeps them spinning.
    spin_after_run: bool = True
    enable_mem_pattern: bool = True
    # Off: buffers go back after each run instead of the arena keeping its high-water mark
    # (calibration runs large batches once; deployment keeps the arena).
    enable_cpu_mem_arena: bool = True
    execution_mode: str = "sequential"
    # "default": ONNX Runtime's depth-first order (ties broken by node index); "priority_based":
    # the file's node order (Kahn's algorithm by node index), i.e. llmc's memory-aware order.
    execution_order: str = "default"
    # ONNX Runtime graph transformers the session skips (e.g. "SkipLayerNormFusion"), for
    # rewrites measured slower on the target. ONNX Runtime ignores names it does not know, so
    # only names chosen by llmc's own measurements belong here, not user input.
    disabled_optimizers: list[str] = dataclasses.field(default_factory=list)
    # -- GPU devices (ignored on cpu) ---------------------------------------------------------
    device_id: int = 0
    cudnn_conv_algo_search: str = "HEURISTIC"
    arena_extend_strategy: str = "kSameAsRequested"
    enable_cuda_graph: bool = False
    # TensorRT: None resolves to $LLMC_CACHE_DIR/ort-trt or ~/.cache/llmc/ort-trt on the
    # machine that creates the session.
    trt_cache_dir: str | None = None
    trt_max_workspace_size: int = 0  # bytes; 0: ONNX Runtime's default (the device's memory)
    trt_builder_optimization_level: int = 3
    # Explicit optimization profile: {input name: [min shape, opt shape, max shape]}.
    profiles: dict[str, list[list[int]]] = dataclasses.field(default_factory=dict)
    # Missing GPU provider: False raises; True falls back (tensorrt -> cuda -> cpu) with a warning.
    fallback: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICE_PROVIDERS:
            raise LlmcError(
                f"unknown device '{self.device}'; valid devices: {', '.join(DEVICE_PROVIDERS)}"
            )
        if self.graph_optimization_level not in GRAPH_LEVELS:
            raise LlmcError(
                f"unknown graph optimization level '{self.graph_optimization_level}'; "
                f"valid: {', '.join(GRAPH_LEVELS)}"
            )
        if self.execution_mode not in ("sequential", "parallel"):
            raise LlmcError("execution mode must be 'sequential' or 'parallel'")
        if self.execution_order not in ("default", "priority_based"):
            raise LlmcError("execution order must be 'default' or 'priority_based'")
        if not isinstance(self.device_id, int) or self.device_id < 0:
            raise LlmcError(f"device id must be a GPU index (0, 1, ...), not {self.device_id!r}")
        _check_choice("cudnn_conv_algo_search", self.cudnn_conv_algo_search, CUDNN_CONV_ALGO_SEARCH)
        _check_choice("arena_extend_strategy", self.arena_extend_strategy, ARENA_EXTEND_STRATEGIES)
        if self.trt_builder_optimization_level not in TRT_OPTIMIZATION_LEVELS:
            raise LlmcError(
                f"TensorRT builder optimization level must be 0..5, not {self.trt_builder_optimization_level}"
            )
        if self.trt_max_workspace_size < 0:
            raise LlmcError("TensorRT max workspace size must be >= 0 bytes (0: the device's memory)")
        self.profiles = {name: _check_profile(name, shapes) for name, shapes in self.profiles.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def resolved_device(self) -> tuple[str, str | None]:
        """The device sessions will run on, and why it differs from ``device`` (or None)."""
        return resolve_device(self.device, self.fallback)

    def provider_entries(self) -> list[tuple[str, dict[str, Any]]]:
        """(provider, options) pairs for this device, in priority order; warns on a fallback."""
        import onnxruntime as ort

        device, reason = self.resolved_device()
        if reason is not None:
            warnings.warn(reason, DeviceFallbackWarning, stacklevel=3)
        available = ort.get_available_providers()
        return [(p, self.options_for(p)) for p in DEVICE_PROVIDERS[device] if p in available]

    def providers(self) -> list[str]:
        """The provider list for this device; one clear error if it is not installed."""
        return [name for name, _ in self.provider_entries()]

    def provider_options(self) -> list[dict[str, Any]]:
        """Options for each provider of :meth:`providers`, in the same order."""
        return [options for _, options in self.provider_entries()]

    def options_for(self, provider: str) -> dict[str, Any]:
        """ONNX Runtime's options for one provider (names as its EP documentation spells them)."""
        if provider == CUDA:
            return {
                "device_id": self.device_id,
                "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
                "arena_extend_strategy": self.arena_extend_strategy,
                "enable_cuda_graph": self.enable_cuda_graph,
            }
        if provider == TRT:
            cache = str(trt_cache_dir(self.trt_cache_dir))
            options: dict[str, Any] = {
                "device_id": self.device_id,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": cache,
                "trt_max_workspace_size": self.trt_max_workspace_size,
                "trt_builder_optimization_level": self.trt_builder_optimization_level,
            }
            if self.profiles:
                for i, key in enumerate(("min", "opt", "max")):
                    options[f"trt_profile_{key}_shapes"] = profile_string(self.profiles, i)
            return options
        return {}

    def session_options(self, profiling: Profiling | None = None) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "layout": getattr(
                ort.GraphOptimizationLevel,
                "ORT_ENABLE_LAYOUT",
                ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            ),
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization_level]
        opts.intra_op_num_threads = self.intra_op_num_threads
        opts.inter_op_num_threads = self.inter_op_num_threads
        opts.enable_mem_pattern = self.enable_mem_pattern
        opts.execution_mode = (
            ort.ExecutionMode.ORT_SEQUENTIAL
            if self.execution_mode == "sequential"
            else ort.ExecutionMode.ORT_PARALLEL
        )
        opts.enable_cpu_mem_arena = self.enable_cpu_mem_arena
        opts.execution_order = (
            ort.ExecutionOrder.PRIORITY_BASED
            if self.execution_order == "priority_based"
            else ort.ExecutionOrder.DEFAULT
        )
        if not self.allow_spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif not self.spin_after_run:
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        opts.log_severity_level = 4  # failures surface as exceptions, mapped to one-line errors
        from llmc.kernels import register

        register(opts)  # llmc's own CPU kernels (ai.llmc ops), when the install built them
        if profiling is not None:
            profiling.apply(opts)
        return opts


def create_session(
    source: bytes | str | os.PathLike, config: SessionConfig, model: ir.Model | None = None,
    profiling: Profiling | None = None,
) -> Any:
    """Create an ``InferenceSession``; ``model`` (if given) names nodes in error messages;
    ``profiling`` (:mod:`.profile`) turns on ONNX Runtime's profiler for this session only.

    Raises (or, with ``config.fallback``, warns) when ONNX Runtime did not enable the first
    provider of the device: it drops a provider whose libraries fail to load without an error.
    The session's runs turn ONNX Runtime failures into one line (:mod:`.errors`).
    """
    entries = config.provider_entries()
    providers = [name for name, _ in entries]
    provider_options = [options for _, options in entries]
    _make_cache_dirs(provider_options)
    if isinstance(source, os.PathLike):
        source = str(source)
    # The file is named in errors, unless it is a temporary copy of an in-memory model.
    origin = source if isinstance(source, str) and not is_session_copy(source) else None
    kwargs = {"disabled_optimizers": list(config.disabled_optimizers)} if config.disabled_optimizers else {}
    try:
        session = checked_session_type()(
            source,
            sess_options=config.session_options(profiling),
            providers=providers,
            provider_options=provider_options,
            **kwargs,
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise located(explain_ort_error(exc, model), origin) from None
    session.llmc_origin = origin  # run failures name the file
    check_active_provider(session, providers[0], config.fallback)
    return session


def resolve_device(device: str, allow_fallback: bool = False) -> tuple[str, str | None]:
    """The device whose provider this onnxruntime has: ``(device, None)`` if it is ``device``.

    Without ``allow_fallback`` a missing provider is one :class:`LlmcError` line saying what to
    install; with it, the next device down (tensorrt -> cuda -> cpu) and the reason.
    """
    import onnxruntime as ort

    if device not in DEVICE_PROVIDERS:
        raise LlmcError(f"unknown device '{device}'; valid devices: {', '.join(DEVICE_PROVIDERS)}")
    available = list(ort.get_available_providers())
    current = device
    while DEVICE_PROVIDERS[current][0] not in available:
        if not allow_fallback:
            raise LlmcError(missing_provider_message(current, available))
        current = FALLBACK_DEVICE[current]
    if current == device:
        return device, None
    wanted = DEVICE_PROVIDERS[device][0]
    return current, (
        f"device '{device}' needs {wanted}, which onnxruntime {ort.__version__} here does not have "
        f"(available: {', '.join(available)}); running on {current} instead"
    )


def missing_provider_message(device: str, available: list[str]) -> str:
    """One line: which provider ``device`` needs, that it is missing, and how to get it."""
    import onnxruntime as ort

    wanted = DEVICE_PROVIDERS[device][0]
    missing = (
        f"device '{device}' needs {wanted}, which onnxruntime {ort.__version__} here does not have "
        f"(available: {', '.join(available)})"
    )
    if wanted == TRT and CUDA in available:
        return f"{missing}; install an onnxruntime-gpu build with TensorRT and TensorRT itself (pip install 'llmc[trt]'), or use --device cuda"
    return f"{missing}; {GPU_INSTALL_HINT}"


_PROVIDER_DEVICE = {TRT: "tensorrt", CUDA: "cuda", CPU: "cpu"}
_PROVIDER_LIBRARIES = {
    TRT: "TensorRT (libnvinfer), CUDA and cuDNN; pip install 'llmc[trt]' and add its tensorrt_libs directory to LD_LIBRARY_PATH",
    CUDA: "the CUDA 12 runtime, cuBLAS and cuDNN 9; install them or add their directories to LD_LIBRARY_PATH",
}


def check_active_provider(session: Any, wanted: str, fallback: bool = False) -> str | None:
    """Check that ONNX Runtime enabled ``wanted`` for ``session``; None if it did.

    When a listed provider's libraries fail to load, ONNX Runtime drops it from the session and
    carries on with the next one. That is an error naming the provider, or with ``fallback``
    one :class:`DeviceFallbackWarning`, whose text is returned.
    """
    active = list(session.get_providers())
    if wanted in active:
        return None
    now = _PROVIDER_DEVICE.get(active[0], active[0]) if active else "nothing"
    problem = (
        f"{wanted} is installed but onnxruntime did not enable it for this session "
        f"(active: {', '.join(active) or 'none'}): its libraries failed to load"
    )
    if not fallback:
        fix = _PROVIDER_LIBRARIES.get(wanted, "check its installation")
        other = FALLBACK_DEVICE.get(_PROVIDER_DEVICE.get(wanted, ""), "cpu")
        raise LlmcError(f"{problem}; it needs {fix}, or use --device {other}")
    reason = f"{problem}; running on {now} instead"
    warnings.warn(reason, DeviceFallbackWarning, stacklevel=3)
    return reason


def trt_cache_dir(configured: str | None = None) -> Path:
    """TensorRT engine/timing cache directory: ``configured``, else $LLMC_CACHE_DIR/ort-trt, else
    ~/.cache/llmc/ort-trt."""
    if configured:
        return Path(configured).expanduser()
    return cache_root() / "ort-trt"


def profile_string(profiles: dict[str, list[list[int]]], index: int) -> str:
    """ONNX Runtime's profile format, ``input_ids:1x128,attention_mask:1x128``, for one of
    min (0), opt (1) or max (2)."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[index])}" for name, shapes in profiles.items())


def _check_profile(name: str, shapes: Any) -> list[list[int]]:
    """Validate one ``[min, opt, max]`` profile entry; returns it as lists of ints (JSON form)."""
    if not name or any(c in name for c in ",:"):
        raise LlmcError(
            f"input '{name}' cannot be named in a TensorRT profile (ONNX Runtime separates names "
            "with ':' and ','); rename the input"
        )
    example = "e.g. [[1, 128], [1, 128], [8, 128]]"
    try:
        dims = [[operator.index(d) for d in shape] for shape in shapes]
    except TypeError:
        raise LlmcError(f"profile for '{name}': give [min, opt, max] shapes as lists of integers, {example}") from None
    if len(dims) != 3 or len({len(s) for s in dims}) != 1 or not dims[0]:
        raise LlmcError(f"profile for '{name}' needs three shapes [min, opt, max] of one rank >= 1, {example}; got {dims}")
    low, opt, high = dims
    if any(d < 0 for d in low) or not all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True)):
        raise LlmcError(
            f"profile for '{name}' needs 0 <= min <= opt <= max in every dimension; got "
            f"{'x'.join(map(str, low))} / {'x'.join(map(str, opt))} / {'x'.join(map(str, high))}"
        )
    return dims


def _check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise LlmcError(f"unknown {what} '{value}'; valid: {', '.join(valid)}")


def _make_cache_dirs(provider_options: list[dict[str, Any]]) -> None:
    """Create TensorRT's cache directories (mode 0700, parents included) before ONNX Runtime
    writes there, and refuse one another user owns or others can write: ONNX Runtime deserializes
    whatever engine it finds there, so the directory is trusted like the build cache's
    (:func:`llmc.model.files.check_private_dir`)."""
    from llmc.model.files import make_private_dir

    for options in provider_options:
        for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
            if key in options:
                make_private_dir(Path(options[key]))


# The configuration used to compute reference outputs: no ORT graph rewrites at all.
REFERENCE_CONFIG = SessionConfig(graph_optimization_level="disable", intra_op_num_threads=1)


class SessionFromOnnx:
    """Loader: a callable that returns a new session for a model path or serialized bytes."""

    def __init__(self, source: bytes | str | Path, config: SessionConfig | None = None) -> None:
        self.source = source
        self.config = config or SessionConfig()

    def __call__(self) -> Any:
        return create_session(self.source, self.config)


_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")
_NOT_REGISTERED = re.compile(r"(?:Fatal error: )?([\w.]*):(\w+)\((-?\d+)\) is not a registered function/op")
_NO_OP = re.compile(r"No Op registered for (\w+) with domain_version of (\d+)")
_OPSET = re.compile(r"Opset (\d+) is under development")
_OPSET_MAX = re.compile(r"domain ([\w.]+) is till opset (\d+)")
_IR_VERSION = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")


def explain_ort_error(exc: BaseException, model: ir.Model | None) -> LlmcError:
    """Turn an ONNX Runtime load failure into one line that names the node and the fix."""
    import onnxruntime as ort

    text = str(exc)
    version = ort.__version__
    if m := _IR_VERSION.search(text):
        return LlmcError(
            f"the model's IR version {m.group(1)} is newer than onnxruntime {version} supports "
            f"(max {m.group(2)}); re-export with an older onnx, or upgrade onnxruntime"
        )
    if m := _NO_KERNEL.search(text):
        op, opset, node = m.groups()
        return LlmcError(
            f"node '{node}' ({op}, opset {opset}) has no kernel in onnxruntime {version} "
            f"for these input types; change its input types or re-export with another opset"
        )
    if m := _NOT_REGISTERED.search(text):
        domain, op, _ = m.groups()
        return _unknown_op_error(model, domain, op, version)
    if m := _NO_OP.search(text):
        op = m.group(1)
        domain = _domain_of(model, op)
        return _unknown_op_error(model, domain, op, version)
    if m := _OPSET.search(text):
        limit = _OPSET_MAX.search(text)
        supported = f" (it supports {limit.group(1)} up to opset {limit.group(2)})" if limit else ""
        return LlmcError(
            f"the model uses opset {m.group(1)}, which onnxruntime {version} cannot run{supported}; "
            "re-export with a lower opset (torch.onnx.export(..., opset_version=20)) or upgrade onnxruntime"
        )
    context = current_context()
    hint = f"; {context.hint}" if context else ""
    return LlmcError(f"onnxruntime {version} cannot load the model: {first_line(text)}{hint}")


def _unknown_op_error(model: ir.Model | None, domain: str, op: str, version: str) -> LlmcError:
    node = _find_node(model, domain, op)
    where = f"node '{node.name}' ({domain or 'ai.onnx'}::{op})" if node else f"op {domain}::{op}"
    if domain == KERNEL_DOMAIN:
        from llmc.kernels import unavailable

        why = unavailable() or "ONNX Runtime did not take llmc's kernel library"
        return LlmcError(f"{where} is llmc's own CPU kernel and cannot run here: {why}; "
                         "or rebuild the artifact with --int4-kernel ort")
    return LlmcError(
        f"{where} has no implementation in onnxruntime {version}: domain '{domain or 'ai.onnx'}' "
        "is not one ONNX Runtime knows; register its custom-op library or replace the node"
    )


def _find_node(model: ir.Model | None, domain: str, op: str) -> ir.Node | None:
    if model is None:
        return None
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == op and (node.domain == domain or not domain):
            return node
    return None


def _domain_of(model: ir.Model | None, op: str) -> str:
    node = _find_node(model, "", op)
    return node.domain if node else ""
