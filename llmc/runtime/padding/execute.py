"""Running an encoder without computing its trailing padding.

``trim``: the columns after the last real token of every row are cut from each
``[batch, sequence]`` input before the run; each output is padded back to the request's length
with zeros (real positions hold the model's own values; the padding positions are what nobody
reads). ``bucket``: rows are grouped by length (a cost model of padded tokens plus a per-run
overhead, solved exactly over the sorted lengths), each group is trimmed to its longest row and
run on its own, and the rows go back in their order. Rows are real tokens then padding (the
tokenizers' right padding); a row's leading zeros are kept as they are.

Why our own: ONNX Runtime's CPU kernels compute every position they are given (packed, padding-free
attention exists for CUDA only), and the runtimes users compare with pad to the longest request.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmc.runtime.padding.layout import PaddingLayout

Feeds = dict[str, np.ndarray]
Run = Callable[[Feeds], dict[str, np.ndarray]]
MODES = ("auto", "off", "trim", "bucket", "pack")
# A run's fixed cost in padded tokens (per-node overhead of a small encoder): measured on MiniLM
# int8, 2 threads, batch 8 of real sentences (benchmarks/padding.py).
OVERHEAD_TOKENS = 24


def real_lengths(mask: np.ndarray) -> np.ndarray:
    """Per row, one past its last non-zero mask entry (at least 1: an empty row still runs)."""
    nonzero = mask != 0
    last = mask.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(axis=1), last, 1)


def plan_buckets(lengths: np.ndarray, overhead: int = OVERHEAD_TOKENS) -> list[np.ndarray]:
    """Row indices per bucket, minimising ``sum(rows * longest) + overhead * buckets`` over
    contiguous runs of the rows sorted by length (exact dynamic programme)."""
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order]
    n = len(order)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=int)
    for end in range(1, n + 1):  # bucket = ordered[start:end], its longest is ordered[end - 1]
        starts = np.arange(end)
        costs = best[starts] + (end - starts) * ordered[end - 1] + overhead
        cut[end] = int(np.argmin(costs))
        best[end] = costs[cut[end]]
    buckets, end = [], n
    while end > 0:
        buckets.append(order[cut[end] : end])
        end = cut[end]
    return buckets[::-1]


class PaddedRunner:
    """``run`` of an encoder with trailing padding skipped (``mode`` trim or bucket; pack:
    :class:`llmc.runtime.padding.pack.PackingRunner`)."""

    def __init__(self, run: Run, layout: PaddingLayout, mode: str, overhead: int = OVERHEAD_TOKENS) -> None:
        self._run, self.layout, self.mode, self.overhead = run, layout, mode, overhead
        self.buckets = mode == "bucket"  # rows of different lengths run in length buckets

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]:
        return self.run(feeds)

    def mask_of(self, feeds: Feeds) -> np.ndarray | None:
        """The mask of ``feeds`` whose padding this runner may skip; None: run them as given."""
        mask = feeds.get(self.layout.mask)
        if mask is None or mask.ndim != 2 or mask.shape[1] == 0 or set(feeds) != set(self.layout.inputs):
            return None
        return mask

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        mask = self.mask_of(feeds)
        if mask is None:
            return self._run(feeds)
        lengths = real_lengths(mask)
        batch, width = mask.shape
        if self.buckets and batch > 1 and self.layout.rows_separable:
            buckets = plan_buckets(lengths, self.overhead)
            if len(buckets) > 1:
                return self._bucketed(feeds, buckets, lengths, batch, width)
        longest = int(lengths.max())
        if longest >= width:
            return self._run(feeds)
        return self._restore(self._run(self._cut(feeds, longest)), width)

    def _cut(self, feeds: Feeds, length: int, rows: np.ndarray | None = None) -> Feeds:
        return {
            name: np.ascontiguousarray((array if rows is None else array[rows])[:, :length])
            for name, array in feeds.items()
        }

    def _restore(self, outputs: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
        result = {}
        for name, array in outputs.items():
            _, axis = self.layout.outputs.get(name, (None, None))
            if axis is None or array.shape[axis] == width:
                result[name] = array
                continue
            pad = [(0, 0)] * array.ndim
            pad[axis] = (0, width - array.shape[axis])
            result[name] = np.pad(array, pad)
        return result

    def _bucketed(
        self, feeds: Feeds, buckets: list[np.ndarray], lengths: np.ndarray, batch: int, width: int
    ) -> dict[str, np.ndarray]:
        result: dict[str, np.ndarray] = {}
        for rows in buckets:
            outputs = self._run(self._cut(feeds, int(lengths[rows].max()), rows))
            for name, array in outputs.items():
                batch_axis, seq_axis = self.layout.outputs[name]
                if seq_axis is None:
                    part = np.moveaxis(array, batch_axis, 0)
                else:
                    part = np.moveaxis(array, [batch_axis, seq_axis], [0, 1])
                if name not in result:
                    shape = (batch, width, *part.shape[2:]) if seq_axis is not None else (batch, *part.shape[1:])
                    result[name] = np.zeros(shape, dtype=array.dtype)
                if seq_axis is not None:
                    result[name][rows, : part.shape[1]] = part
                else:
                    result[name][rows] = part
        for name, array in result.items():
            batch_axis, seq_axis = self.layout.outputs[name]
            if seq_axis is not None:
                result[name] = np.moveaxis(array, [0, 1], [batch_axis, seq_axis])
            else:
                result[name] = np.moveaxis(array, 0, batch_axis)
        return result
