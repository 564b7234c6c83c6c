"""FP16 with fp32 islands: choose a precision per node, then make the graph say it (casts).

TensorRT 11 builds only strongly typed networks: the ONNX types are the precision, there is no
FP16 builder flag to ask for. This pass writes that precision into the graph:

- every float32 node runs in float16 unless a rule keeps it in float32 (an *island*), each rule
  with the reason recorded (``Float16Pass.decisions``):
  normalization statistics (LayerNorm, RMSNorm), reductions, Softmax and the scores that feed it
  (scale, mask), Pow / Exp / Log, the angles of Cos / Sin (rotary tables), float tables computed
  from integer inputs (masks, positions), nodes reading a constant float16 cannot hold
  (``finfo(float32).min`` masks, tiny epsilons), control flow, the final logits head by default,
  and nodes the user or the numeric check (``llmc.fp16.check``) named;
- weights consumed only by float16 nodes are stored in float16 (out-of-range values clamped and
  counted); weights shared by both precisions are stored once, in float16, and cast up;
- a Cast is inserted wherever a value crosses precisions (one per value and precision);
- graph inputs and outputs keep float32 unless ``io_fp16``.

Written here rather than taken from onnxconverter-common's ``convert_float_to_float16``: that
converter keeps whole op types in float32 by a block list only, cannot reason about Softmax
inputs, rotary angles or out-of-range constants, and has no per-node reasons to report.
"""

from __future__ import annotations

import fnmatch

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from llmc.errors import LlmcError
from llmc.fp16.options import Fp16Options
from llmc.passes.registry import LlmcPass

FLOAT = ir.DataType.FLOAT
HALF = ir.DataType.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)
FP16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal float16 (6.1e-5)
# Constants up to this many elements are "scalars": one out of float16's range pins its consumer
# to float32. Larger ones are weights: clamped (overflow) or flushed (underflow) and counted.
SMALL_CONSTANT = 64
# Weights over this many elements never start an fp32 "table from integers" island (embeddings).
TABLE_LIMIT = 1 << 16

_NORM = "normalization statistics overflow or lose precision in float16"
FP32_OPS: dict[str, str] = {
    **dict.fromkeys(
        ["LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
         "SkipSimplifiedLayerNormalization", "GroupNormalization", "InstanceNormalization",
         "MeanVarianceNormalization", "LpNormalization", "BatchNormalization"],
        _NORM,
    ),
    **dict.fromkeys(
        ["ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
         "ReduceLogSumExp", "ReduceProd", "CumSum"],
        "a reduction accumulates past float16's range or precision",
    ),
    **dict.fromkeys(["Softmax", "LogSoftmax"], "Softmax runs in float32"),
    **dict.fromkeys(["Pow", "Exp", "Log"], "overflows float16 easily"),
    **dict.fromkeys(["Cos", "Sin"], "angles need float32 precision"),
}
NORM_OPS = frozenset(k for k, v in FP32_OPS.items() if v == _NORM)
# Compute-heavy ops: the reason for float16. They never inherit float32 from their inputs.
HEAVY_OPS = frozenset(
    ["MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "Attention", "MultiHeadAttention",
     "GroupQueryAttention", "FusedMatMul"]
)
# Exact in any float type: they follow their neighbours to save casts.
LAYOUT_OPS = frozenset(
    ["Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Slice", "Gather",
     "GatherElements", "GatherND", "Concat", "Split", "Expand", "Tile", "Pad",
     "QuantizeLinear", "DequantizeLinear"]
)
QDQ_OPS = frozenset(["QuantizeLinear", "DequantizeLinear"])
# Ops between a Softmax and the MatMul that made its scores: scale, mask, clamp.
SCORE_OPS = frozenset(["Add", "Sub", "Mul", "Div", "Where", "Neg", "Max", "Min", "Clip"])
# Inputs read as data of any type (never cast): the op only looks at shape, or converts itself.
_ANY_TYPE_INPUT_OPS = frozenset(["Shape", "Size", "Cast", "CastLike", "IsNaN", "IsInf"])
# (op, input index) that stay float32 whatever the node's precision.
_FLOAT32_INPUTS = frozenset([("Resize", 2), ("Upsample", 1), ("Dropout", 1)])
# Ops whose float output type comes from an attribute this pass knows how to change.
_TYPED_BY_ATTRIBUTE = frozenset(["Cast", "ConstantOfShape"])
_HEAD_WALK = frozenset(["Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Add", "Cast", "Slice"])


