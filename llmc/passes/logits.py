"""``logits_to_keep``: a decoder runs its LM head for the positions its caller reads, not all.

A prefill of ``S`` prompt tokens computes ``S`` rows of logits, and generation reads the last:
the LM head (hidden x vocabulary, SmolLM2's 576 x 49,152) is a fifth of a prefill's matrix work
spent on rows nobody reads. This pass gives the decoder an int64 scalar input
:data:`~llmc.model.decoder.LOGITS_TO_KEEP` and slices the LM head's input to the last ``k``
positions before it (``Slice(hidden, starts=k * [-1], ends=[max], axes=[1])``: ``k = 0`` keeps every
position, as Hugging Face's ``logits_to_keep`` does), so ``logits`` is ``[batch, min(k, S), vocab]``.

Requires:

- a decoder (a ``past_key_values.*`` input) with a ``logits`` output and no ``logits_to_keep``
  input yet;
- an LM head: the ``MatMul`` / ``Gemm`` / ``MatMulNBits`` nearest ``logits`` whose weights are
  computed from initializers alone, its input ``[batch, sequence, hidden]``;
- nothing downstream of that input but ``logits``: no other graph output (the KV cache's
  ``present.*``, a hidden-states output) reads it, so every other output stays exactly as it was.

Ensures: the graph takes ``logits_to_keep``; fed 0 it computes what it computed before. That the
sliced head gives the full run's last rows is measured by the build's verification
(:func:`llmc.compiler.verify.verify`), not assumed. Decoders without what it requires are left
alone (no input added). ONNX Runtime only: a scalar shape input would need its own range in every
TensorRT engine profile, so the ``trt`` target's pipeline does not run this pass and it is off for
ONNX Runtime's TensorRT execution provider (``PassOptions.keep_logits``). int8 keeps the sliced head
in float (:func:`reads_kept_positions`): one dynamic activation scale over its rows would change
with ``k``.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir

from llmc.model import decoder
from llmc.passes.registry import LlmcPass, PassOptions, register

MS = "com.microsoft"
HEAD_OPS = frozenset({("", "MatMul"), ("", "Gemm"), (MS, "MatMulNBits")})
INT64_MAX = np.iinfo(np.int64).max
STATIC_DEPTH = 4  # weights may reach the head through a few nodes (a Transpose of a tied table)


def _static(value: ir.Value | None, depth: int = STATIC_DEPTH) -> bool:
    """``value`` is computed from initializers alone (within ``depth`` nodes)."""
    if value is None:
        return True  # an omitted optional input
    if value.const_value is not None and not value.is_graph_input():
        return True
    node = value.producer()
    if node is None or depth == 0:
        return False
    return all(_static(v, depth - 1) for v in node.inputs)


def find_head(graph: ir.Graph, logits: ir.Value) -> ir.Node | None:
    """The LM head: the matrix product with static weights nearest ``logits`` (breadth first)."""
    start = logits.producer()
    queue, seen = collections.deque([start] if start is not None else []), set()
    while queue:
        node = queue.popleft()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if (node.domain or "", node.op_type) in HEAD_OPS and len(node.inputs) > 1 and _static(node.inputs[1]):
            return node
        queue.extend(v.producer() for v in node.inputs if v is not None and v.producer() is not None)
    return None


def _downstream(value: ir.Value) -> set[int]:
    """ids of the values computed from ``value`` (itself included)."""
    found, stack = {id(value)}, [value]
    while stack:
        for use in stack.pop().uses():
            for out in use.node.outputs:
                if id(out) not in found:
                    found.add(id(out))
                    stack.append(out)
    return found


def why_not(graph: ir.Graph) -> tuple[str | None, ir.Value | None]:
    """(None, the LM head's input) when the pass applies, else (why not, None)."""
    names = [v.name for v in graph.inputs]
    if not decoder.is_decoder(names):
        return "not a decoder with a KV cache", None
    if decoder.LOGITS_TO_KEEP in names:
        return f"already takes '{decoder.LOGITS_TO_KEEP}'", None
    logits = next((v for v in graph.outputs if v.name == decoder.LOGITS), None)
    if logits is None:
        return f"no '{decoder.LOGITS}' output", None
    head = find_head(graph, logits)
    if head is None:
        return "no LM head (a matrix product with constant weights) before 'logits'", None
    hidden = head.inputs[0]
    if hidden is None or hidden.shape is None or len(hidden.shape) != 3:
        return f"the LM head {head.name!r} does not read [batch, sequence, hidden]", None
    below = _downstream(hidden)
    others = [v.name for v in graph.outputs if v is not logits and id(v) in below]
    if others:
        return f"output(s) {', '.join(others[:3])} also read the LM head's input", None
    return None, hidden


def reads_kept_positions(value: ir.Value | None) -> bool:
    """``value`` is the LM head's input as this pass slices it (its positions chosen by the
    ``logits_to_keep`` input): whatever reads it is the LM head."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "Slice" or len(node.inputs) < 2 or node.inputs[1] is None:
        return False
    starts = node.inputs[1].producer()
    return starts is not None and any(
        v is not None and v.is_graph_input() and v.name == decoder.LOGITS_TO_KEEP for v in starts.inputs
    )


def _constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.INT64),
                     const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


@register("logits", "decoders: an input logits_to_keep (0: all, k: the last k) runs the LM head on those positions only")
class LogitsToKeepPass(LlmcPass):
    """Adds ``logits_to_keep`` and slices the LM head's input (module docstring)."""

    def __init__(self, options: PassOptions | None = None) -> None:
        super().__init__()
        self.enabled = (options or PassOptions()).keep_logits
        self.reason: str | None = None  # why the last call changed nothing (None: it applied)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        self.reason, hidden = why_not(graph) if self.enabled else ("off for this device (PassOptions.keep_logits)", None)
        self.stats = {}
        if hidden is None:
            return ir.passes.PassResult(model, modified=False)
        keep = ir.Value(name=decoder.LOGITS_TO_KEEP, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.INT64))
        graph.inputs.append(keep)
        prefix = decoder.LOGITS_TO_KEEP
        minus = _constant(graph, f"{prefix}/minus_one", np.array([-1], np.int64))
        starts = ir.node("Mul", [keep, minus], name=f"{prefix}/starts")  # [-k]: a scalar times [-1]
        ends = _constant(graph, f"{prefix}/ends", np.array([INT64_MAX], np.int64))
        axes = _constant(graph, f"{prefix}/axes", np.array([1], np.int64))
        sliced = ir.node("Slice", [hidden, starts.outputs[0], ends, axes], name=f"{prefix}/slice")
        starts.outputs[0].name = f"{prefix}/starts"
        out = sliced.outputs[0]
        out.name, out.dtype = f"{prefix}/hidden", hidden.dtype
        out.shape = ir.Shape([hidden.shape[0], None, hidden.shape[2]])
        for use in list(hidden.uses()):
            if use.node is not sliced:
                use.node.replace_input_with(use.idx, out)
        producer = hidden.producer()
        if producer is not None:
            graph.insert_after(producer, [starts, sliced])
        else:
            graph.extend([starts, sliced])
        logits = next(v for v in graph.outputs if v.name == decoder.LOGITS)
        if logits.shape is not None and len(logits.shape) == 3:
            logits.shape = ir.Shape([logits.shape[0], "kept_sequence", logits.shape[2]])
        self.stats = {"logits_to_keep": 1}
        return ir.passes.PassResult(model, modified=True)
