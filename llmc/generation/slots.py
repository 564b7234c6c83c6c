"""The KV cache of continuous batching: one preallocated buffer per cache tensor, a slot a sequence.

Every cache tensor is one numpy buffer ``[slots, kv_heads, capacity, head_size]`` bound to ONNX
Runtime's GroupQueryAttention as past and present (``DecoderLayout.shared_cache``): the kernel
writes new keys and values in place. llmc's GroupQueryAttention (``llmc.passes.fusion.gqa``) takes
``total_sequence_length`` from ``attention_mask``'s width and the padding from its zeros, and
writes a step's ``S`` new tokens at columns ``[T - S, T)`` of every row it runs. So all slots
share one timeline of ``T`` columns, and each slot's row of the mask says which columns are its
sequence's: a sequence may own any columns (gaps are zeros in its mask, attended to by nobody),
and its rotary positions come from ``position_ids``, not from the columns.

* A decode step runs the slots ``[0, hi)`` together, one new column ``T`` for all (slots without
  a decoding sequence write a column nobody owns); sequences take the lowest free slot, so ``hi``
  stays small.
* New sequences whose prompts fit one iteration's budget are prefilled together, one run over
  their (adjacent) slots: each prompt left-padded to the longest ``S``, its tokens written to
  ``[T - len, T)`` and a cached prefix of it copied to just below ``T - S`` (the padding's columns
  between belong to nobody). A longer prompt is placed at ``[T - P, T)`` of its slot and
  prefilled in chunks by runs of that slot alone (``[b, b + 1)``, mask width at the chunk's end).
* When the timeline reaches ``capacity``, or grows past twice the longest sequence (every row's
  attention reads all ``T`` columns, owned or not), every slot's owned columns are packed to the
  right end (:meth:`SlotCache.compact`), order kept: what each sequence attends to does not change.

Why our own: ONNX Runtime and onnxruntime-genai keep one batch's cache per generator and have no
scheduler that lets sequences join and leave a running batch on CPU; vLLM's paged cache lives
in its own GPU kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class SlotCache:
    """``slots`` sequences' KV cache of ``capacity`` columns each (``tensors`` buffers)."""

    def __init__(self, tensors: int, slots: int, kv_heads: int, capacity: int, head_size: int, dtype: Any) -> None:
        if slots < 1 or capacity < 2:
            raise ValueError("slots must be >= 1 and capacity >= 2")
        self.slots, self.capacity = slots, capacity
        self.buffers = [np.zeros((slots, kv_heads, capacity, head_size), dtype=dtype) for _ in range(tensors)]
        self.mask = np.zeros((slots, capacity), dtype=np.int64)  # columns a slot's sequence attends to
        self.owned = np.zeros((slots, capacity), dtype=bool)  # ... and those reserved for its prompt
        self.length = 0  # T: columns of the timeline in use
        self.free = list(range(slots))
        self._views: dict[tuple[int, int], list[Any]] = {}

    @property
    def bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    def take(self) -> int:
        """The lowest free slot (the caller checked one is free)."""
        self.free.sort()
        return self.free.pop(0)

    def give_back(self, slot: int) -> None:
        self.mask[slot] = 0
        self.owned[slot] = False
        self.free.append(slot)
        if len(self.free) == self.slots:
            self.length = 0  # nobody left: the timeline starts again

    def views(self, lo: int, hi: int) -> list[Any]:
        """``OrtValue``s over slots ``[lo, hi)`` of every buffer (borrowing their memory: ONNX
        Runtime reads and writes the buffers themselves)."""
        key = (lo, hi)
        if key not in self._views:
            from onnxruntime import OrtValue

            self._views[key] = [OrtValue.ortvalue_from_numpy(b[lo:hi]) for b in self.buffers]
        return self._views[key]

    def ensure(self, length: int) -> int:
        """Grow the timeline to at least ``length`` columns (other slots do not own the new
        ones); its length."""
        if length > self.capacity:
            raise ValueError(f"{length} columns do not fit {self.capacity}")
        self.length = max(self.length, length)
        return self.length

    def place(self, slot: int, count: int) -> int:
        """Reserve ``count`` columns ending at the timeline's end for ``slot``'s prompt; the first
        column. The timeline grows to ``count`` if shorter."""
        end = self.ensure(count)
        self.owned[slot, end - count : end] = True
        return end - count

    def fill(self, slot: int, columns: np.ndarray, tensors: list[np.ndarray]) -> None:
        """Copy cached ``[1, kv, n, d]`` tensors (a prefix's keys and values) to ``slot``'s
        ``columns`` (n of them), owned and attended to from now on."""
        for buffer, tensor in zip(self.buffers, tensors, strict=True):
            buffer[slot][:, columns] = tensor[0]
        self.mask[slot, columns] = 1
        self.owned[slot, columns] = True

    def read(self, slot: int) -> list[np.ndarray]:
        """What ``slot`` attends to, in column order, as ``[1, kv, n, d]`` copies."""
        columns = np.flatnonzero(self.mask[slot])
        return [buffer[slot][None, :, columns] for buffer in self.buffers]

    def keys(self, slot: int) -> list[np.ndarray]:
        """``slot``'s key buffers ``[kv, capacity, d]`` (views; every other cache tensor is a key)."""
        return [buffer[slot] for buffer in self.buffers[0::2]]

    def room(self) -> bool:
        """A decode step can write column ``T`` (else :meth:`compact` first)."""
        return self.length < self.capacity

    def sparse(self, slack: int = 32) -> bool:
        """The timeline is over twice (plus ``slack``) the longest sequence's columns: every row's
        attention reads mostly columns nobody owns, and :meth:`compact` pays for itself."""
        return self.length > 2 * int(self.owned[:, : self.length].sum(axis=1).max()) + slack  # owned < T

    def compact(self) -> dict[int, int]:
        """Pack every slot's owned columns to the right end of a timeline as long as the longest;
        returns each slot's shift to the left (to move its recorded columns by)."""
        counts = self.owned.sum(axis=1)
        longest = int(counts.max()) if counts.size else 0
        shifts = {}
        for slot in range(self.slots):
            columns = np.flatnonzero(self.owned[slot])
            if not columns.size:
                continue
            target = np.arange(longest - columns.size, longest)
            for buffer in self.buffers:
                buffer[slot][:, target] = buffer[slot][:, columns]
            mask = self.mask[slot, columns].copy()
            self.mask[slot] = 0
            self.owned[slot] = False
            self.mask[slot, target] = mask
            self.owned[slot, target] = True
            shifts[slot] = int(columns[0] - target[0])
        self.length = longest
        return shifts
