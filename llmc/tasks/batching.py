"""Running many encodings in batches of similar length.

The encodings are sorted by token count and cut into batches of up to ``batch_size``; each batch
is padded only to its own longest row (right padding, mask 0), run, and its rows go back to their
input positions. A row's per-token outputs are cut to its own length, so what a text gets does not
depend on what it was batched with (up to float rounding). The runner below may skip padding
again (``llmc.runtime.padding``): batching by length is on top of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llmc.errors import LlmcError

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
Row = dict[str, np.ndarray]


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices of the rows, sorted by length (stable), in batches of up to ``batch_size``."""
    if batch_size < 1:
        raise LlmcError(f"batch_size must be at least 1, not {batch_size}")
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def feeds(encodings: Sequence[Any], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the model takes it) of the
    encodings, right-padded with 0 to the longest."""
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        mask[row, :n] = 1
        types[row, :n] = encoding.type_ids
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    missing = [name for name in input_names if name not in arrays]
    if missing:
        raise LlmcError(
            f"the model takes {', '.join(missing)}, which a task model does not (it takes input_ids, "
            "attention_mask and token_type_ids); re-export it with `llmc export`"
        )
    return {name: arrays[name] for name in input_names}


def run_batched(
    run: Run, encodings: Sequence[Any], input_names: Sequence[str], batch_size: int, *, per_token: bool
) -> list[Row]:
    """Each encoding's outputs ({name: array without the batch axis}), in input order; with
    ``per_token`` the outputs' sequence axis (axis 1) is cut to the encoding's length."""
    results: list[Row | None] = [None] * len(encodings)
    lengths = [len(e.ids) for e in encodings]
    for rows in length_batches(lengths, batch_size):
        outputs = run(feeds([encodings[i] for i in rows], input_names))
        for position, index in enumerate(rows):
            results[index] = {
                name: array[position, : lengths[index]] if per_token else array[position]
                for name, array in outputs.items()
            }
    return results  # type: ignore[return-value]
