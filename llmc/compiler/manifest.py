"""The artifact's ``manifest.json``, assembled in one place from what the build stages return."""

from __future__ import annotations

import platform
import sys


def versions() -> dict[str, str]:
    """The versions a build depends on, as recorded in every manifest (and in benchmark results)."""
    import numpy as np
    import onnx
    import onnx_ir as ir
    import onnxruntime
    import onnxscript

    from llmc.version import __version__

    return {
        "llmc": __version__,
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnx_ir": ir.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "platform": f"{sys.platform}-{platform.machine()}",
    }