class Float16Pass(LlmcPass):
    """Rewrite a float32 graph to float16 with float32 islands.

    Requires: a topologically sortable graph whose float tensors are float32.
    Guarantees: every node reads inputs of the type it runs in (casts inserted), graph inputs and
    outputs keep their names and (unless ``io_fp16``) their float32 type, and ``decisions`` maps
    every float node kept in float32 to the rule that kept it. Numerics are checked by
    ``llmc.fp16.check``, not here.
    """

    def __init__(self, options: Fp16Options | None = None) -> None:
        super().__init__()
        self.options = options or Fp16Options()
        self.decisions: dict[str, str] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        graph.sort()
        ensure_types(model)
        # Constants become initializers so that one code path handles every constant.
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        nodes = [n for n in graph if _is_float_node(n)]
        fp32 = assign_precisions(graph, nodes, self.options)
        self.decisions = {node_key(n): why for n, why in fp32.items()}
        stats = _Rewriter(model, set(fp32), self.options).run(nodes)
        self.stats = {"fp16_nodes": len(nodes) - len(fp32), "fp32_nodes": len(fp32), **stats}
        return ir.passes.PassResult(model, modified=bool(nodes))


def ensure_types(model: ir.Model) -> None:
    """Types decide which nodes are float: infer them where the graph does not say."""
    if any(o.dtype is None for n in model.graph for o in n.outputs):
        common_passes.ShapeInferencePass()(model)


def node_key(node: ir.Node) -> str:
    """The name decisions and ``Fp16Options.forced`` use for a node."""
    return node.name or f"{node.op_type}:{node.outputs[0].name}"


# --- which nodes stay float32 ------------------------------------------------------------------


def assign_precisions(graph: ir.Graph, nodes: list[ir.Node], options: Fp16Options) -> dict[ir.Node, str]:
    """The float nodes that stay float32, each with the reason (``nodes`` in graph order)."""
    fp32: dict[ir.Node, str] = {}
    forced = dict(options.forced)
    for pattern in options.keep_fp32:
        if not any(fnmatch.fnmatchcase(node_key(n), pattern) for n in nodes):
            sample = ", ".join(node_key(n) for n in nodes[:3])
            raise LlmcError(
                f"--keep-fp32 '{pattern}' matches no float node of the optimized graph (named like {sample}); "
                "list them with --dump-ir-after all DIR"
            )
    for node in nodes:
        if why := _seed_reason(node, options, forced):
            fp32[node] = why
    for node in nodes:
        if node.op_type in ("Softmax", "LogSoftmax"):
            _keep_scores(node, fp32)
    for node in _integer_tables(nodes):
        fp32.setdefault(node, "computes a float table from integers (mask, positions): cheap, precision-sensitive")
    if not options.fp16_head:
        for node in _heads(graph):
            fp32.setdefault(node, "final logits head (pass --fp16-logits to run it in float16)")
    _propagate_forward(nodes, fp32)
    _follow_neighbours(nodes, fp32)
    _qdq_follow_consumers(nodes, fp32)
    return fp32


