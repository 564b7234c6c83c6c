"""Running a batch of texts packed end to end in rows (``padding='pack'``).

The texts of a batch are laid first-fit (longest first) into rows of ``max(PACK_WIDTH, longest)``
tokens; the packed graph (:func:`llmc.model.packing.pack_graph`, built from the artifact's model
when a batch first packs, in a second ONNX Runtime session with the artifact's session options)
runs every position-wise node once over all the real tokens and gives the model's own outputs.
A batch that packing would not shorten (one text, or texts too long to share a row) runs in
buckets as ``padding='bucket'`` does. The second session holds a second copy of the weights.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from llmc.errors import LlmcError
from llmc.model.packing import POSITIONS, SEGMENTS, UNPACK, packed_name
from llmc.runtime.padding.execute import OVERHEAD_TOKENS, Feeds, PaddedRunner, Run, real_lengths
from llmc.runtime.padding.layout import PaddingLayout

# Tokens a packed row holds at least: attention's cost per token grows with the row, the matrix
# products' efficiency with the rows of one product (MiniLM fp32, 2 threads: 48-96 alike).
PACK_WIDTH = 64


def plan_rows(lengths: np.ndarray, width: int) -> list[list[int]]:
    """Row indices per packed row: first fit, longest first (ties in input order)."""
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    rows: list[list[int]] = []
    used: list[int] = []
    for index in order:
        length = int(lengths[index])
        for r, filled in enumerate(used):
            if filled + length <= width:
                rows[r].append(index)
                used[r] += length
                break
        else:
            rows.append([index])
            used.append(length)
    return rows


def packed_feeds(feeds: Feeds, layout: PaddingLayout, lengths: np.ndarray, rows: list[list[int]], width: int) -> Feeds:
    """The packed graph's inputs for ``feeds`` (cut to their longest row): ``packed_<name>``,
    the segments (the mask's zeros stay masked), each token's position in its text, the unpack
    index, and the inputs the model's own tail reads (the mask)."""
    mask = feeds[layout.mask]
    batch, sequence = mask.shape
    segments = np.zeros((len(rows), width), dtype=np.int64)
    positions = np.zeros_like(segments)
    unpack = np.zeros((batch, sequence), dtype=np.int64)
    names = [name for name in layout.inputs if name != layout.mask]
    packed = {name: np.zeros((len(rows), width), dtype=feeds[name].dtype) for name in names}
    for r, members in enumerate(rows):
        offset = 0
        for k, i in enumerate(members):
            n = int(lengths[i])
            for name in names:
                packed[name][r, offset : offset + n] = feeds[name][i, :n]
            segments[r, offset : offset + n] = (k + 1) * (mask[i, :n] != 0)
            positions[r, offset : offset + n] = np.arange(n)
            unpack[i, :n] = r * width + offset + np.arange(n)
            offset += n
    result = dict(feeds)
    result.update({packed_name(name): array for name, array in packed.items()})
    result.update({SEGMENTS: segments, POSITIONS: positions, UNPACK: unpack})
    return result


class PackingUnavailable(LlmcError):
    """The model's graph cannot be packed: ``reason`` says why (:func:`llmc.model.packing.pack_graph`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PackingRunner(PaddedRunner):
    """``run`` of an encoder with its texts packed (mode ``pack``); ``make_packed`` gives the
    packed graph's run function (called once, when a batch first packs)."""

    def __init__(
        self, run: Run, layout: PaddingLayout, make_packed: Callable[[], Run], width: int = PACK_WIDTH,
        overhead: int = OVERHEAD_TOKENS,
    ) -> None:
        super().__init__(run, layout, "pack", overhead)
        self.buckets = True  # a batch packing would not shorten runs in length buckets
        self._make_packed, self.width = make_packed, width
        self._packed: Run | None = None
        self._lock = threading.Lock()

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        mask = self.mask_of(feeds)
        if mask is None or mask.shape[0] < 2:
            return super().run(feeds)
        lengths = real_lengths(mask)
        longest = int(lengths.max())
        width = max(self.width, longest)
        rows = plan_rows(lengths, width)
        if len(rows) >= mask.shape[0]:
            return super().run(feeds)  # nothing shares a row: buckets
        cut = self._cut(feeds, longest)
        outputs = self.packed_run(packed_feeds(cut, self.layout, lengths, rows, width))
        return self._restore(outputs, mask.shape[1])

    def packed_run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        if self._packed is None:
            with self._lock:
                if self._packed is None:
                    self._packed = self._make_packed()
        return self._packed(feeds)


def packed_session(
    model_path: str | os.PathLike, config: Any, layout: PaddingLayout, check: Callable[[], None] | None = None,
) -> Callable[[], Run]:
    """A function that builds the packed graph of the model at ``model_path`` and opens it with
    the session ``config`` (``llmc.runtime.ort.SessionConfig``); its run takes
    :func:`packed_feeds`. ``check`` runs first: the model file is read again, later than the
    artifact's load, so an artifact's files are checked again against their recorded sha256."""

    def make() -> Run:
        if check is not None:
            check()
        from llmc.model.io import load_model, ort_model_source
        from llmc.model.packing import pack_graph
        from llmc.runtime.ort import OrtRunner, create_session

        model = load_model(model_path)
        why = pack_graph(model, layout.mask, layout.inputs)
        if why is not None:
            raise PackingUnavailable(why, f"{model_path}: its graph cannot be packed ({why}); load it with padding='bucket'")
        with ort_model_source(model) as source:
            runner = OrtRunner(create_session(source, config, model))
        names = set(runner.input_names)
        return lambda feeds: runner.run({k: v for k, v in feeds.items() if k in names})

    return make
