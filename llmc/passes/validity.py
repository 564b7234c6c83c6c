"""Every pass leaves a valid graph: after each pass that changed the model, the ONNX checker and
strict shape inference run, so an invalid graph fails the build naming the pass that wrote it
(instead of ONNX Runtime refusing the artifact at the end).

The check is the strictest that ONNX Runtime's graphs pass: ``onnx.checker.check_model`` (node
specs, attributes, topological order; ops of other domains such as ``com.microsoft`` are not
known to onnx and pass unchecked), then ``onnx.shape_inference.infer_shapes`` with
``check_type``, ``strict_mode`` and ``data_prop`` (a Reshape target computed from constants,
inferred shapes that contradict the annotated ones, input types). The few ops ONNX Runtime
registers in the ONNX domain itself (``SimplifiedLayerNormalization``; ``LayerNormalization``
before opset 17) are checked as contrib ops.

Cost: one serialization per changing pass, without the weights (initializers over
``INLINE_LIMIT`` elements become typed graph inputs: their shapes are all the check needs), so a
model over 2 GB is checked like any other. A source model that already fails the check is not
checked after its passes (``ValidityInstrument.skipped`` says why): the check blames passes
only for what they wrote.
"""

from __future__ import annotations

import logging
import re
import time

import onnx
import onnx_ir as ir

from llmc.errors import LlmcError, first_line
from llmc.passes.instruments import Instrument, PassRecord

# Initializers up to this many elements keep their values (Reshape targets, axes, shape
# arithmetic that data propagation reads); larger ones are weights.
INLINE_LIMIT = 1024
# Ops ONNX Runtime registers in the ONNX domain that onnx does not know (at the model's opset).
ORT_ONNX_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization", "LayerNormalization"})
_CHECK_DOMAIN = "llmc.ort_onnx_domain"


class InvalidGraphError(LlmcError):
    """A pass wrote a graph the ONNX checker or strict shape inference rejects."""


def find_problem(model: ir.Model) -> str | None:
    """Why ``model`` is not a valid graph (``node 'N' (Op): reason``), or None if it is."""
    try:
        proto = checkable_proto(model)
    except ir.serde.SerdeError as exc:
        root: BaseException = exc
        while root.__cause__ is not None:  # serde wraps the error once per level
            root = root.__cause__
        return f"it cannot be serialized to ONNX ({type(root).__name__}: {first_line(root)})"
    try:
        onnx.checker.check_model(proto)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return describe(str(exc))
    return None


def checkable_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto without its large weights (typed graph inputs instead)."""
    stripped = {
        value.name: (value, value.const_value)
        for value in model.graph.initializers.values()
        if value.const_value is not None and value.const_value.size > INLINE_LIMIT
    }
    serde_log = logging.getLogger("onnx_ir.serde")  # warns about every initializer without data
    level = serde_log.level
    try:
        serde_log.setLevel(logging.ERROR)
        for value, _ in stripped.values():
            value.const_value = None  # serialize_model skips initializers without data
        proto = ir.serde.serialize_model(model)
    finally:
        serde_log.setLevel(level)
        for value, tensor in stripped.values():
            value.const_value = tensor
    graph = proto.graph
    inputs = {i.name for i in graph.input}
    infos = [vi for vi in graph.value_info if vi.name not in stripped]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    graph.input.extend(
        onnx.helper.make_tensor_value_info(name, int(tensor.dtype), list(tensor.shape.numpy()))
        for name, (_, tensor) in stripped.items()
        if name not in inputs
    )
    _ort_ops_as_contrib(proto)
    return proto


def _ort_ops_as_contrib(proto: onnx.ModelProto) -> None:
    """Move ONNX Runtime's own ONNX-domain ops, where onnx lacks them, to a domain onnx skips."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    moved = False
    for node in proto.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in ORT_ONNX_DOMAIN_OPS:
            try:
                onnx.defs.get_schema(node.op_type, opset, "")
            except onnx.defs.SchemaError:
                node.domain = _CHECK_DOMAIN
                moved = True
    if moved:
        proto.opset_import.append(onnx.helper.make_opsetid(_CHECK_DOMAIN, 1))


_NODE = re.compile(r"\(op_type:(?P<op>[^,]+), node name: (?P<node>[^)]*)\):\s*(?P<reason>.*)")
_CONTEXT = re.compile(r"name: (?P<node>\S*) OpType: (?P<op>\S+)", re.IGNORECASE)
_TAG = re.compile(r"^(\[\w+\]\s*)+")


def describe(message: str) -> str:
    """One line from a checker / shape inference message: ``node 'N' (Op): reason``."""
    lines = [line for line in message.splitlines() if line.strip()]
    inferred = [m for m in map(_NODE.search, lines) if m]
    if inferred:  # the first in graph order; later ones are mostly its consequences
        first = inferred[0]
        reason = _TAG.sub("", first["reason"]).strip().rstrip(".")
        return f"node '{first['node']}' ({first['op']}): {reason}"
    text, _, context = message.partition("==> Context:")
    found = _CONTEXT.search(context) or _CONTEXT.search(text)
    reason = " ".join(_TAG.sub("", text).split())
    if found is None:
        return reason
    reason = reason.replace(found.group(0), f"'{found['node']}'") if found.group(0) in reason else reason
    return f"node '{found['node']}' ({found['op']}): {reason}"


class ValidityInstrument(Instrument):
    """Checks the model after every pass that changed it; raises naming the pass.

    The PassManager runs it by default. ``checked`` and ``seconds`` say what it cost;
    ``skipped`` is set (and nothing checked) when the source model already fails the check.
    """

    def __init__(self) -> None:
        self.checked = 0
        self.seconds = 0.0
        self.skipped: str | None = None

    def before_pipeline(self, model: ir.Model) -> None:
        problem = self._check(model)
        self.skipped = None if problem is None else (
            f"the source model fails the ONNX checker ({problem}): passes not checked"
        )

    def after_pass(self, record: PassRecord, model: ir.Model) -> None:
        if not record.modified or self.skipped is not None:
            return
        problem = self._check(model)
        if problem is not None:
            raise InvalidGraphError(
                f"pass '{record.name}' wrote an invalid graph: {problem}; "
                f"rebuild with --disable-pass {record.name} and report it"
            )

    def check_step(self, step: str, model: ir.Model, fix: str) -> None:
        """The same check after a build step that is not a pass (int8 quantization, float16)."""
        if self.skipped is not None:
            return
        problem = self._check(model)
        if problem is not None:
            raise InvalidGraphError(f"{step} wrote an invalid graph: {problem}; {fix}")

    def to_dict(self) -> dict[str, object]:
        """The manifest's ``validity``: graphs checked, seconds spent, why not checked."""
        return {"checked": self.checked, "seconds": round(self.seconds, 4), "skipped": self.skipped}

    def _check(self, model: ir.Model) -> str | None:
        start = time.perf_counter()
        try:
            return find_problem(model)
        finally:
            self.checked += 1
            self.seconds += time.perf_counter() - start