def _qdq_follow_consumers(nodes: list[ir.Node], fp32: dict[ir.Node, str]) -> None:
    """A DequantizeLinear runs in its consumers' precision, a QuantizeLinear in its DQ's.

    An activation Q/DQ pair then shares one scale tensor of one type, as TensorRT's explicit
    quantization (and llmc's Q/DQ lint) requires; the Q's input is cast to it.
    """
    for node in reversed(nodes):
        if node.op_type not in QDQ_OPS:
            continue
        consumers = [u.node for o in node.outputs for u in o.uses()]
        if consumers and all(c in fp32 for c in consumers):
            fp32.setdefault(node, "Q/DQ in its consumers' float32")
        else:
            fp32.pop(node, None)


def _seed_reason(node: ir.Node, options: Fp16Options, forced: dict[str, str]) -> str | None:
    key = node_key(node)
    if key in forced:
        return forced[key]
    if any(fnmatch.fnmatchcase(key, p) for p in options.keep_fp32):
        return "kept in float32 by --keep-fp32"
    if any(isinstance(a.value, ir.Graph) or a.type == ir.AttributeType.GRAPHS for a in node.attributes.values()):
        return "control flow: its subgraphs stay float32"
    if node.domain in ("", "ai.onnx", "com.microsoft") and node.op_type in FP32_OPS:
        return f"{node.op_type}: {FP32_OPS[node.op_type]}"
    if any(o.dtype == FLOAT for o in node.outputs) and not _output_follows_inputs(node):
        return f"{node.op_type} sets its output type by attribute"
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return None  # Q/DQ scales are tiny by nature; an activation pair must keep one scale tensor
    for value in node.inputs:
        if (why := _unsafe_constant(value)) is not None:
            return why
    return None


def _output_follows_inputs(node: ir.Node) -> bool:
    if node.op_type in _TYPED_BY_ATTRIBUTE:
        return True
    if node.op_type in ("Constant", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike",
                        "RandomUniformLike", "Multinomial", "Bernoulli"):
        return False
    return any(v is not None and v.dtype == FLOAT for v in node.inputs)


def _unsafe_constant(value: ir.Value | None) -> str | None:
    if value is None or value.dtype != FLOAT or value.const_value is None:
        return None
    if value.const_value.size > SMALL_CONSTANT:
        return None
    array = np.abs(value.const_value.numpy().astype(np.float64))
    finite = array[np.isfinite(array)]
    nonzero = finite[finite > 0]
    if finite.size and finite.max() > FP16_MAX:
        return f"constant '{value.name}' holds {finite.max():.3g}, beyond float16's range"
    # A tiny constant as a whole (an epsilon) would flush or lose its digits; a vector with some
    # tiny entries (a bias) loses only what is negligible next to its other entries.
    if nonzero.size and nonzero.max() < FP16_TINY:
        return f"constant '{value.name}' holds {nonzero.max():.3g}, below float16's normal range"
    return None


def _keep_scores(softmax: ir.Node, fp32: dict[ir.Node, str]) -> None:
    """Scale and mask ops that compute the Softmax input stay float32 (back to the scores' MatMul)."""
    stack = [softmax.inputs[0]]
    while stack:
        value = stack.pop()
        node = value.producer() if value is not None else None
        if node is None or node in fp32 or node.op_type not in SCORE_OPS:
            continue
        fp32[node] = "computes a Softmax input (scale, mask)"
        stack.extend(v for v in node.inputs if v is not None and v.dtype == FLOAT)


def _integer_tables(nodes: list[ir.Node]) -> list[ir.Node]:
    """Float nodes whose float inputs are all small constants or other such nodes' outputs.

    Exporters compute masks, position tables and rotary angles from integer inputs this way;
    weights (embeddings) are excluded by size, so these stay small.
    """
    derived: set[ir.Value] = set()
    found: list[ir.Node] = []
    for node in nodes:
        floats = [v for v in node.inputs if v is not None and v.dtype == FLOAT]
        ok = all(
            v in derived or (v.const_value is not None and v.const_value.size <= TABLE_LIMIT) for v in floats
        )
        if ok and node.op_type not in HEAVY_OPS | QDQ_OPS | {"Shape", "Size"}:
            derived.update(o for o in node.outputs if o.dtype == FLOAT)
            if any(o.dtype == FLOAT for o in node.outputs):
                found.append(node)
    return found


