"""llmc: an ONNX model-optimization compiler for millisecond transformer inference.

    import llmc
    artifact = llmc.build("model.onnx", target="ort", output="out/")
    runner = llmc.load("out/")
    outputs = runner.run({"input_ids": ids, "attention_mask": mask})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmc.errors import LlmcError
from llmc.version import __version__

__all__ = ["Artifact", "LlmcError", "Runner", "__version__", "build", "load", "register_precision"]

if TYPE_CHECKING:
    from llmc.compiler.build import build
    from llmc.compiler.registry import register_precision
    from llmc.generation.runner import Runner, load
    from llmc.runtime.artifact import Artifact

# The compiler pulls in onnx, onnx-ir and onnxruntime: import it on first use so that
# `llmc --help` and `import llmc.errors` stay fast.
_LAZY = {
    "Artifact": "llmc.runtime.artifact",
    "Runner": "llmc.generation.runner",
    "load": "llmc.generation.runner",
    "build": "llmc.compiler.build",
    "register_precision": "llmc.compiler.registry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llmc' has no attribute {name!r}")
