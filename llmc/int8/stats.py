"""Streaming calibration statistics: min/max, a fixed-size histogram and per-channel |max|.

Written here rather than taken from ``onnxruntime.quantization.calibrate`` because ONNX Runtime's
collectors keep every activation of every batch until the end (Percentile calibration of GPT-2
ran out of 24 GB) and its entropy collector fails with "Too many bins for data range" on
transformer activations. A :class:`TensorStats` holds ``BINS`` counts over ``[-R, R]``; when a
batch exceeds ``R`` the range doubles as often as needed and neighbouring bins merge, so the
histogram is exact up to bin width, its memory is constant, and batches can arrive one by one.

Ranges (``range_for``) are derived from the statistics by one of the methods (``llmc.int8.options.METHODS``):

- ``max``: the observed [min, max].
- ``percentile``: the ``percentile`` quantiles of the signed histogram (two-sided).
- ``entropy``: the |x| threshold minimising the KL divergence between the clipped histogram and
  its 128-level quantization, as TensorRT's legacy entropy calibrator does.
- ``mse``: the |x| threshold minimising the expected squared error (rounding noise Δ²/12 inside
  the range, clipping error outside) estimated from the histogram.

Statistics are saved as JSON (never pickle) so that a rebuild reuses them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

BINS = 4096  # signed histogram: BINS // 2 bins on each side of zero
DEFAULT_PERCENTILE = 99.99


@dataclasses.dataclass
class TensorStats:
    """Statistics of one tensor, updated batch by batch in constant memory."""

    minimum: float = float("inf")
    maximum: float = float("-inf")
    bound: float = 0.0  # the histogram covers [-bound, bound]
    histogram: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(BINS, np.int64))
    channel_absmax: np.ndarray | None = None  # max |x| per last-axis channel
    count: int = 0

    def update(self, x: np.ndarray, channels: bool = False) -> None:
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0:
            return
        rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
        # Per-channel extremes first: the global ones and the per-channel |max| follow from them
        # without more passes over x.
        channel_max, channel_min = rows.max(axis=0), rows.min(axis=0)
        lo, hi = float(channel_min.min()), float(channel_max.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
            rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
            channel_max, channel_min = rows.max(axis=0), rows.min(axis=0)
            lo, hi = float(channel_min.min()), float(channel_max.max())
        self.minimum, self.maximum = min(self.minimum, lo), max(self.maximum, hi)
        amax = max(-lo, hi)
        if self.bound == 0.0:
            self.bound = amax if amax > 0 else 1e-8
        elif amax > self.bound:
            self._widen(amax)
        half = BINS // 2
        # Bin index = floor(x * half / bound) + half. |x| <= bound puts it in [0, BINS] (the
        # float->int cast truncates, which is the floor for these non-negative values); x == bound
        # lands in the extra bin BINS, folded into the last one.
        position = np.multiply(x.ravel(), np.float32(half / self.bound))
        position += np.float32(half)
        counts = np.bincount(position.astype(np.intp), minlength=BINS + 1)
        counts[BINS - 1] += counts[BINS:].sum()
        self.histogram += counts[:BINS]
        if channels and x.ndim >= 1:
            per_channel = np.maximum(channel_max, -channel_min)
            if self.channel_absmax is None or self.channel_absmax.shape != per_channel.shape:
                self.channel_absmax = per_channel
            else:
                np.maximum(self.channel_absmax, per_channel, out=self.channel_absmax)
        self.count += x.size

    def _widen(self, amax: float) -> None:
        """Double the range until it covers ``amax``, merging bins pairwise each time."""
        half = BINS // 2
        while self.bound < amax:
            self.bound *= 2.0
            merged = self.histogram.reshape(-1, 2).sum(axis=1)  # BINS // 2 bins over the old range
            widened = np.zeros(BINS, np.int64)
            widened[half - half // 2 : half + half // 2] = merged
            self.histogram = widened

    # -- ranges ---------------------------------------------------------------------------------

    def absolute_histogram(self) -> tuple[np.ndarray, float]:
        """Counts of |x| over [0, bound] in BINS // 2 bins."""
        half = BINS // 2
        return self.histogram[half:] + self.histogram[:half][::-1], self.bound

    def range_for(self, method: str, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
        """The [lo, hi] to quantize to (lo <= 0 <= hi) by ``method``."""
        if self.count == 0:
            return 0.0, 0.0
        lo, hi = min(self.minimum, 0.0), max(self.maximum, 0.0)
        if method == "max":
            return lo, hi
        if method == "percentile":
            return self._percentile_range(percentile)
        if method == "entropy":
            threshold = entropy_threshold(*self.absolute_histogram())
        elif method == "mse":
            threshold = mse_threshold(*self.absolute_histogram(), lo=lo, hi=hi)
        else:
            raise ValueError(f"unknown calibration method {method!r}")
        return max(lo, -threshold), min(hi, threshold)

    def _percentile_range(self, percentile: float) -> tuple[float, float]:
        cumulative = np.cumsum(self.histogram)
        total = cumulative[-1]
        tail = total * (100.0 - percentile) / 100.0 / 2.0
        width = 2.0 * self.bound / BINS
        first = int(np.searchsorted(cumulative, tail, side="right"))
        last = int(np.searchsorted(cumulative, total - tail, side="left"))
        lo = -self.bound + first * width
        hi = -self.bound + (last + 1) * width
        return max(min(lo, 0.0), min(self.minimum, 0.0)), min(max(hi, 0.0), max(self.maximum, 0.0))

    # -- JSON -----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        nonzero = np.flatnonzero(self.histogram)
        return {
            "min": self.minimum,
            "max": self.maximum,
            "bound": self.bound,
            "count": self.count,
            "histogram": {"index": nonzero.tolist(), "count": self.histogram[nonzero].tolist()},
            "channel_absmax": None if self.channel_absmax is None else self.channel_absmax.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorStats:
        histogram = np.zeros(BINS, np.int64)
        histogram[np.asarray(data["histogram"]["index"], np.int64)] = data["histogram"]["count"]
        channels = data.get("channel_absmax")
        return cls(
            minimum=float(data["min"]),
            maximum=float(data["max"]),
            bound=float(data["bound"]),
            histogram=histogram,
            channel_absmax=None if channels is None else np.asarray(channels, np.float32),
            count=int(data["count"]),
        )


def entropy_threshold(histogram: np.ndarray, bound: float, levels: int = 128) -> float:
    """TensorRT's legacy KL-divergence threshold over an |x| histogram (bins over [0, bound])."""
    bins = len(histogram)
    histogram = histogram.astype(np.float64)
    if histogram.sum() == 0:
        return bound
    best, best_i = np.inf, bins
    for i in range(levels, bins + 1, max(1, bins // 256)):
        reference = histogram[:i].copy()
        reference[i - 1] += histogram[i:].sum()  # clipped outliers land in the last bin
        nonzero = histogram[:i] != 0
        # Quantize the first i bins into `levels` groups (as np.array_split groups them) and
        # spread each group's mass evenly over its nonzero bins.
        sizes = np.full(levels, i // levels)
        sizes[: i % levels] += 1
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        group_mass = np.add.reduceat(histogram[:i], starts)
        group_nonzero = np.add.reduceat(nonzero.astype(np.float64), starts)
        per_bin = np.divide(group_mass, group_nonzero, out=np.zeros(levels), where=group_nonzero > 0)
        candidate = np.repeat(per_bin, sizes) * nonzero
        p = reference / reference.sum()
        q_sum = candidate.sum()
        if q_sum == 0:
            continue
        q = candidate / q_sum
        valid = p > 0
        if np.any(q[valid] == 0):
            kl = np.inf
        else:
            kl = float(np.sum(p[valid] * np.log(p[valid] / q[valid])))
        if kl < best:
            best, best_i = kl, i
    return bound * best_i / bins


def mse_threshold(histogram: np.ndarray, bound: float, lo: float, hi: float, levels: int = 255) -> float:
    """The |x| threshold with the least expected squared quantization error."""
    bins = len(histogram)
    counts = histogram.astype(np.float64)
    if counts.sum() == 0:
        return bound
    centers = (np.arange(bins) + 0.5) * (bound / bins)
    best, best_t = np.inf, bound
    for i in range(max(1, bins // 64), bins + 1, max(1, bins // 512)):
        t = bound * i / bins
        span = min(hi, t) - max(lo, -t)
        step = span / levels if span > 0 else 0.0
        inside = counts[:i].sum() * step * step / 12.0
        outside = float(np.sum(counts[i:] * np.square(centers[i:] - t)))
        error = inside + outside
        if error < best:
            best, best_t = error, t
    return best_t