def _heads(graph: ir.Graph) -> list[ir.Node]:
    """The last MatMul/Gemm on the way to each graph output, through layout ops and a bias Add."""
    heads = []
    for output in graph.outputs:
        value: ir.Value | None = output
        while value is not None and (node := value.producer()) is not None:
            if node.op_type in ("MatMul", "Gemm"):
                heads.append(node)
                break
            if node.op_type not in _HEAD_WALK:
                break
            value = next((v for v in node.inputs if v is not None and v.const_value is None), None)
    return heads


def _propagate_forward(nodes: list[ir.Node], fp32: dict[ir.Node, str]) -> None:
    """A light node fed only by float32 nodes stays float32 (no cast down and back up)."""
    for node in nodes:
        if node in fp32 or node.op_type in HEAVY_OPS | QDQ_OPS:
            continue
        producers = [
            v.producer() for v in node.inputs
            if v is not None and v.dtype == FLOAT and v.const_value is None and not v.is_graph_input()
        ]
        if producers and all(p is not None and p in fp32 for p in producers):
            fp32[node] = "fed only by float32 nodes"


def _follow_neighbours(nodes: list[ir.Node], fp32: dict[ir.Node, str]) -> None:
    """Layout ops between float32 nodes stay float32 (they are exact in either type)."""
    for node in reversed(nodes):
        if node in fp32 or node.op_type not in LAYOUT_OPS:
            continue
        data = node.inputs[0] if node.inputs else None
        producer = data.producer() if data is not None else None
        consumers = [u.node for o in node.outputs for u in o.uses()]
        if producer in fp32 and consumers and all(c in fp32 for c in consumers):
            fp32[node] = "layout op between float32 nodes"


# --- rewriting -----------------------------------------------------------------------------------


def _is_float_node(node: ir.Node) -> bool:
    return any(v is not None and v.dtype == FLOAT for v in (*node.inputs, *node.outputs))


