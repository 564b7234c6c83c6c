"""Measured at build time: may this artifact skip its padding without changing an answer?

On seeded inputs, each output's batch and sequence axes are found by running two shapes and
seeing which axes follow them. Then a batch with trailing padding (rows of 7, 4 and 2 real tokens
in 11 columns) runs three ways: as given, trimmed to its longest row, and each row alone at its
own length (what bucketing does). Trimming (or bucketing) is safe when every real position of
every output (every row of an output without a sequence axis) agrees within the build's
tolerance. Packing (:mod:`.pack`: rows 7 and 4 share a packed row, 2 has its own) is measured
against the untrimmed run the same way, where the graph can be packed (else its reason is
recorded). The manifest records the layout, the verdicts and the measured differences, and
``llmc.load`` turns on only what is safe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from llmc.model.feeds import make_feeds, resolve_shapes
from llmc.runtime.padding.execute import PaddedRunner
from llmc.runtime.padding.layout import PaddingLayout, sequence_inputs
from llmc.runtime.padding.pack import PACK_WIDTH, PackingRunner, PackingUnavailable

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
SHAPES = ((3, 11), (2, 9))  # (batch, sequence) of the two axis-finding runs
LENGTHS = (7, 4, 2)  # real tokens per row of the padded batch (3 x 11)


def probe(
    model: ir.Model, run: Run, tolerance: float, seed: int = 0, packing: Callable[[PaddingLayout], Run] | None = None,
) -> dict[str, Any]:
    """The manifest's ``padding`` section for ``model`` run by ``run``; ``packing`` gives the run
    of the packed graph (:mod:`llmc.runtime.padding.pack`) for a layout, where packing is measured."""
    found = sequence_inputs(model)
    if isinstance(found, str):
        return {"applies": False, "reason": found}
    mask, names = found
    feeds = [_feeds(model, mask, names, shape, seed) for shape in SHAPES]
    outputs = [run(f) for f in feeds]
    layout = PaddingLayout(mask, names, {name: _axes(outputs, name) for name in outputs[0]})
    padded = dict(feeds[0])
    padded[mask] = (np.arange(SHAPES[0][1])[None, :] < np.array(LENGTHS)[:, None]).astype(feeds[0][mask].dtype)
    reference = run(padded)
    trimmed = _difference(reference, PaddedRunner(run, layout, "trim").run(padded), layout)
    rows = [run({k: v[i : i + 1, :length] for k, v in padded.items()}) for i, length in enumerate(LENGTHS)]
    alone = max(_difference(_rows(reference, layout, i), rows[i], layout, length) for i, length in enumerate(LENGTHS))
    separable = layout.rows_separable
    pack = {"applies": False, "reason": "an output has no batch axis" if not separable else "not measured"}
    if separable and packing is not None:
        pack = _pack_verdict(run, layout, packing, padded, reference, tolerance)
    return {
        "applies": True,
        **layout.to_dict(),
        "tolerance": tolerance,
        "trim": {"safe": trimmed <= tolerance, "max_difference": trimmed},
        "bucket": {
            "safe": separable and alone <= tolerance,
            "max_difference": alone if separable else None,
            **({} if separable else {"reason": "an output has no batch axis"}),
        },
        "pack": pack,
    }


def _pack_verdict(
    run: Run, layout: PaddingLayout, packing: Callable[[PaddingLayout], Run], padded: dict[str, np.ndarray],
    reference: dict[str, np.ndarray], tolerance: float,
) -> dict[str, Any]:
    """The padded batch packed into rows of its width (rows 7+4 and 2: two texts share a row)
    against the untrimmed run."""
    try:
        packed_run = packing(layout)
    except PackingUnavailable as exc:
        return {"applies": False, "reason": exc.reason}
    runner = PackingRunner(run, layout, lambda: packed_run, width=SHAPES[0][1])
    try:
        packed = runner.run(padded)
    except Exception as exc:  # noqa: BLE001 - a rewrite ONNX Runtime rejects: recorded, packing off
        return {"applies": False, "reason": f"the packed graph does not run: {str(exc).splitlines()[0][:300]}"}
    difference = _difference(reference, packed, layout)
    return {"applies": True, "safe": difference <= tolerance, "max_difference": difference, "width": PACK_WIDTH}


def _feeds(
    model: ir.Model, mask: str, names: tuple[str, ...], shape: tuple[int, int], seed: int
) -> dict[str, np.ndarray]:
    shapes, _ = resolve_shapes(model, {name: shape for name in names})
    feeds = make_feeds(model, shapes, seed)
    feeds[mask] = np.ones_like(feeds[mask])
    return feeds


def _axes(outputs: list[dict[str, np.ndarray]], name: str) -> tuple[int | None, int | None]:
    """The axes of output ``name`` that follow the batch and the sequence of ``SHAPES``."""
    first, second = outputs[0][name].shape, outputs[1][name].shape

    def axis(index: int) -> int | None:
        hits = [
            a for a in range(min(len(first), len(second)))
            if first[a] == SHAPES[0][index] and second[a] == SHAPES[1][index]
        ]
        return hits[0] if len(hits) == 1 and len(first) == len(second) else None

    return axis(0), axis(1)


def _rows(outputs: dict[str, np.ndarray], layout: PaddingLayout, row: int) -> dict[str, np.ndarray]:
    result = {}
    for name, array in outputs.items():
        batch_axis, _ = layout.outputs[name]
        result[name] = array if batch_axis is None else np.take(array, [row], axis=batch_axis)
    return result


def _difference(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], layout: PaddingLayout, length: int | None = None
) -> float:
    """The largest difference at real positions, relative to each output's magnitude (at least 1)."""
    worst = 0.0
    for name, want in reference.items():
        got = candidate[name]
        _, seq_axis = layout.outputs[name]
        if seq_axis is not None:
            real = length if length is not None else got.shape[seq_axis]
            want = np.take(want, range(real), axis=seq_axis)
            got = np.take(got, range(real), axis=seq_axis)
            if length is None:  # trimmed: compare each row's real positions only
                mask = _real_positions(want.shape, layout.outputs[name], LENGTHS)
                want, got = np.where(mask, want, 0), np.where(mask, got, 0)
        if want.shape != got.shape:
            return float("inf")
        if want.dtype.kind not in "fc":
            worst = max(worst, 0.0 if np.array_equal(want, got) else float("inf"))
            continue
        scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
        worst = max(worst, float(np.abs(want.astype(np.float64) - got).max()) / scale if want.size else 0.0)
    return round(worst, 9)


def _real_positions(shape: tuple[int, ...], axes: tuple[int | None, int | None], lengths: tuple[int, ...]) -> np.ndarray:
    """True at (row, position) pairs that are real tokens, broadcast over the other axes."""
    batch_axis, seq_axis = axes
    mask = np.ones(shape, dtype=bool)
    if batch_axis is None or seq_axis is None:
        return mask
    index = [np.newaxis] * len(shape)
    index[batch_axis], index[seq_axis] = slice(None), slice(None)
    real = np.arange(shape[seq_axis])[None, :] < np.array(lengths)[:, None]
    if batch_axis > seq_axis:
        real = real.T
    return np.broadcast_to(real[tuple(index)], shape)
