"""ONNX Runtime's own profiler, for one session: what :func:`llmc.runtime.ort.create_session`
turns on when given a :class:`Profiling`, and a reader of the trace it writes.

Profiling is a run-time diagnostic, never a setting an artifact records, so it is not a
:class:`~llmc.runtime.ort.SessionConfig` field (the manifest's ``session.options`` stay what
they were). ``trace_prefix`` turns on ``SessionOptions.enable_profiling``: every run and every
kernel is timed and written, as a Chrome trace, to ``<trace_prefix>_<date>.json`` when
``session.end_profiling()`` is called (which returns the path and stops profiling: later runs
are not timed). ``optimized_model`` saves the graph ONNX Runtime actually runs (after its own
rewrites at the session's optimization level; weights over 1 KiB to ``<file>.data``), so that
what a kernel reads can be counted on the nodes the trace names.

The trace (:func:`read_trace`): each run is a ``Session`` event ``model_run`` (start ``ts`` and
``dur`` in microseconds) and each kernel a ``Node`` event ``<node>_kernel_time`` whose
``args.op_name`` is the op type; kernels belong to the run whose span holds their start.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError

RUN_EVENT = "model_run"
KERNEL_SUFFIX = "_kernel_time"


@dataclasses.dataclass(frozen=True)
class Profiling:
    """What one session writes for diagnosis (None: nothing)."""

    trace_prefix: str | None = None  # enable_profiling: the trace's path prefix (a directory and a stem)
    optimized_model: str | None = None  # the optimized graph's .onnx path

    def apply(self, options: Any) -> None:
        """Set these on an ``onnxruntime.SessionOptions``."""
        if self.trace_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = self.trace_prefix
        if self.optimized_model is not None:
            options.optimized_model_filepath = self.optimized_model
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", Path(self.optimized_model).name + ".data"
            )
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One kernel's run: its node, op type and microseconds."""

    node: str
    op_type: str
    us: float


@dataclasses.dataclass
class TraceRun:
    """One ``session.run`` of the trace: its microseconds and its kernels, in order."""

    us: float
    kernels: list[Kernel]


def read_trace(path: str | Path) -> list[TraceRun]:
    """The runs of an ONNX Runtime profile, in order; a file that is not one is one error line."""
    try:
        events = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise LlmcError(f"{path}: not an ONNX Runtime profile ({exc})") from None
    if not isinstance(events, list):
        raise LlmcError(f"{path}: not an ONNX Runtime profile (a JSON list of trace events)")
    spans = sorted(
        (float(e["ts"]), float(e["dur"])) for e in events if e.get("cat") == "Session" and e.get("name") == RUN_EVENT
    )
    runs = [TraceRun(us=dur, kernels=[]) for _, dur in spans]
    starts = [start for start, _ in spans]
    kernels = sorted(
        (float(e["ts"]), e) for e in events
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith(KERNEL_SUFFIX)
    )
    index = 0
    for ts, event in kernels:
        while index + 1 < len(starts) and ts >= starts[index + 1]:
            index += 1
        if not runs or ts < starts[index] or ts > starts[index] + spans[index][1]:
            continue  # outside every run (session initialization)
        name = event["name"][: -len(KERNEL_SUFFIX)]
        runs[index].kernels.append(Kernel(name, str(event.get("args", {}).get("op_name", "?")), float(event["dur"])))
    return runs
