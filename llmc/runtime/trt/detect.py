"""Finding TensorRT and the GPU: is ``tensorrt`` installed, which version, which device.

``tensorrt`` and ``torch`` (used for device queries) are imported inside the functions, so this
module imports on machines without them; a missing one is one :class:`LlmcError` line saying
what to install.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

from llmc.errors import LlmcError

INSTALL_HINT = (
    "--target trt needs TensorRT: pip install 'llmc[trt]' (TensorRT 10 or 11 on an NVIDIA GPU host), "
    "or add --no-engine to write the TensorRT-ready ONNX here"
)


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
