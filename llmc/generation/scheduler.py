"""Continuous batching: every decode step runs all active sequences together; new ones join between.

A :class:`Scheduler` owns a decoder's session and a :class:`~llmc.generation.slots.SlotCache`.
Each iteration (:meth:`Scheduler.step`):

1. drops cancelled sequences and frees their slots at once;
2. admits waiting sequences into free slots (first come, first served), each holding its
   prompt's longest cached prefix (``llmc.generation.prefix``), copied in when it is placed;
3. prefills at most ``chunk`` prompt tokens in all: new prompts that fit go together in one run
   (a burst of requests is one prefill), longer ones in chunks, a run of their slot alone, so a
   long prompt is spread over iterations and never stalls the decoders for more than a chunk; a
   prompt done picks its first token and joins the decoders (its full blocks go to the prefix
   cache);
4. one decode step of every decoding sequence, one token each; finished ones free their slot.

``submit`` is thread-safe; a background thread (:meth:`start`) runs iterations while there is
work. Greedy sequences give the tokens ``Runner.generate`` gives for the same prompt alone.
Decoders whose attention is not every layer ONNX Runtime's GroupQueryAttention with the padding
from ``attention_mask``, or whose cache is recomputed mid-sequence (LongRoPE), cannot share a
timeline: :func:`supports` says so and callers generate one request at a time instead.
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from llmc.errors import LlmcError
from llmc.generation.prefix import PrefixCache
from llmc.generation.rerotate import rotation_of
from llmc.generation.sequence import HeldCallbacks, Sequence
from llmc.generation.slots import SlotCache
from llmc.model.decoder import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, DecoderLayout
from llmc.model.files import MODEL_FILE
from llmc.runtime.ort.errors import run_context
from llmc.runtime.ort.runner import OrtRunner


def _graph(model: Path) -> Any:
    import onnx

    return onnx.load(str(model), load_external_data=False)


def _takes_query_seqlens(proto: Any) -> bool:
    """Every GroupQueryAttention of the model has its ``query_seqlens`` input (llmc.passes.fusion.gqa)."""
    from llmc.passes.fusion.gqa import QUERY_SEQLENS

    nodes = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    return bool(nodes) and all(len(n.input) > QUERY_SEQLENS and n.input[QUERY_SEQLENS] for n in nodes)


def supports(layout: DecoderLayout) -> Optional[str]:
    """None when ``layout`` can run continuous batching, else why not (one phrase)."""
    if not (layout.shared_cache and layout.masks_padding):
        return "its attention is not GroupQueryAttention taking the padding from attention_mask (rebuild it)"
    if layout.recompute_cache_after is not None:
        return "its cache is recomputed past a length (LongRoPE)"
    if layout.kv_heads is None or layout.head_size is None:
        return "its cache's heads or head size are not fixed"
    return None


class Scheduler:
    """Continuous batching of one decoder (module docstring). ``capacity``: KV columns per slot,
    the longest prompt + new tokens a sequence may have; ``chunk``: prompt tokens prefilled per
    iteration; ``pad``: the token id fed to idle rows."""

    def __init__(
        self, session: Any, layout: DecoderLayout, artifact: Path, *, slots: int, capacity: int,
        chunk: int = 256, pad: int = 0, prefix: Optional[PrefixCache] = None,
    ) -> None:
        why = supports(layout)
        if why is not None:
            raise LlmcError(f"{artifact}: continuous batching needs a shared KV cache: {why}")
        self.runner = OrtRunner(session, io_binding=True)
        self.layout, self.artifact, self.chunk, self.pad, self.prefix = layout, artifact, max(chunk, 1), pad, prefix
        self.cache = SlotCache(len(layout.past_names), slots, layout.kv_heads, capacity, layout.head_size,
                               layout.kv_dtype)
        # RoPE inside the kernel rotates by column: keys are turned when a sequence's columns move
        # (llmc.generation.rerotate); None when the artifact rotates by position_ids.
        model = Path(artifact) / MODEL_FILE
        proto = _graph(model) if model.is_file() else None  # read once, without the weights
        self.rotation = rotation_of(model, capacity, proto) if proto is not None else None
        # Several prompts in one prefill run need GroupQueryAttention's query_seqlens (builds
        # before it had none): without it, new prompts are prefilled one a run.
        self.group_limit = slots if proto is not None and _takes_query_seqlens(proto) else 1
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.prefilling: list[Sequence] = []
        self.decoding: list[Sequence] = []
        self._inbox: list[Sequence] = []
        self._wake = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._bindings: dict[tuple[int, int], Any] = {}
        self._hits: dict[int, Any] = {}  # admitted sequences' prefix hits, held until copied in
        self._held = HeldCallbacks()  # the sequences' callbacks, made just before the next run
        self.stats = {"decode_steps": 0, "decode_rows": 0, "tokens": 0, "prefill_tokens": 0, "prefill_runs": 0,
                      "cached_tokens": 0, "compactions": 0}
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    # --- any thread
    def submit(self, sequences: list[Sequence]) -> None:
        """Queue ``sequences`` (each prompt + max new tokens within ``capacity``: checked here)."""
        for sequence in sequences:
            need = len(sequence.prompt) + sequence.params.max_new_tokens
            if need > self.cache.capacity:
                raise LlmcError(
                    f"the prompt ({len(sequence.prompt)} tokens) and max_tokens ({sequence.params.max_new_tokens}) "
                    f"need {need} KV positions; a slot holds {self.cache.capacity}: shorten the prompt or max_tokens"
                )
        with self._wake:
            if self._closed:
                raise LlmcError("the scheduler has stopped")
            self._inbox.extend(sequences)
            self._wake.notify()

    def warm_up(self) -> None:
        """Run a prefill of every slot and decode steps of 1 to ``slots`` rows once, so that ONNX
        Runtime has planned those shapes before the first request (its first run of a shape is
        several times slower): the dummy in slot i stops after ``slots - i + 1`` tokens."""
        from llmc.generation.sequence import SequenceParams

        slots = self.cache.slots
        dummies = [Sequence([self.pad] * 4, SequenceParams(max_new_tokens=slots - i + 1, min_new_tokens=slots - i + 1),
                            set(), None) for i in range(slots)]
        prefix, self.prefix = self.prefix, None  # nothing of the dummies cached or counted
        try:
            self.submit(dummies)
            self.run_until_idle()
        finally:
            self.prefix = prefix
        self.stats.update(dict.fromkeys(self.stats, 0))
        self._recent.clear()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="llmc-scheduler", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def slots_in_use(self) -> int:
        return self.cache.slots - len(self.cache.free)

    @property
    def queued(self) -> int:
        """Sequences waiting for a slot."""
        with self._wake:
            return len(self._inbox) + len(self.waiting)

    def tokens_per_second(self, window: float = 10.0) -> float:
        """New tokens per second over the last ``window`` seconds."""
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= window]
        return sum(n for _, n in recent) / window

    # --- the scheduler's thread
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._inbox and not self._busy():
                    self._wake.wait()
                if self._closed:
                    break
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - a bug outside one run: end every request with it, go on
                for sequence in [*self.waiting, *self.prefilling, *self.decoding]:
                    if sequence in self.waiting:
                        self.waiting.remove(sequence)
                        sequence.finish("error", exc)
                    else:
                        self._release(sequence, "error", exc)
        self._deliver()
        for sequence in [*self.waiting, *self.prefilling, *self.decoding, *self._inbox]:
            sequence.finish("cancelled", LlmcError("the server is shutting down"))

    def _deliver(self) -> None:
        """Make the held callbacks; one that raises is a bug in its receiver, not in a run: it
        keeps its traceback on stderr, and the scheduler and the sequence go on."""
        try:
            self._held.deliver()
        except Exception:  # noqa: BLE001
            import traceback

            traceback.print_exc()

    def _busy(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)

    def run_until_idle(self) -> None:
        """Iterate in the calling thread until every submitted sequence has finished (no
        background thread: tests and one-process batch generation)."""
        while True:
            with self._wake:
                if not self._inbox and not self._busy():
                    return
            self.step()

    def step(self) -> None:
        """One iteration (module docstring). The sequences' callbacks are held and made just
        before the next model run, or when the scheduler has nothing left to run
        (``llmc.generation.sequence.HeldCallbacks``)."""
        with self._wake:
            self.waiting.extend(self._inbox)
            self._inbox.clear()
        try:
            with self._held.holding():
                self._drop_cancelled()
                self._admit()
                if self.prefilling:
                    self._prefills()
                if self.decoding:
                    self._guarded(list(self.decoding), self._decode)
        except BaseException:
            self._deliver()  # what the step told before it failed goes first
            raise
        if not self._busy():
            self._deliver()  # nothing left to run: the held callbacks go now

    def _guarded(self, sequences: list[Sequence], run: Any) -> int:
        """``run()``; a failure finishes ``sequences`` with the error (a bug keeps its traceback
        in the error), the others go on."""
        try:
            return run()
        except Exception as exc:  # noqa: BLE001 - handed to each request as its answer
            for sequence in sequences:
                if sequence.finished and sequence.slot is None:
                    continue  # released earlier in this run (it ended): its answer stands
                self._release(sequence, "error", exc)
            return self.chunk

    def _drop_cancelled(self) -> None:
        for sequence in [s for s in self.waiting if s.cancelled]:
            self.waiting.remove(sequence)
            sequence.finish("cancelled")
        for sequence in [s for s in (*self.prefilling, *self.decoding) if s.cancelled]:
            self._release(sequence, "cancelled")

    def _release(self, sequence: Sequence, reason: Optional[str] = None, error: Optional[BaseException] = None) -> None:
        for group in (self.prefilling, self.decoding):
            if sequence in group:
                group.remove(sequence)
        hit = self._hits.pop(id(sequence), None)
        if hit is not None:
            self.prefix.release(hit)
        if sequence.slot is not None:
            self.cache.give_back(sequence.slot)
            sequence.slot = None
        sequence.finish(reason, error)

    def _admit(self) -> None:
        """Waiting sequences into free slots, each holding its prompt's cached prefix (if any)."""
        while self.waiting and self.cache.free:
            sequence = self.waiting.popleft()
            sequence.slot = self.cache.take()
            if self.prefix is not None:
                hit = self.prefix.acquire(sequence.prompt)
                if hit.length:
                    self._hits[id(sequence)] = hit
                    sequence.done_prefill = sequence.cached = hit.length
                    self.stats["cached_tokens"] += hit.length
                else:
                    self.prefix.release(hit)
            self.prefilling.append(sequence)

    def _prefills(self) -> None:
        """This iteration's prefill: new short prompts together, then chunks of long ones."""
        budget = self.chunk
        group = self._group([s for s in self.prefilling if not s.placed], budget)
        if group:
            budget -= self._guarded(group, lambda: self._prefill_together(group))
        for sequence in [s for s in self.prefilling if s not in group]:
            if budget <= 0:
                break
            budget -= self._guarded([sequence], lambda s=sequence, b=budget: self._prefill(s, b))

    def _group(self, fresh: list[Sequence], budget: int) -> list[Sequence]:
        """New sequences whose remaining prompts fit ``budget`` together, in adjacent slots (only
        free slots between them): the first such run, by slot."""
        short = sorted((s for s in fresh if len(s.prompt) - s.done_prefill <= budget), key=lambda s: s.slot)
        group: list[Sequence] = []
        for sequence in short:
            between = range(group[-1].slot + 1, sequence.slot) if group else range(0)
            used = sum(len(s.prompt) - s.done_prefill for s in group)
            if group and (len(group) >= self.group_limit or used + len(sequence.prompt) - sequence.done_prefill > budget
                          or any(slot not in self.cache.free for slot in between)):
                break
            group.append(sequence)
        return group

    def _prefill_together(self, group: list[Sequence]) -> int:
        """One run prefilling every prompt of ``group`` (slots ``[lo, hi)``): each left-padded to
        the longest remainder ``S`` and written to ``[T - r, T)``, a cached prefix copied below
        ``T - S``; free slots in between run as idle rows. The prompt tokens run."""
        lo, hi = group[0].slot, group[-1].slot + 1
        rest = [len(s.prompt) - s.done_prefill for s in group]
        longest = max(rest)
        end = self.cache.ensure(longest + max(s.done_prefill for s in group))
        ids = np.full((hi - lo, longest), self.pad, dtype=np.int64)
        positions = np.zeros((hi - lo, longest), dtype=np.int64)
        for sequence, count in zip(group, rest, strict=True):
            row, cached = sequence.slot - lo, sequence.done_prefill
            self._fill(sequence, np.arange(end - longest - cached, end - longest), end - count - cached)
            ids[row, longest - count :] = sequence.prompt[cached:]
            positions[row, longest - count :] = np.arange(cached, len(sequence.prompt))
            self.cache.mask[sequence.slot, end - count : end] = 1
            self.cache.owned[sequence.slot, end - count : end] = True
            sequence.placed = True
        mask = np.ascontiguousarray(self.cache.mask[lo:hi, :end])
        logits = self._run(ids, mask, positions, lo, hi, fresh_binding=True)
        self.stats["prefill_tokens"] += sum(rest)
        self.stats["prefill_runs"] += 1
        for sequence in group:
            sequence.done_prefill = len(sequence.prompt)
            self._prefilled(sequence, logits[sequence.slot - lo, -1])
        return sum(rest)

    def _fill(self, sequence: Sequence, columns: np.ndarray, offset: int) -> None:
        """Copy ``sequence``'s cached prefix (if any) to ``columns`` of its slot, its keys turned
        to read as written at ``position + offset`` (cached ones read as written from column 0)."""
        hit = self._hits.pop(id(sequence), None)
        sequence.offset = 0
        if hit is not None:
            try:
                self.cache.fill(sequence.slot, columns, hit.tensors)
            finally:
                self.prefix.release(hit)
        self._align(sequence, offset)

    def _prefill(self, sequence: Sequence, budget: int) -> int:
        """Prefill up to ``budget`` more of a long prompt, alone in its slot; the tokens run."""
        slot = sequence.slot
        if not sequence.placed:
            sequence.start = self.cache.place(slot, len(sequence.prompt))
            self._fill(sequence, np.arange(sequence.start, sequence.start + sequence.done_prefill), sequence.start)
            sequence.placed = True
        self._align(sequence, sequence.start)  # the prompt's columns may have moved (compaction)
        begin = sequence.done_prefill
        end = min(len(sequence.prompt), begin + budget)
        width = sequence.start + end
        mask = self.cache.mask[slot : slot + 1, :width].copy()
        mask[0, sequence.start + begin : width] = 1
        ids = np.asarray([sequence.prompt[begin:end]], dtype=np.int64)
        positions = np.arange(begin, end, dtype=np.int64)[None, :]
        logits = self._run(ids, mask, positions, slot, slot + 1, fresh_binding=True)
        self.cache.mask[slot, sequence.start + begin : width] = 1
        sequence.done_prefill = end
        self.stats["prefill_tokens"] += end - begin
        self.stats["prefill_runs"] += 1
        if end == len(sequence.prompt):
            self._prefilled(sequence, logits[0, -1])
        return end - begin

    def _prefilled(self, sequence: Sequence, logits: np.ndarray) -> None:
        """A prompt done: its blocks to the prefix cache, its first token, then it decodes."""
        self.prefilling.remove(sequence)
        if self.prefix is not None and not self.prefix.holds(sequence.prompt):
            tensors = self.cache.read(sequence.slot)
            if self.rotation is not None:  # kept as if written from column 0
                for keys in tensors[0::2]:
                    self.rotation.turn(keys, -sequence.offset)
            self.prefix.insert(sequence.prompt, tensors)
        sequence.choose(logits)
        self._count(1)
        if sequence.finished:
            self._release(sequence)
        else:
            self.decoding.append(sequence)

    def _decode(self) -> int:
        if not self.cache.room() or self.cache.sparse():
            shifts = self.cache.compact()
            for sequence in self.prefilling:  # their prompts' columns moved left
                sequence.start -= shifts.get(sequence.slot, 0)
            self.stats["compactions"] += 1
        rows = list(self.decoding)
        hi = max(s.slot for s in rows) + 1
        column = self.cache.length
        ids = np.full((hi, 1), self.pad, dtype=np.int64)
        positions = np.zeros((hi, 1), dtype=np.int64)
        for sequence in rows:
            self._align(sequence, column - sequence.position)
            ids[sequence.slot, 0] = sequence.tokens[-1]
            positions[sequence.slot, 0] = sequence.position
            self.cache.mask[sequence.slot, column] = 1
            self.cache.owned[sequence.slot, column] = True
        mask = np.ascontiguousarray(self.cache.mask[:hi, : column + 1])
        logits = self._run(ids, mask, positions, 0, hi)
        self.cache.length = column + 1
        self.stats["decode_steps"] += 1
        self.stats["decode_rows"] += len(rows)
        for sequence in rows:
            sequence.choose(logits[sequence.slot, -1])
            if sequence.finished:
                self._release(sequence)
        self._count(len(rows))
        return len(rows)

    def _align(self, sequence: Sequence, offset: int) -> None:
        """Make ``sequence``'s stored keys read as written at column ``position + offset``, the
        columns its next tokens go to (module llmc.generation.rerotate; nothing to do when the
        artifact rotates by position_ids)."""
        if self.rotation is not None and offset != sequence.offset:
            columns = np.flatnonzero(self.cache.mask[sequence.slot])
            if columns.size:
                for keys in self.cache.keys(sequence.slot):
                    block = keys[:, columns]
                    self.rotation.turn(block, offset - sequence.offset)
                    keys[:, columns] = block
        sequence.offset = offset

    def _count(self, tokens: int) -> None:
        now = time.perf_counter()
        self.stats["tokens"] += tokens
        self._recent.append((now, tokens))
        while self._recent and now - self._recent[0][0] > 60:
            self._recent.popleft()

    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, lo: int, hi: int,
             fresh_binding: bool = False) -> np.ndarray:
        """Logits [rows, sequence or 1, vocab] of one run over slots ``[lo, hi)``, their caches bound
        as past and present (updated in place)."""
        # every run reads each row's last position only (logits_to_keep 1 where the artifact has it)
        feeds: dict[str, Any] = {INPUT_IDS: ids, ATTENTION_MASK: mask, **self.layout.keep(True)}
        if self.layout.has_position_ids:
            feeds[POSITION_IDS] = positions
        hint = f"at {mask.shape[1]} KV positions; pass a shorter prompt or fewer new tokens"
        binding = None if fresh_binding else self._bindings.get((lo, hi))
        self._deliver()  # the last step's pieces, handled by their receivers while this run computes
        with run_context(hint, str(self.artifact)):
            if binding is not None:
                binding = self.runner.run_again(binding, feeds, fresh=(LOGITS,))
            else:
                views = self.cache.views(lo, hi)
                feeds.update(zip(self.layout.past_names, views, strict=True))
                binding = self.runner.bind_and_run(feeds, dict(zip(self.layout.present_names, views, strict=True)))
                if not fresh_binding:
                    self._bindings[(lo, hi)] = binding
        return binding.get_outputs()[self.runner.output_names.index(LOGITS)].numpy()
