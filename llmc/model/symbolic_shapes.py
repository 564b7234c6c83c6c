"""Symbolic shapes for fusion checks, from ONNX Runtime's symbolic shape inference.

Fusion checks compare dimensions (the heads of Q, K and V must agree, the sequence of the mask
must be the key's). ONNX's own inference gives up on shapes computed at run time, which the
legacy exporter writes everywhere (``Reshape(x, Concat(Gather(Shape(x), 0), ..., -1, 32))``),
and invents a fresh unknown dim for every broadcast, so every check fails. ONNX Runtime's
``SymbolicShapeInference`` (sympy-based, what its transformers optimizer relies on) propagates
``batch`` / ``sequence`` through that arithmetic. It is used here rather than reimplemented.

Weights are not copied: initializers over ``INLINE_LIMIT`` elements are handed to the inference
as typed graph inputs (their shapes are all it needs); small ones (shape constants) keep data.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir

INLINE_LIMIT = 1024

logger = logging.getLogger(__name__)


def _shape_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto with large initializers turned into typed inputs (no weight copies)."""
    graph = model.graph
    large = [
        v
        for v in graph.initializers.values()
        if v.const_value is not None and v.const_value.size > INLINE_LIMIT
    ]
    saved = {v.name: v.const_value for v in large}
    serde_logger = logging.getLogger("onnx_ir.serde")  # warns per initializer left without data
    level = serde_logger.level
    try:
        serde_logger.setLevel(logging.ERROR)
        for value in large:
            value.const_value = None
        proto = ir.serde.serialize_model(model)
    finally:
        serde_logger.setLevel(level)
        for value in large:
            value.const_value = saved[value.name]
    known = {i.name for i in proto.graph.initializer}
    for value in large:
        if value.name in known:
            continue
        proto.graph.input.append(
            onnx.helper.make_tensor_value_info(value.name, int(value.dtype), list(value.shape.numpy()))
        )
    return proto


def refine_shapes(model: ir.Model) -> int:
    """Set symbolic shapes on the model's values; return how many values gained information."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return 0
    proto = _shape_proto(model)
    try:
        inferred = _infer(SymbolicShapeInference, proto)
    except Exception as error:  # noqa: BLE001 - best effort: fusion checks then see ONNX's shapes
        logger.info("symbolic shape inference failed (%s); using ONNX shape inference", error)
        return 0
    if inferred is None:
        return 0
    shapes: dict[str, ir.Shape] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        ]
        shapes[info.name] = ir.Shape(dims)
    gained = 0
    for node in model.graph:
        for value in node.outputs:
            new = shapes.get(value.name or "")
            if new is None or not _more_specific(new, value.shape):
                continue
            value.shape = new
            gained += 1
    return gained


def _infer(cls, proto: onnx.ModelProto) -> onnx.ModelProto:
    """``SymbolicShapeInference.infer_shapes`` without its failure path.

    The public entry point raises when some shape stays unknown (common: contrib ops, dynamic
    Reshape) after writing ``sym_shape_infer_temp.onnx`` into the current directory; the
    partial result is what fusion needs, so its loop is run here directly.
    """
    inference = cls(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
    inference._preprocess(proto)
    while inference.run_:
        inference._infer_impl()
    inference._update_output_from_vi()
    return inference.out_mp_


def _more_specific(new: ir.Shape, old: ir.Shape | None) -> bool:
    if old is None:
        return True
    if old.rank() != new.rank():
        return False
    better = False
    for a, b in zip(new, old, strict=True):
        if isinstance(a, int) and not isinstance(b, int):
            better = True
        elif isinstance(a, int) and isinstance(b, int) and a != b:
            return False  # disagreement: keep ONNX's
        elif isinstance(a, ir.SymbolicDim) and isinstance(b, ir.SymbolicDim) and a != b:
            if b.value is None or str(b.value).startswith("unk__"):
                better = better or a.value is not None
    return better
