"""The pass registry: every pass llmc can run, by name, with what it does and for which targets.

Passes register a factory so that a pipeline can create fresh pass objects with the build's
options (``PassOptions``). ``llmc passes`` prints this registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir

from llmc.errors import LlmcError

TARGETS = ("ort", "trt")


@dataclasses.dataclass(frozen=True)
class PassOptions:
    """Options a pass factory may read. Every field has a safe default."""

    # Constant folding never creates a tensor over this many elements unless it replaces
    # at least as many (so folding never duplicates weights).
    fold_size_limit: int = 1 << 16
    # Inputs over this many elements are folded only by ops that consume them alone.
    fold_input_size_limit: int = 1 << 20
    # The build's target and device: target-specific passes (fusion) read them.
    target: str = "ort"
    device: str = "cpu"
    # Fusion families turned on/off against the target's defaults: ((name, on), ...).
    fusions: tuple[tuple[str, bool], ...] = ()
    # Memory planning: concrete input shape sets (each ((name, dims), ...)) and arena alignment.
    memory_shapes: tuple[tuple[tuple[str, tuple[int, ...]], ...], ...] = ()
    memory_alignment: int = 64


@dataclasses.dataclass(frozen=True)
class PassInfo:
    name: str
    description: str
    targets: tuple[str, ...]
    factory: Callable[[PassOptions], ir.passes.PassBase]


class LlmcPass(ir.passes.InPlacePass):
    """Base for llmc passes: ``stats`` holds the rewrites per rule of the last ``call``."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, int] = {}


_REGISTRY: dict[str, PassInfo] = {}


def register(
    name: str, description: str, targets: tuple[str, ...] = TARGETS
) -> Callable[[Callable[[PassOptions], ir.passes.PassBase]], Callable[[PassOptions], ir.passes.PassBase]]:
    """Decorator: register a pass factory (a class taking PassOptions, or a function)."""

    def decorator(factory: Callable[[PassOptions], ir.passes.PassBase]):
        if name in _REGISTRY:
            raise ValueError(f"pass {name!r} registered twice")
        _REGISTRY[name] = PassInfo(name, description, targets, factory)
        return factory

    return decorator


def _ensure_loaded() -> None:
    import llmc.passes  # noqa: F401  (registers the built-in passes)


def all_passes() -> list[PassInfo]:
    _ensure_loaded()
    return list(_REGISTRY.values())


def get_pass(name: str) -> PassInfo:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LlmcError(f"unknown pass '{name}'; valid passes: {', '.join(sorted(_REGISTRY))}") from None
