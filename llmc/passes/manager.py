"""The PassManager: runs a :class:`Pipeline` of registered onnx-ir passes with instruments.

onnx-ir's own ``PassManager`` runs a fixed list of pass objects; ours adds what a compiler
driver needs on top of it: passes created by name from the registry with the build's options,
bounded fixed-point groups, and instruments (timing, verify-each, IR dumps, differential
checks) that observe every pass without being passes themselves. The validity check
(``llmc.passes.validity``) is on by default: after every pass that changed the model, the ONNX
checker and strict shape inference, so an invalid graph names the pass that wrote it.
"""

from __future__ import annotations

import time

import onnx_ir as ir

from llmc.model.values import count_nodes
from llmc.passes.instruments import Instrument, PassRecord, TimingInstrument
from llmc.passes.pipeline import FixedPoint, Pipeline, Step
from llmc.passes.registry import PassOptions, get_pass
from llmc.passes.validity import ValidityInstrument


class PassManager:
    def __init__(
        self,
        pipeline: Pipeline,
        options: PassOptions | None = None,
        instruments: list[Instrument] | None = None,
        validate: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.options = options or PassOptions()
        self.timing = TimingInstrument()
        # Validity last: the caller's instruments (an IR dump of the broken graph) see the pass first.
        self.validity = ValidityInstrument() if validate else None
        checks: list[Instrument] = [self.validity] if self.validity else []
        self.instruments: list[Instrument] = [self.timing, *(instruments or []), *checks]

    @property
    def records(self) -> list[PassRecord]:
        return self.timing.records

    def run(self, model: ir.Model) -> bool:
        """Run the pipeline in place on ``model``; return whether anything changed."""
        for instrument in self.instruments:
            instrument.before_pipeline(model)
        modified = self._run_items(self.pipeline.items, model, iteration=0)
        for instrument in self.instruments:
            instrument.after_pipeline(model)
        return modified

    def _run_items(self, items, model: ir.Model, iteration: int) -> bool:
        modified = False
        for item in items:
            if isinstance(item, Step):
                modified |= self._run_pass(item.name, model, iteration)
            else:
                modified |= self._run_group(item, model)
        return modified

    def _run_group(self, group: FixedPoint, model: ir.Model) -> bool:
        modified = False
        for iteration in range(group.max_iterations):
            changed = self._run_items(group.items, model, iteration)
            modified |= changed
            if not changed:
                break
        return modified

    def _run_pass(self, name: str, model: ir.Model, iteration: int) -> bool:
        pass_ = get_pass(name).factory(self.options)
        for instrument in self.instruments:
            instrument.before_pass(name, model)
        nodes_before = count_nodes(model)
        start = time.perf_counter()
        result = pass_(model)
        seconds = time.perf_counter() - start
        if result.model is not model:
            raise AssertionError(f"pass '{name}' must run in place")
        stats = dict(getattr(pass_, "stats", {}) or {})
        record = PassRecord(
            name=name,
            seconds=round(seconds, 6),
            modified=bool(result.modified),
            nodes_before=nodes_before,
            nodes_after=count_nodes(model),
            stats=stats,
            iteration=iteration,
        )
        for instrument in self.instruments:
            instrument.after_pass(record, model)
        return record.modified
