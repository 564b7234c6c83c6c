"""The pass registry: every pass llmc can run, by name, with what it does.

Passes register a factory so that a pipeline can create fresh pass objects with the build's
options (``PassOptions``). ``llmc passes`` prints this registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir

from llmc.errors import LlmcError
from llmc.passes.options import PassOptions


@dataclasses.dataclass(frozen=True)
class PassInfo:
    name: str
    description: str
    factory: Callable[[PassOptions], ir.passes.PassBase]


class LlmcPass(ir.passes.InPlacePass):
    """Base for llmc passes: ``stats`` holds the rewrites per rule of the last ``call``."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, int] = {}


_REGISTRY: dict[str, PassInfo] = {}


def register(
    name: str, description: str
) -> Callable[[Callable[[PassOptions], ir.passes.PassBase]], Callable[[PassOptions], ir.passes.PassBase]]:
    """Decorator: register a pass factory (a class taking PassOptions, or a function)."""

    def decorator(factory: Callable[[PassOptions], ir.passes.PassBase]):
        if name in _REGISTRY:
            raise ValueError(f"pass {name!r} registered twice")
        _REGISTRY[name] = PassInfo(name, description, factory)
        return factory

    return decorator


# Modules whose import registers the built-in passes.
BUILTIN_MODULES = (
    "llmc.passes.prune", "llmc.passes.shape", "llmc.passes.fold", "llmc.passes.noop", "llmc.passes.cse",
    "llmc.passes.fusion", "llmc.passes.logits", "llmc.passes.memory.reorder",
)


def _ensure_loaded() -> None:
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def all_passes() -> list[PassInfo]:
    _ensure_loaded()
    return list(_REGISTRY.values())


def get_pass(name: str) -> PassInfo:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LlmcError(f"unknown pass '{name}'; valid passes: {', '.join(sorted(_REGISTRY))}") from None
