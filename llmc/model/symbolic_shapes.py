"""ONNX Runtime's symbolic shape inference, driven from one place.

ONNX's own inference gives up on shapes computed at run time, which the legacy exporter writes
everywhere (``Reshape(x, Concat(Gather(Shape(x), 0), ..., -1, 32))``), and invents a fresh
unknown dim for every broadcast. ONNX Runtime's ``SymbolicShapeInference`` (sympy-based, what
its transformers optimizer relies on) propagates ``batch`` / ``sequence`` through that
arithmetic and knows the com.microsoft ops llmc's fusions emit (Attention, MultiHeadAttention,
SkipLayerNormalization, RotaryEmbedding...). It is used rather than reimplemented, by:

* :func:`refine_shapes` (here): symbolic shapes for the fusion checks, which compare dims (the
  heads of Q, K and V must agree, the sequence of the mask must be the key's);
* ``llmc.passes.memory.concrete_shapes``: every tensor's size at concrete input shapes.

:func:`infer` is the one driver of the library's internals. It runs the inference loop itself
rather than the public ``SymbolicShapeInference.infer_shapes``, because that entry point raises
when some shape stays unknown (common: contrib ops, dynamic Reshape) after writing
``sym_shape_infer_temp.onnx`` into the current directory; the partial result is what both
callers need, and nothing is written anywhere. The library's logger is silenced meanwhile (its
warnings about broadcasts and merges are not the user's to act on). llmc adds handlers for the
ops it emits that the library lacks or types partly (:class:`_Inference`).

Weights are not copied: initializers over ``INLINE_LIMIT`` elements are handed to the inference
as typed graph inputs (their shapes are all it needs); small ones (shape constants) keep data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
from collections.abc import Iterator, Mapping, Sequence

import onnx
import onnx_ir as ir
from onnx import helper

from llmc.errors import LlmcError

# Initializers up to this many elements keep their values (shape arithmetic reads them).
INLINE_LIMIT = 1024

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Inferred:
    """What the inference found for a model."""

    proto: onnx.ModelProto
    """The weightless model it ran on (large initializers as inputs, input shapes applied)."""
    stripped: list[str]
    """The initializers handed over as inputs without their data."""
    value_info: dict[str, onnx.ValueInfoProto]
    """Every tensor it typed: graph inputs, initializers, node outputs."""
    error: Exception | None = None
    """What stopped the inference early, if anything (``value_info`` then holds what it knew)."""


def infer(model: ir.Model, *, input_shapes: Mapping[str, Sequence[int | str]] | None = None) -> Inferred:
    """Run ONNX Runtime's symbolic shape inference on ``model`` (not modified).

    ``input_shapes`` overrides the shapes of the named graph inputs (concrete sizes give
    concrete shapes). An op the library cannot infer stops it: ``error`` says why and
    ``value_info`` keeps what was known so far. Nothing is written to the current directory.
    """
    from onnxruntime.tools import symbolic_shape_infer as ssi

    proto, stripped = _weightless_proto(model, input_shapes or {})
    inference = _inference_class()(int_max=2**31 - 1, auto_merge=True, guess_output_rank=False, verbose=0)
    error = None
    with _quiet(ssi.__name__):
        inference._preprocess(proto)
        try:
            while inference.run_:
                inference._infer_impl()
        except Exception as exc:  # noqa: BLE001 - the partial result is returned with the error
            error = exc
    return Inferred(proto, stripped, dict(inference.known_vi_), error)


def refine_shapes(model: ir.Model) -> int:
    """Set symbolic shapes on the model's values; return how many values gained information."""
    try:
        inferred = infer(model)
        if inferred.error is not None:
            raise inferred.error
    except Exception as error:  # noqa: BLE001 - best effort: fusion checks then see ONNX's shapes
        logger.info("symbolic shape inference failed (%s); using ONNX shape inference", error)
        return 0
    gained = 0
    for node in model.graph:
        for value in node.outputs:
            vi = inferred.value_info.get(value.name or "")
            new = _symbolic_shape(vi) if vi is not None else None
            if new is None or not _more_specific(new, value.shape):
                continue
            value.shape = new
            gained += 1
    return gained


