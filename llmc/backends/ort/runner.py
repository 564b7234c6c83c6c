"""ONNX Runtime runner: feeds in, named numpy outputs back, with input checking."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmc.errors import LlmcError


class OrtRunner:
    """Runs an ``InferenceSession``. ``run(feeds) -> {output name: array}``."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs = {i.name: i for i in session.get_inputs()}
        # Initializers that are also graph inputs: defaults a caller may override.
        self.overridable = {i.name for i in session.get_overridable_initializers()}
        self.output_names = [o.name for o in session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self.inputs if name not in feeds]
        if missing:
            raise LlmcError(
                f"missing input(s) {', '.join(missing)}; the model takes {', '.join(self.inputs)}"
            )
        extra = [name for name in feeds if name not in self.inputs and name not in self.overridable]
        if extra:
            raise LlmcError(
                f"unknown input(s) {', '.join(extra)}; the model takes {', '.join(self.inputs)}"
            )
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs, strict=True))


def run_model(model: Any, feeds: dict[str, np.ndarray], config: Any = None) -> dict[str, np.ndarray]:
    """Run an in-memory ``onnx_ir.Model`` once (default: the reference, ORT_DISABLE_ALL)."""
    from llmc.backends.ort.loader import REFERENCE_CONFIG, create_session
    from llmc.compiler.model_io import ort_model_source

    with ort_model_source(model) as source:
        session = create_session(source, config or REFERENCE_CONFIG, model)
    return OrtRunner(session).run(feeds)