class _Rewriter:
    def __init__(self, model: ir.Model, fp32: set[ir.Node], options: Fp16Options) -> None:
        self.model = model
        self.graph = model.graph
        self.fp32 = fp32
        self.options = options
        self.casts: dict[tuple[ir.Value, ir.DataType], ir.Value] = {}
        self.names = _names(model)
        self.stats = {"casts": 0, "weights_fp16": 0, "clamped": 0, "flushed": 0}

    def run(self, nodes: list[ir.Node]) -> dict[str, int]:
        if self.options.io_fp16:
            for value in self.graph.inputs:
                if value.dtype == FLOAT:
                    set_dtype(value, HALF)
        self._convert_initializers(nodes)
        for node in nodes:
            self._rewrite(node)
        self._fix_outputs()
        return self.stats

    def _want(self, node: ir.Node) -> ir.DataType:
        return FLOAT if node in self.fp32 else HALF

    def _convert_initializers(self, nodes: list[ir.Node]) -> None:
        float_nodes = set(nodes)
        for value in list(self.graph.initializers.values()):
            if value.dtype != FLOAT or value.const_value is None or value.is_graph_input():
                continue
            wants = {
                self._want(u.node) for u in value.uses()
                if u.node in float_nodes and (u.node.op_type, u.idx) not in _FLOAT32_INPUTS
            }
            if HALF not in wants or value.is_graph_output():
                continue
            if FLOAT in wants and value.const_value.size <= SMALL_CONSTANT:
                continue  # a scalar shared with float32 nodes keeps its exact value; fp16 users cast
            self._to_half(value)

    def _to_half(self, value: ir.Value) -> None:
        array = value.const_value.numpy().astype(np.float32)
        finite = np.isfinite(array)
        self.stats["clamped"] += int(np.count_nonzero(finite & (np.abs(array) > FP16_MAX)))
        self.stats["flushed"] += int(np.count_nonzero((array != 0) & (np.abs(array) < 2.0**-24)))
        half = np.where(finite, np.clip(array, -FP16_MAX, FP16_MAX), array).astype(np.float16)
        value.const_value = ir.tensor(half, name=value.name)
        set_dtype(value, HALF)
        self.stats["weights_fp16"] += 1

    def _rewrite(self, node: ir.Node) -> None:
        want = self._want(node)
        for i, value in enumerate(node.inputs):
            if value is None or value.dtype not in (FLOAT, HALF) or node.op_type in _ANY_TYPE_INPUT_OPS:
                continue
            target = FLOAT if (node.op_type, i) in _FLOAT32_INPUTS else want
            if value.dtype != target:
                node.replace_input_with(i, self._cast(value, target, node))
        if want != HALF:
            return
        retype_attributes(node, FLOAT, HALF)
        for out in node.outputs:
            if out.dtype == FLOAT:
                set_dtype(out, HALF)

    def _cast(self, value: ir.Value, dtype: ir.DataType, before: ir.Node) -> ir.Value:
        key = (value, dtype)
        if key not in self.casts:
            suffix = "fp16" if dtype == HALF else "fp32"
            cast = ir.node("Cast", [value], {"to": dtype}, name=self.names(f"{value.name}__to_{suffix}"))
            out = cast.outputs[0]
            out.name = self.names(f"{value.name}__{suffix}")
            set_dtype(out, dtype)
            out.shape = value.shape
            self.graph.insert_before(before, cast)
            self.casts[key] = out
            self.stats["casts"] += 1
        return self.casts[key]

    def _fix_outputs(self) -> None:
        """Graph outputs produced in float16 get a Cast back to float32 under their own name."""
        if self.options.io_fp16:
            return
        for i, value in enumerate(list(self.graph.outputs)):
            if value.dtype != HALF or value.is_graph_input():
                continue
            name = value.name
            value.name = self.names(f"{name}__fp16")
            cast = ir.node("Cast", [value], {"to": FLOAT}, name=self.names(f"{name}__to_fp32"))
            out = cast.outputs[0]
            set_dtype(out, FLOAT)
            out.shape = value.shape
            self.graph.append(cast)
            self.graph.outputs[i] = out
            out.name = name
            self.stats["casts"] += 1


def retype_attributes(node: ir.Node, old: ir.DataType, new: ir.DataType) -> None:
    """A Cast to ``old`` casts to ``new``; a ConstantOfShape of ``old`` fills with ``new``."""
    if node.op_type == "Cast" and node.attributes["to"].value == old:
        node.attributes["to"] = ir.AttrInt64("to", new)
    elif node.op_type == "ConstantOfShape" and "value" in node.attributes:
        tensor = node.attributes["value"].as_tensor()
        if tensor.dtype == old:
            array = tensor.numpy().astype(new.numpy())
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(array))


def set_dtype(value: ir.Value, dtype: ir.DataType) -> None:
    """Give ``value`` a new tensor type: ``value.dtype = ...`` mutates a type object that clones share."""
    value.type = ir.TensorType(dtype)


def _names(model: ir.Model):
    taken = {v.name for v in model.graph.initializers.values()} | {v.name for v in model.graph.inputs}
    for node in model.graph:
        taken.update(o.name for o in node.outputs if o.name)
        if node.name:
            taken.add(node.name)

    def fresh(base: str) -> str:
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    return fresh


def float16_counts(model: ir.Model) -> dict[str, int]:
    """Nodes by the float type they produce: the manifest's summary of the precision."""
    counts = {"fp16": 0, "fp32": 0}
    for node in model.graph:
        kinds = {o.dtype for o in node.outputs}
        if HALF in kinds:
            counts["fp16"] += 1
        elif FLOAT in kinds:
            counts["fp32"] += 1
    return counts
