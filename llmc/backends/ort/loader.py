"""ONNX Runtime loader: session configuration, provider choice by device, and error mapping.

The loader/runner split follows Polygraphy's ``backend/onnxrt``: a loader builds an
``InferenceSession`` from a model and a :class:`SessionConfig`; the runner only runs it.
Errors from ONNX Runtime that are the user's (opset too new, op without a kernel, a custom
domain it does not know) become one :class:`LlmcError` line naming the node.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import onnx_ir as ir

from llmc.errors import LlmcError

DEVICE_PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
GRAPH_LEVELS = ("disable", "basic", "extended", "layout", "all")
# ONNX Runtime fusions that measured slower than the ops they replace, per device; artifacts
# built for that device record them as disabled (benchmarks/RESULTS.md has the A/B figures).
SLOWER_ORT_FUSIONS = {"cpu": ["SkipLayerNormFusion"]}


@dataclasses.dataclass
class SessionConfig:
    """Session options recorded in the artifact and re-applied by ``llmc.load``."""

    device: str = "cpu"
    graph_optimization_level: str = "all"
    intra_op_num_threads: int = 0  # 0: ONNX Runtime's default (one per physical core)
    inter_op_num_threads: int = 0
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def providers(self) -> list[str]:
        """The provider list for this device; one clear error if it is not installed."""
        import onnxruntime as ort

        wanted = DEVICE_PROVIDERS[self.device]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            package = "onnxruntime-gpu (pip install 'llmc[gpu]')"
            raise LlmcError(
                f"device '{self.device}' needs {wanted[0]}, which this onnxruntime does not have "
                f"(available: {', '.join(available)}); install {package} or use --device cpu"
            )
        return [p for p in wanted if p in available]

    def session_options(self) -> Any:
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
        opts.log_severity_level = 4  # failures surface as exceptions, mapped to one-line errors
        return opts


# The configuration used to compute reference outputs: no ORT graph rewrites at all.
REFERENCE_CONFIG = SessionConfig(graph_optimization_level="disable", intra_op_num_threads=1)


def create_session(
    source: bytes | str | os.PathLike, config: SessionConfig, model: ir.Model | None = None
) -> Any:
    """Create an ``InferenceSession``; ``model`` (if given) names nodes in error messages."""
    import onnxruntime as ort

    providers = config.providers()
    if isinstance(source, os.PathLike):
        source = str(source)
    kwargs = {"disabled_optimizers": list(config.disabled_optimizers)} if config.disabled_optimizers else {}
    try:
        return ort.InferenceSession(
            source, sess_options=config.session_options(), providers=providers, **kwargs
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise explain_ort_error(exc, model) from None


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
    return LlmcError(f"onnxruntime {version} cannot load the model: {_first_line(text)}")


def _unknown_op_error(model: ir.Model | None, domain: str, op: str, version: str) -> LlmcError:
    node = _find_node(model, domain, op)
    where = f"node '{node.name}' ({domain or 'ai.onnx'}::{op})" if node else f"op {domain}::{op}"
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


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"
