"""Instruments watch a pipeline run without being part of it (the TVM/MLIR split).

- :class:`TimingInstrument`: seconds, nodes before/after, modified flag and rewrites per rule
  for every pass run; this is the manifest's ``passes`` list.
- :class:`VerifyEachInstrument`: after each pass that changed the model, the ONNX checker,
  topological order and strict shape inference.
- :class:`DumpIRInstrument`: writes the textual IR after the named passes (or all).
- :class:`DifferentialInstrument`: runs the model in ONNX Runtime (ORT_DISABLE_ALL) on seeded
  inputs before the pipeline and after each pass that changed it, and names the first pass that
  changed the outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from llmc.errors import LlmcError, first_line
from llmc.model.compare import compare_outputs
from llmc.model.io import PROTO_LIMIT_BYTES, weights_nbytes


@dataclasses.dataclass
class PassRecord:
    name: str
    seconds: float
    modified: bool
    nodes_before: int
    nodes_after: int
    stats: dict[str, int]
    iteration: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Instrument:
    """Hooks called by the PassManager; the default implementation does nothing."""

    def before_pipeline(self, model: ir.Model) -> None:
        pass

    def before_pass(self, name: str, model: ir.Model) -> None:
        pass

    def after_pass(self, record: PassRecord, model: ir.Model) -> None:
        pass

    def after_pipeline(self, model: ir.Model) -> None:
        pass


class TimingInstrument(Instrument):
    """Collects one :class:`PassRecord` per pass run (filled in by the PassManager)."""

    def __init__(self) -> None:
        self.records: list[PassRecord] = []

    def after_pass(self, record: PassRecord, model: ir.Model) -> None:
        self.records.append(record)

    def rewrites(self) -> dict[str, int]:
        """Total rewrites per rule over all passes."""
        totals: dict[str, int] = {}
        for record in self.records:
            for rule, count in record.stats.items():
                totals[rule] = totals.get(rule, 0) + count
        return totals


class PassVerificationError(AssertionError):
    """A pass produced an invalid model: a bug in that pass, so it keeps its traceback."""


class VerifyEachInstrument(Instrument):
    def after_pass(self, record: PassRecord, model: ir.Model) -> None:
        if record.modified:
            verify_model(model, after=record.name)


def verify_model(model: ir.Model, after: str = "load") -> None:
    """ONNX checker, topological order and strict shape inference; raise naming the pass."""
    _check_topological(model.graph, after)
    proto = ir.serde.serialize_model(model)
    if weights_nbytes(model) >= PROTO_LIMIT_BYTES:
        proto = _weights_as_inputs(proto)  # the checker cannot take a >2 GB message
    try:
        onnx.checker.check_model(proto)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise PassVerificationError(f"after pass '{after}': {exc}") from exc


def _weights_as_inputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with initializers turned into typed graph inputs (no weight bytes)."""
    graph = proto.graph
    inputs = [
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer
    ]
    graph.ClearField("initializer")
    graph.input.extend(inputs)
    return proto


def _check_topological(graph: ir.Graph, after: str) -> None:
    seen = set(graph.inputs) | set(graph.initializers.values())
    for node in graph:
        for value in node.inputs:
            if value is None or value in seen or value.producer() is None:
                continue
            if value.producer().graph is graph:
                raise PassVerificationError(
                    f"after pass '{after}': node '{node.name}' reads '{value.name}' before it is produced"
                )
        seen.update(node.outputs)


class DumpIRInstrument(Instrument):
    """Writes ``DIR/NNN-<pass>.txt`` (ONNX text, weights excluded) after the selected passes."""

    def __init__(self, passes: list[str] | tuple[str, ...], directory: str | Path) -> None:
        self.passes = set(passes)
        self.directory = Path(directory)
        self.count = 0

    def before_pipeline(self, model: ir.Model) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._dump("input", model)

    def after_pass(self, record: PassRecord, model: ir.Model) -> None:
        if "all" in self.passes or record.name in self.passes:
            self._dump(record.name, model)

    def _dump(self, name: str, model: ir.Model) -> None:
        path = self.directory / f"{self.count:03d}-{name}.txt"
        path.write_text(ir.to_onnx_text(model, exclude_initializers=True))
        self.count += 1


class DifferentialCheckError(LlmcError):
    """A pass changed the model's outputs beyond the tolerance."""


class DifferentialInstrument(Instrument):
    """Run in ONNX Runtime before/after every changing pass; fail naming the first culprit."""

    def __init__(
        self,
        feeds: dict[str, np.ndarray],
        tolerance: float = 1e-4,
        reference: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.feeds = feeds
        self.tolerance = tolerance
        self.reference = reference
        self.checked = 0

    def before_pipeline(self, model: ir.Model) -> None:
        from llmc.runtime.ort import run_model

        if self.reference is None:
            self.reference = run_model(model, self.feeds)

    def after_pass(self, record: PassRecord, model: ir.Model) -> None:
        from llmc.runtime.ort import run_model

        if not record.modified:
            return
        assert self.reference is not None
        try:
            outputs = run_model(model, self.feeds)
        except Exception as exc:
            raise DifferentialCheckError(
                f"after pass '{record.name}' ONNX Runtime cannot run the model "
                f"({first_line(exc)}); rebuild with --disable-pass {record.name} and report "
                "this as an llmc bug"
            ) from exc
        result = compare_outputs(self.reference, outputs, self.tolerance)
        self.checked += 1
        worst = result.worst()
        if worst is not None:
            raise DifferentialCheckError(
                f"pass '{record.name}' changed output '{worst.name}' ({worst.reason}); "
                f"rebuild with --disable-pass {record.name} and report this as an llmc bug"
            )
