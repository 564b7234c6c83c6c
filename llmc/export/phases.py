"""The phases of an export (loading, exporting to ONNX, optimising, saving), each reported with its
elapsed seconds through an optional ``log`` callback: ``llmc export`` shows them; a library
caller that passes no callback gets no output.

A phase reports two lines: ``"{name} ({detail}) ..."`` as it starts (the only lines ending in
:data:`STARTING`) and ``"{name}: {seconds:.1f} s"`` once it has finished. A phase that fails
reports no second line.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Log = Callable[[str], None]
STARTING = "..."


def quiet(_line: str) -> None:
    """The callback of a caller that asked for no output."""


class Phases:
    """Consecutive phases: :meth:`start` ends the running phase (reporting its seconds) and starts
    the next; :meth:`end` ends the last. One function may start a phase that its caller ends (the
    exporters start ``saving`` with the ONNX file; the caller saves what goes beside it)."""

    def __init__(self, log: Log | None = None) -> None:
        self.log = log or quiet
        self._running: tuple[str, float] | None = None

    def start(self, name: str, detail: str = "") -> None:
        self.end()
        self.log(f"{name} ({detail}) {STARTING}" if detail else f"{name} {STARTING}")
        self._running = (name, time.perf_counter())

    def end(self) -> None:
        if self._running is not None:
            name, began = self._running
            self._running = None
            self.log(f"{name}: {time.perf_counter() - began:.1f} s")
