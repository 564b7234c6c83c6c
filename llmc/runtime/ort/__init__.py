"""ONNX Runtime: a loader that creates sessions (:mod:`.loader`), a runner (:mod:`.runner`),
one-line errors (:mod:`.errors`) and its profiler's trace (:mod:`.profile`).

ONNX Runtime comes from an extra (``llmc[cpu]`` or ``llmc[gpu]``: both wheels install the same
``onnxruntime`` package, so llmc depends on neither by default). Importing this package checks
that one is installed, so the first use of ONNX Runtime without it is one line saying which
to install rather than an ImportError from deep inside a build.
"""

import importlib.util

from llmc.errors import LlmcError

MISSING_ONNXRUNTIME = (
    "ONNX Runtime is not installed: pip install 'llmc[cpu]' (CPU), or 'llmc[gpu]' for NVIDIA GPUs "
    "(onnxruntime-gpu; not both)"
)


def require_onnxruntime() -> None:
    """Raise one :class:`LlmcError` line if neither onnxruntime nor onnxruntime-gpu is installed."""
    try:
        found = importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):  # ValueError: a blocked or half-imported module
        found = False
    if not found:
        raise LlmcError(MISSING_ONNXRUNTIME)


require_onnxruntime()

from llmc.runtime.ort.loader import (  # noqa: E402
    REFERENCE_CONFIG,
    DeviceFallbackWarning,
    SessionConfig,
    SessionFromOnnx,
    check_active_provider,
    create_session,
    resolve_device,
)
from llmc.runtime.ort.profile import Profiling, read_trace  # noqa: E402
from llmc.runtime.ort.runner import OrtRunner, run_model, session_device  # noqa: E402

__all__ = [
    "MISSING_ONNXRUNTIME",
    "REFERENCE_CONFIG",
    "DeviceFallbackWarning",
    "OrtRunner",
    "Profiling",
    "SessionConfig",
    "SessionFromOnnx",
    "check_active_provider",
    "create_session",
    "read_trace",
    "require_onnxruntime",
    "resolve_device",
    "run_model",
    "session_device",
]
