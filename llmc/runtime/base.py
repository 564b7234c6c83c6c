"""What every backend's runner offers: named inputs and outputs, and ``run(feeds) -> outputs``.

:class:`Runner` is a structural protocol (like Polygraphy's ``BaseRunner`` interface, without
the base class): ``OrtRunner`` and ``TrtRunner`` satisfy it without inheriting from it, and
``isinstance(obj, Runner)`` checks the names are there.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    """Runs one loaded model: ``run(feeds) -> {output name: array}``, outputs on the host.
    ``backend`` names the engine ("onnxruntime", "tensorrt"), ``session`` is its native handle
    (an ``InferenceSession``, a TensorRT engine)."""

    backend: str
    session: Any

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
