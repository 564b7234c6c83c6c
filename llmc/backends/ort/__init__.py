"""ONNX Runtime backend: a loader (:mod:`.loader`) and a runner (:mod:`.runner`)."""

from llmc.backends.ort.loader import (
    REFERENCE_CONFIG,
    DeviceFallbackWarning,
    SessionConfig,
    SessionFromOnnx,
    check_active_provider,
    create_session,
    resolve_device,
)
from llmc.backends.ort.runner import OrtRunner, run_model, session_device

__all__ = [
    "REFERENCE_CONFIG",
    "DeviceFallbackWarning",
    "OrtRunner",
    "SessionConfig",
    "SessionFromOnnx",
    "check_active_provider",
    "create_session",
    "resolve_device",
    "run_model",
    "session_device",
]
