"""Canonicalisation before fusion: rewrite exporter variants into the form fusion patterns expect.

The legacy (TorchScript) exporter writes broadcast constants as 1-element tensors of shape [1]
(``Where(IsNaN(p), [0.0], p)``, ``Div(x, [1.4142])``) where the dynamo exporter writes scalars;
onnxscript's patterns match scalar constants only. Replacing a shape-[1] constant operand of an
elementwise op by the scalar is exact whenever another operand has rank >= 1: broadcasting
gives the same output shape and values.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions import shape_optimization

from llmc.model.values import const_ints, is_op, same_dim, shape_gather_dim

ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Equal", "Greater", "Less")


def _one_element_constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or value.shape is None:
        return None
    if value.shape.rank() != 1 or value.shape[0] != 1:
        return None
    if value.is_graph_input() or value.is_graph_output():
        return None
    return value.const_value.numpy()


class ScalarizeBroadcastConstant(pattern.RewriteRuleClassBase):
    """``op(..., Constant<[1]>, ...)`` -> ``op(..., Constant<[]>, ...)`` when another input has rank >= 1."""

    def __init__(self, op_type: str, arity: int) -> None:
        super().__init__(f"ScalarizeConstant_{op_type}")
        self._op_type, self._arity = op_type, arity

    def pattern(self, op, a, b, c):
        args = (a, b, c)[: self._arity]
        return getattr(op, self._op_type)(*args, _outputs=["out"])

    def check(self, context, out, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        node = out.producer()
        constants = [i for i, v in enumerate(node.inputs) if _one_element_constant(v) is not None]
        if not constants:
            return result.fail("no shape-[1] constant operand")
        others = [v for i, v in enumerate(node.inputs) if i not in constants]
        if not any(v is not None and v.shape is not None and v.shape.rank() >= 1 for v in others):
            return result.fail("no other operand of known rank >= 1 (the [1] shape may matter)")
        return result

    def rewrite(self, op, out, **_):
        node = out.producer()
        args = []
        for value in node.inputs:
            array = _one_element_constant(value)
            if array is None:
                args.append(value)
            else:
                args.append(op.Constant(value=ir.tensor(array.reshape(()))))
        return getattr(op, self._op_type)(*args)


def _fully_known(shape: ir.Shape | None) -> bool:
    if shape is None:
        return False
    for dim in shape:
        if isinstance(dim, int):
            continue
        if dim.value is None or str(dim.value).startswith("unk__"):
            return False
    return True


class RedundantReshape(pattern.RewriteRuleClassBase):
    """``Reshape(x, s)`` -> ``x`` when the output's shape is provably ``x``'s own.

    The legacy exporter reshapes attention outputs to the shape they already have
    (``[batch, heads, sequence, head]`` via ``Concat(Gather(Shape(..)))``). Both shapes come from
    symbolic inference, where equal named dims are equal at run time.
    """

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _outputs=["out"])

    def check(self, context, x, out, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not (_fully_known(x.shape) and _fully_known(out.shape)):
            return result.fail("input or output shape not fully known")
        if x.shape != out.shape:
            return result.fail(f"shape changes {x.shape} -> {out.shape}")
        if out.is_graph_output():
            return result.fail("output is a graph output")
        return result

    def rewrite(self, op, x, **_):
        return op.Identity(x)


def _shape_element(value: ir.Value) -> tuple[ir.Value, int] | None:
    """``Unsqueeze(Gather(Shape(t), i), [0])`` (or ``Reshape(.., [1])``) -> ``(t, axis)``."""
    node = value.producer()
    if node is None or node.op_type not in ("Unsqueeze", "Reshape") or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Unsqueeze":
        axes = const_ints(node.inputs[1]) if len(node.inputs) > 1 else list(node.attributes.get_ints("axes", []))
        if axes != [0]:
            return None
    if node.op_type == "Reshape" and const_ints(node.inputs[1]) != [1]:
        return None
    return shape_gather_dim(node.inputs[0].producer() if node.inputs[0] is not None else None)


class ConstantReshapeShape(pattern.RewriteRuleClassBase):
    """``Reshape(x, Concat(dim(t, i).., c..))`` -> ``Reshape(x, [0.., c..])``.

    The legacy exporter computes every reshape target from ``Shape`` at run time. Where an
    element is a dim of some tensor that symbolic inference proves equal to ``x``'s dim at the
    same position it becomes 0 ("copy", allowzero=0); a static dim becomes its value. The
    shape computation then dies, and with it the ``Shape`` uses that stop fusions from removing
    the attention subgraph.
    """

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _outputs=["out"])

    def check(self, context, x, shape, out, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._target = None
        if out.producer().attributes.get_int("allowzero", 0) != 0:
            return result.fail("allowzero=1")
        concat = shape.producer()
        if concat is None or concat.op_type != "Concat" or x.shape is None:
            return result.fail("shape is not a Concat, or the input shape is unknown")
        target: list[int] = []
        for part in concat.inputs:
            values = const_ints(part)
            if values is not None:
                target += values
                continue
            element = _shape_element(part) if part is not None else None
            if element is None:
                return result.fail("a shape element is neither constant nor a dim of a tensor")
            source, axis = element
            dim = source.shape[axis]
            position = len(target)
            if isinstance(dim, int):
                target.append(dim)
            elif position < x.shape.rank() and same_dim(dim, x.shape[position]):
                target.append(0)
            else:
                return result.fail(f"dim {axis} of {source.name} is not provably the input's dim {position}")
        if target.count(-1) > 1:
            return result.fail("more than one -1")
        self._target = target
        return result

    def rewrite(self, op, x, **_):
        return op.Reshape(x, op.Constant(value=ir.tensor(np.array(self._target, dtype=np.int64))))


class BiasLast(pattern.RewriteRuleClassBase):
    """``Add(bias, MatMul(..))`` -> ``Add(MatMul(..), bias)`` for a constant bias.

    The legacy exporter writes the bias first; the bias fusions (MultiHeadAttention's, BiasGelu)
    expect it second. Exact: Add is commutative, broadcasting included. Limited to MatMul/Gemm
    outputs so that patterns expecting a constant first elsewhere are not disturbed.
    """

    def pattern(self, op, c, x):
        return op.Add(c, x)

    def check(self, context, c, x, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if c.const_value is None or x.const_value is not None:
            return result.fail("first operand is not the only constant")
        producer = x.producer()
        if producer is None or producer.op_type not in ("MatMul", "Gemm"):
            return result.fail("second operand is not a MatMul/Gemm output")
        return result

    def rewrite(self, op, c, x, **_):
        return op.Add(x, c)


class OneOverToReciprocal(pattern.RewriteRuleClassBase):
    """``Div(1, x)`` -> ``Reciprocal(x)`` (exact: both compute 1/x); the legacy exporter's
    ``torch.rsqrt`` is ``Div(1, Sqrt(v))`` where RMSNorm patterns expect ``Reciprocal``."""

    def pattern(self, op, one, x):
        return op.Div(one, x)

    def check(self, context, one, x, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        value = one.const_value
        if value is None or value.size != 1 or float(value.numpy().reshape(-1)[0]) != 1.0:
            return result.fail("numerator is not the constant 1", one)
        if one.shape is None or x.shape is None or one.shape.rank() > x.shape.rank():
            return result.fail("the constant's rank could change the output shape", one)
        return result

    def rewrite(self, op, x, **_):
        return op.Reciprocal(x)


class ExplicitReduceDefaults(pattern.RewriteRuleClassBase):
    """Spell out ReduceMean's default ``keepdims=1, noop_with_empty_axes=0`` (no change in
    meaning): onnxscript's patterns name these attributes and the legacy exporter omits them."""

    def pattern(self, op, x, axes):
        return op.ReduceMean(x, axes, _outputs=["out"])

    def check(self, context, out, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        attributes = out.producer().attributes
        if "keepdims" in attributes and "noop_with_empty_axes" in attributes:
            return result.fail("attributes already explicit")
        return result

    def rewrite(self, op, x, axes, out, **_):
        attributes = out.producer().attributes
        return op.ReduceMean(
            x,
            axes,
            keepdims=attributes.get_int("keepdims", 1),
            noop_with_empty_axes=attributes.get_int("noop_with_empty_axes", 0),
        )


def _nonnegative(value: ir.Value | None, depth: int = 0) -> bool:
    """Whether ``value`` provably holds no negative element: a constant >= 0, or data taken
    from a ``Shape`` (through Gather / Slice / Unsqueeze / Squeeze / Reshape / Concat)."""
    if value is None:
        return False
    values = const_ints(value)
    if values is not None:
        return all(v >= 0 for v in values)
    node = value.producer()
    if is_op(node, "Shape"):
        return True
    if depth > 4 or not is_op(node, "Gather", "Slice", "Unsqueeze", "Squeeze", "Reshape", "Concat"):
        return False
    data = node.inputs if node.op_type == "Concat" else node.inputs[:1]
    return all(_nonnegative(v, depth + 1) for v in data)


class ExtractDim(shape_optimization.ExtractDim):
    """onnxscript's ``Slice(Shape(Transpose(Reshape(x, Concat(d0..d3), allowzero=1))))`` -> the
    ``d``s it selects, where a selected ``d`` may be -1 only if the dim it infers is static.

    ``allowzero=1`` keeps a 0 a 0, but -1 still means "inferred": that output dim is not the
    shape element. onnxscript's rule returns the -1 itself, and a Reshape that read the dim from
    the Shape then gets a second -1 (OPT's ``view(bsz, -1, heads, head_dim)``). Here a -1 becomes
    the dim shape inference gives the Reshape's output when that is an int; otherwise no match.
    """

    def check(self, context, dim0, dim1, dim2, dim3, final_shape, start, end, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not super().check(context, dim0, dim1, dim2, dim3, final_shape, start, end):
            return result.fail("not a full Shape of a 4-D Reshape+Transpose with constant slice bounds")
        reshaped = final_shape.producer().inputs[0].producer().inputs[0]
        positions = [0, 2, 1, 3][self._start_val : self._end_val]  # transposed axis -> Reshape axis
        self._static: dict[int, int] = {}
        for axis in positions:
            dim = (dim0, dim1, dim2, dim3)[axis]
            if _nonnegative(dim):
                continue
            inferred = reshaped.shape[axis] if reshaped.shape is not None else None
            if const_ints(dim) != [-1] or not isinstance(inferred, int):
                return result.fail(f"dim {axis} of the Reshape's shape may be -1 and its size is not static", dim)
            self._static[axis] = inferred
        return result

    def rewrite(self, op, dim0, dim1, dim2, dim3, final_shape, **_):
        if not self._static:
            return super().rewrite(op, dim0, dim1, dim2, dim3)
        # Static dims as initializers, one node as onnxscript's rewrite: node names stay as they were.
        dims = (dim0, dim1, dim2, dim3)
        parts = [
            op.initializer(ir.tensor(np.array([self._static[a]], np.int64)), name=_free_name(final_shape, a))
            if a in self._static
            else dims[a]
            for a in [0, 2, 1, 3][self._start_val : self._end_val]
        ]
        return op.Identity(parts[0]) if len(parts) == 1 else op.Concat(*parts, axis=0)


def _free_name(shape: ir.Value, axis: int) -> str:
    """``<shape>_dim<axis>``, suffixed until no initializer of the graph has the name."""
    taken = shape.graph.initializers if shape.graph is not None else {}
    name, n = f"{shape.name}_dim{axis}", 0
    while name in taken:
        n += 1
        name = f"{shape.name}_dim{axis}_{n}"
    return name


def shape_rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([ExtractDim.rule()])


def rules() -> pattern.RewriteRuleSet:
    arity = {"Where": 3}
    return pattern.RewriteRuleSet(
        [ScalarizeBroadcastConstant.rule(op, arity.get(op, 2)) for op in ELEMENTWISE]
        + [RedundantReshape.rule(), ConstantReshapeShape.rule(), BiasLast.rule()]
        + [OneOverToReciprocal.rule(), ExplicitReduceDefaults.rule()]
    )
