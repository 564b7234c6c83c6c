"""The corpus's registry and shared pieces: ``CORPUS``, ``@entry``, ``write_entry``."""


from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
from onnx import TensorProto, numpy_helper

from tests.fuzz.strategies import MODEL_DIR, MODEL_NAME, Case
from tests.helpers import make_model

F = TensorProto.FLOAT
X = oh.make_tensor_value_info("x", F, [2, 3])
Y = oh.make_tensor_value_info("y", F, [2, 3])
W = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")

CORPUS: dict[str, Callable[[], Case | bytes]] = {}


def entry(fn: Callable[[], onnx.ModelProto | bytes | tuple[onnx.ModelProto, bytes]]):
    """Register ``fn`` (a model, raw bytes, or a model and its external data bytes) by its name."""

    def make() -> Case | bytes:
        made = fn()
        if isinstance(made, bytes):
            return made
        model, data = made if isinstance(made, tuple) else (made, None)
        return Case("corpus", (fn.__name__,), model, data)

    CORPUS[fn.__name__] = make
    return fn


def _one(node: onnx.NodeProto, inputs=(X,), outputs=(Y,), inits=(), **kw) -> onnx.ModelProto:
    return make_model([node], list(inputs), list(outputs), list(inits), **kw)



def write_entry(name: str, root: Path) -> Path:
    """Write corpus entry ``name`` as ``root/model/m.onnx`` (with its data files); return the path."""
    made = CORPUS[name]()
    if isinstance(made, Case):
        return made.write(root)
    path = root / MODEL_DIR / MODEL_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(made)
    return path