def _weightless_proto(
    model: ir.Model, input_shapes: Mapping[str, Sequence[int | str]]
) -> tuple[onnx.ModelProto, list[str]]:
    """The model as a proto with its large weights turned into typed inputs (no weight copies)."""
    clone = _clone(model)  # shares the tensors; only the graph structure is copied
    stripped = []
    for name, value in list(clone.graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or tensor.size <= INLINE_LIMIT:
            continue
        clone.graph.initializers.pop(name)
        value.const_value = None
        if value.shape is None:
            value.shape = ir.Shape(tensor.shape)
        if value.type is None:
            value.type = ir.TensorType(tensor.dtype)
        if value not in clone.graph.inputs:
            clone.graph.inputs.append(value)
        stripped.append(name)
    for value in clone.graph.inputs:
        if value.name in input_shapes:
            value.shape = ir.Shape(input_shapes[value.name])
    return ir.serde.serialize_model(clone), stripped


def _clone(model: ir.Model) -> ir.Model:
    """``model.clone()``; one line naming the value if one is used where it is not defined."""
    try:
        return model.clone()
    except RuntimeError as exc:  # onnx-ir's cloner: a value outside the scope being copied
        innermost: BaseException = exc
        while (innermost.__cause__ or innermost.__context__) is not None:
            innermost = innermost.__cause__ or innermost.__context__
        if innermost.args and isinstance(innermost.args[0], ir.Value):  # KeyError(value)
            name = innermost.args[0].name
        else:  # ValueError("Value '%"name"<...>' used by node ... is an outer-scope value ...")
            found = re.search(r'%"([^"]*)"', str(innermost))
            name = found.group(1) if found else None
        what = f"value '{name}'" if name is not None else "a value"
        raise LlmcError(
            f"{what} is read or output by the graph (or one of its subgraphs or functions) but defined "
            "nowhere in its scope: no node, input or initializer there produces it; re-export the model"
        ) from None


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    quieted = logging.getLogger(name)
    level = quieted.level
    quieted.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        quieted.setLevel(level)


@functools.cache
def _inference_class() -> type:
    """``SymbolicShapeInference`` plus handlers for the ops llmc emits (imported on first use)."""
    from onnxruntime.tools import symbolic_shape_infer as ssi

    class _Inference(ssi.SymbolicShapeInference):
        """The int8 contrib ops (DynamicQuantizeMatMul, MatMulIntegerToFloat, QAttention) and
        SkipLayerNormalization's mean / inverse-std outputs, which the library leaves untyped."""

        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self.dispatcher_["DynamicQuantizeMatMul"] = self._float_matmul
            self.dispatcher_["MatMulIntegerToFloat"] = self._float_matmul
            self.dispatcher_["QAttention"] = self._qattention
            self.dispatcher_["SkipLayerNormalization"] = self._skip_layer_norm
            self.dispatcher_["SkipSimplifiedLayerNormalization"] = self._skip_layer_norm

        def _skip_layer_norm(self, node: onnx.NodeProto) -> None:
            # The library types outputs 0 and 3; 1 and 2 (mean, inverse std) are [..., 1] float.
            self._infer_SkipLayerNormalization(node)
            shape = self._get_shape(node, 0)
            for index in (1, 2):
                if len(node.output) > index and node.output[index]:
                    vi = self.known_vi_[node.output[index]]
                    vi.CopyFrom(
                        helper.make_tensor_value_info(node.output[index], onnx.TensorProto.FLOAT, [*shape[:-1], 1])
                    )

        def _float_matmul(self, node: onnx.NodeProto) -> None:
            self._compute_matmul_shape(node, onnx.TensorProto.FLOAT)

        def _qattention(self, node: onnx.NodeProto) -> None:
            # input [batch, sequence, hidden], weight [hidden, 3 * hidden] -> [batch, sequence, hidden]
            shape = self._get_shape(node, 0)
            weight = self._get_shape(node, 1)
            sizes = ssi.get_attribute(node, "qkv_hidden_sizes")
            shape[2] = int(sizes[2]) if sizes else weight[1] // 3
            dtype = self.known_vi_[node.input[3]].type.tensor_type.elem_type  # input_scale's type
            vi = self.known_vi_[node.output[0]]
            vi.CopyFrom(helper.make_tensor_value_info(node.output[0], dtype, shape))

    return _Inference


def _symbolic_shape(vi: onnx.ValueInfoProto) -> ir.Shape | None:
    tensor_type = vi.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return ir.Shape(
        [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
    )


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
