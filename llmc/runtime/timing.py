"""The one timer: several callables timed interleaved in one process (``llmc bench``, the int4
per-node choice and ``llmc compress`` all time with it).

Interleaving (round-robin, the order rotated every round) exposes every callable to the same
machine state, so ratios stay meaningful on a noisy host: windows of a few calls measured the
same model 1.1x-1.85x apart on a 2-core VM. ``pause_s`` handles ONNX Runtime's intra-op threads,
which spin after a run: on a small machine the spinning threads of the session that just ran
starve the next one (MiniLM p50 ~50 ms per-run interleaved vs ~19 ms alone, 2 cores), so each
switch sleeps and makes one untimed call first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def interleaved(
    calls: dict[str, Callable[[], Any]], rounds: int, runs: int, *, warmup: int = 1,
    pause_s: float | None = None, per_call: bool = False, limit: int | None = None,
) -> dict[str, list[float]]:
    """Seconds of each callable: after ``warmup`` untimed calls each, every one of ``rounds``
    rounds runs each callable ``runs`` times back to back (order rotated by round; at most
    ``limit`` timed calls each in all). ``pause_s`` (not None): each switch sleeps that long and
    makes one untimed call first. Returns each call's seconds (``per_call``) or each round's mean
    seconds per call."""
    names = list(calls)
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            call, count = calls[name], runs if limit is None else min(runs, limit - len(times[name]))
            if pause_s is not None:
                time.sleep(pause_s)  # let the previous session's spinning threads park
                call()  # untimed: wakes this one's threads
            if per_call:
                for _ in range(count):
                    start = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - start)
            elif count:
                start = time.perf_counter()
                for _ in range(count):
                    call()
                times[name].append((time.perf_counter() - start) / count)
    return times


def median_ms(
    calls: dict[str, Callable[[], Any]], rounds: int = 7, runs: int = 20, *, warmup: int = 1,
    per_call: bool = False,
) -> dict[str, float]:
    """Median milliseconds per call of each callable (:func:`interleaved`)."""
    times = interleaved(calls, rounds, runs, warmup=warmup, per_call=per_call)
    return {name: float(np.median(v)) * 1e3 for name, v in times.items()}
