"""What ``llmc inspect`` reports about a model: I/O, opsets, op histogram, sizes, external data."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import onnx_ir as ir

from llmc.errors import LlmcError
from llmc.model import sparsity
from llmc.model.io import MODEL_FILE, load_model, weights_nbytes


def _dims(shape: ir.Shape | None) -> list[int | str] | None:
    if shape is None:
        return None
    return [d if isinstance(d, int) else (d.value or "?") for d in shape]


def _io(value: ir.Value) -> dict[str, Any]:
    return {
        "name": value.name,
        "dtype": str(value.dtype.name) if value.dtype is not None else None,
        "shape": _dims(value.shape),
    }


def _weights_bytes(model: ir.Model, path: Path) -> int:
    """Bytes of the initializers; one line naming one whose element type has no size (UNDEFINED)."""
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        try:
            _ = tensor.nbytes if tensor is not None else 0
        except TypeError:
            raise LlmcError(
                f"{path}: initializer '{name}' has element type {tensor.dtype.name}, which has no size; "
                "re-export the model"
            ) from None
    return weights_nbytes(model)


def summarize_model(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir() and (path / MODEL_FILE).is_file():
        path = path / MODEL_FILE
    model = load_model(path)
    graph = model.graph
    ops = collections.Counter(
        (f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
        for n in ir.traversal.RecursiveGraphIterator(graph)
    )
    external = sorted(
        {
            str(v.const_value.location)
            for v in graph.initializers.values()
            if isinstance(v.const_value, ir.ExternalTensor)
        }
    )
    inputs = [v for v in graph.inputs if v.name not in graph.initializers]
    return {
        "path": str(path),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name or '?'} {model.producer_version or ''}".strip(),
        "opsets": dict(sorted(model.opset_imports.items())),
        "inputs": [_io(v) for v in inputs],
        "outputs": [_io(v) for v in graph.outputs],
        "nodes": sum(ops.values()),
        "ops": dict(ops.most_common()),
        "initializers": len(graph.initializers),
        "weights_bytes": _weights_bytes(model, path),
        "file_bytes": path.stat().st_size,
        "external_data": external,
        "functions": len(model.functions),
        "sparsity": sparsity.report(model).to_dict(),
        "metadata": dict(model.metadata_props),
    }
