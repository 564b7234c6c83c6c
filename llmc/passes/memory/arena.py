"""Arena offsets for activation buffers: greedy by size and by breadth, and a validity checker.

Offsets follow Pisarchyk & Lee, "Efficient Memory Management for Deep Neural Net Inference"
(2020), the planners of TensorFlow Lite: buffers are placed one at a time at the lowest-waste
gap between the buffers already placed that are live at the same time (best fit), or on top of
them. *Greedy by size* places the largest buffers first; *greedy by breadth* takes the steps with
the most live bytes first and places their buffers largest first. Both are run and the smaller
arena is kept: neither dominates (greedy by size wins on most transformer graphs, greedy by
breadth when a few mid-sized tensors straddle the peak). The exact lower bound (the most bytes
live at one step) tells how far a plan is from optimal.

Written here rather than taken from ONNX Runtime or TFLite: neither exposes its planner to
Python, and the plan has to be computed on llmc's own schedules before ONNX Runtime sees them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from llmc.passes.memory.liveness import Liveness


@dataclasses.dataclass
class ArenaPlan:
    """Offsets of the arena buffers (``buffers``, indices into the graph's buffers)."""

    buffers: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray  # aligned bytes
    start: np.ndarray
    end: np.ndarray
    arena_bytes: int
    method: str
    alignment: int

    def problems(self) -> list[str]:
        return check_plan(self.sizes, self.start, self.end, self.offsets, self.arena_bytes, self.alignment)


def plan_arena(live: Liveness) -> ArenaPlan:
    """The smaller of the greedy-by-size and greedy-by-breadth plans of ``live``'s arena."""
    buffers = live.graph.arena_buffers
    sizes = live.aligned_bytes()[buffers]
    start, end = live.start[buffers], live.end[buffers]
    best = None
    for method, sequence in (
        ("greedy-by-size", _by_size(sizes, start, end)),
        ("greedy-by-breadth", _by_breadth(sizes, start, end, live.steps)),
    ):
        offsets = place(sizes, start, end, sequence)
        total = int((offsets + sizes).max()) if len(sizes) else 0
        if best is None or total < best.arena_bytes:
            best = ArenaPlan(buffers, offsets, sizes, start, end, total, method, live.alignment)
    assert best is not None
    return best


def _by_size(sizes: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    # Largest first; among equal sizes the longer-lived, then the earlier one.
    return np.lexsort((start, -(end - start), -sizes))


def _by_breadth(sizes: np.ndarray, start: np.ndarray, end: np.ndarray, steps: int) -> np.ndarray:
    if not len(sizes):
        return np.zeros(0, dtype=np.int64)
    curve = np.zeros(steps + 1, dtype=np.int64)
    np.add.at(curve, start, sizes)
    np.add.at(curve, end + 1, -sizes)
    breadth = np.cumsum(curve[:-1])
    seen = np.zeros(len(sizes), dtype=bool)
    sequence = []
    by_size = np.lexsort((start, -sizes))
    for step in np.argsort(-breadth, kind="stable"):
        live = by_size[(start[by_size] <= step) & (end[by_size] >= step) & ~seen[by_size]]
        seen[live] = True
        sequence.extend(live.tolist())
    return np.asarray(sequence, dtype=np.int64)


def place(sizes: np.ndarray, start: np.ndarray, end: np.ndarray, sequence: np.ndarray) -> np.ndarray:
    """Best-fit offsets for buffers placed in ``sequence`` (sizes are already aligned)."""
    n = len(sizes)
    offsets = np.full(n, -1, dtype=np.int64)
    placed = np.zeros(0, dtype=np.int64)  # placed buffer ids, kept sorted by offset
    for b in sequence:
        size = sizes[b]
        if len(placed):
            overlapping = placed[(start[placed] <= end[b]) & (end[placed] >= start[b])]
        else:
            overlapping = placed
        offset = _best_gap(offsets[overlapping], offsets[overlapping] + sizes[overlapping], size)
        offsets[b] = offset
        pos = np.searchsorted(offsets[placed], offset, side="right")
        placed = np.insert(placed, pos, b)
    return offsets


def _best_gap(lows: np.ndarray, highs: np.ndarray, size: int) -> int:
    """Lowest-waste gap of at least ``size`` below or between [lows, highs) (sorted by low)."""
    if not len(lows):
        return 0
    reach = np.maximum.accumulate(highs)  # highest byte used by the buffers up to each one
    gap_start = np.concatenate(([0], reach[:-1]))
    gaps = lows - gap_start
    fits = np.flatnonzero(gaps >= size)
    if len(fits):
        return int(gap_start[fits[np.argmin(gaps[fits])]])
    return int(reach[-1])


def check_plan(
    sizes: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    offsets: np.ndarray,
    arena_bytes: int,
    alignment: int,
) -> list[str]:
    """Every reason the plan is invalid (empty when valid).

    Valid: each offset is aligned and non-negative, each buffer fits in the arena, and no two
    buffers live at the same step share a byte. Checked over all pairs, in blocks.
    """
    problems = []
    n = len(sizes)
    if n and (offsets < 0).any():
        problems.append(f"buffer {int(np.flatnonzero(offsets < 0)[0])} has no offset")
    if n and (offsets % alignment).any():
        problems.append(f"buffer {int(np.flatnonzero(offsets % alignment)[0])} is not {alignment}-byte aligned")
    if n and (offsets + sizes > arena_bytes).any():
        problems.append(f"buffer {int(np.flatnonzero(offsets + sizes > arena_bytes)[0])} ends past the arena")
    block = 1024
    for lo in range(0, n, block):
        i = np.arange(lo, min(lo + block, n))[:, None]
        j = np.arange(n)[None, :]
        clash = (
            (j > i)
            & (start[i] <= end[j])
            & (start[j] <= end[i])
            & (offsets[i] < offsets[j] + sizes[j])
            & (offsets[j] < offsets[i] + sizes[i])
            & (sizes[i] > 0)
            & (sizes[j] > 0)
        )
        if clash.any():
            a, b = np.argwhere(clash)[0]
            problems.append(
                f"buffers {int(i[a, 0])} and {int(b)} are live together and overlap in the arena"
            )
            break
    return problems
