"""May an int8 encoder skip its padding? Judged against the fp32 model, within the int8 budget.

The padding probe (:mod:`llmc.runtime.padding.probe`) compares a trimmed run with the untrimmed
run of the same artifact within fp32's tolerance. For an int8 graph with dynamic activation
quantization that comparison always fails: each run's per-tensor scales come from the tensor it
quantizes, so cutting padding columns (or batching a sentence beside another) moves every real
position a little. But the untrimmed int8 run is not the reference an int8 artifact answers to:
the fp32 model is. So the held-out samples the accuracy budget was judged on (batch 1, padded
to the calibration length) are run again the ways skipping padding runs them, and compared with
the fp32 model's outputs at their real positions:

* ``alone``: each sample trimmed to its own length (a bucket of one; what a batch-1 request gets);
* ``batched``: the samples in batches of :data:`BATCH` in their order, each batch trimmed to its
  longest row (what ``trim`` and ``bucket`` run), every row judged on its own.

The verdict ``met`` is the budget's own: the mean cosine to fp32 (the lowest over float outputs,
padding masked) at least ``1 - max_accuracy_loss`` in both ways. :meth:`llmc.int8.precision.
Int8.padding_verdict` turns it into the manifest's padding verdicts.

Requires: samples whose inputs are all ``[1, L]`` with an ``attention_mask`` (an encoder's; a
decoder with a KV cache is not measured), some of them with padding to skip (else nothing would
be measured: None, and the probe's verdict stands); samples of different lengths are right-padded
to their batch's width. Ensures: a report section, or None where it does not apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from llmc.model.compare import cosine

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
Sample = dict[str, np.ndarray]
MASK = "attention_mask"
BATCH = 4


def applies(samples: list[Sample]) -> bool:
    """Whether every sample is an encoder's batch-1 row of ``[1, L]`` inputs with a mask."""
    if not samples:
        return False
    for sample in samples:
        mask = sample.get(MASK)
        if mask is None or mask.ndim != 2 or mask.shape[0] != 1:
            return False
        if any(a.ndim != 2 or a.shape != mask.shape for a in sample.values()):
            return False
    return True


def measure(run: Run, samples: list[Sample], reference: Callable[[int], Sample], loss: float) -> dict[str, Any] | None:
    """The report: cosines to fp32 of the samples run alone and batched with padding skipped."""
    if not applies(samples):
        return None
    lengths = [_length(s[MASK][0]) for s in samples]
    padded = [s[MASK].shape[1] for s in samples]
    if all(n >= p for n, p in zip(lengths, padded, strict=True)):
        return None  # no padding to skip in any sample: nothing measured, the probe's verdict stands
    alone = [_cosine(reference(i), run(_cut(s, lengths[i])), padded[i], lengths[i], lengths[i]) for i, s in enumerate(samples)]
    batched: list[float] = []
    for start in range(0, len(samples), BATCH):
        rows = list(range(start, min(start + BATCH, len(samples))))
        width = max(lengths[i] for i in rows)
        feeds = {name: np.concatenate([_width(samples[i][name], width) for i in rows]) for name in samples[rows[0]]}
        outputs = run(feeds)
        for offset, i in enumerate(rows):
            row = {name: _row(array, offset, len(rows)) for name, array in outputs.items()}
            batched.append(_cosine(reference(i), row, padded[i], width, lengths[i]))
    budget = 1.0 - loss
    return {
        "metric": "cosine to fp32 per held-out sample (min over float outputs, padding masked), padding skipped",
        "budget": round(budget, 6),
        "samples": len(samples),
        "alone": _summary(alone),
        "batched": {**_summary(batched), "batch": BATCH},
        "met": bool(np.mean(alone) >= budget and np.mean(batched) >= budget),
    }


def _length(mask_row: np.ndarray) -> int:
    nonzero = np.flatnonzero(mask_row)
    return int(nonzero[-1]) + 1 if nonzero.size else 1


def _cut(sample: Sample, length: int) -> Sample:
    return {name: np.ascontiguousarray(array[:, :length]) for name, array in sample.items()}


def _width(array: np.ndarray, width: int) -> np.ndarray:
    """A sample's ``[1, L]`` input cut or right-padded (with 0: padding, masked) to ``width``."""
    if array.shape[1] >= width:
        return array[:, :width]
    return np.pad(array, ((0, 0), (0, width - array.shape[1])))


def _row(array: np.ndarray, index: int, rows: int) -> np.ndarray:
    """Row ``index`` of a batched output (batch axis 0 when it has the batch's size)."""
    return array[index : index + 1] if array.ndim and array.shape[0] == rows else array


def _cosine(ref: Sample, cand: Sample, padded: int, width: int, real: int) -> float:
    """The lowest cosine over float outputs. An output with a sequence axis (``padded`` columns in
    the reference, ``width`` in the run) is compared on its ``real`` positions."""
    worst = 1.0
    for name, a in ref.items():
        if a.dtype.kind != "f" or name not in cand:
            continue
        b = cand[name]
        if a.ndim >= 2 and b.ndim >= 2 and a.shape[1] == padded and b.shape[1] == width:
            a, b = a[:, :real], b[:, :real]
        if a.shape != b.shape:
            return 0.0  # a shape the runs do not share: no agreement to claim
        worst = min(worst, cosine(a.astype(np.float64).ravel(), b.astype(np.float64).ravel()))
    return worst


def _summary(cosines: list[float]) -> dict[str, float]:
    return {"cosine_mean": round(float(np.mean(cosines)), 6), "cosine_worst": round(float(np.min(cosines)), 6)}
