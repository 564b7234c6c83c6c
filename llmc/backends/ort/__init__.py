"""ONNX Runtime backend: a loader (:mod:`.loader`) and a runner (:mod:`.runner`)."""

from llmc.backends.ort.loader import (
    REFERENCE_CONFIG,
    SessionConfig,
    SessionFromOnnx,
    create_session,
)
from llmc.backends.ort.runner import OrtRunner, run_model

__all__ = ["REFERENCE_CONFIG", "OrtRunner", "SessionConfig", "SessionFromOnnx", "create_session", "run_model"]
