"""The prefill + decode loop on ONNX Runtime, the KV cache kept in ``OrtValue``s.

Each step runs through IOBinding: the ``present.*`` outputs of one step are bound as the
``past_key_values.*`` inputs of the next as the ``OrtValue``s ONNX Runtime allocated, never copied
to numpy and back (``session.run`` would copy every layer's cache out and in again each token,
which grows with the sequence). When every attention is GroupQueryAttention
(``DecoderLayout.shared_cache``, the default for CPU builds), each cache tensor is instead one buffer of the final length,
allocated at prefill and bound as both past and present: the kernel writes new keys and values
into it in place, and nothing is reallocated or copied per token. Only the logits come back to numpy, for sampling. Prompts of
different lengths are left-padded: ``attention_mask`` is 0 on the padding and ``position_ids``
count from each row's first real token, so every row's last position is a real token.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from llmc.generation.prefix import PrefixCache
from llmc.generation.result import GenerationResult
from llmc.generation.sampling import Sampling, choose
from llmc.generation.streamed import piece, ready
from llmc.model.decoder import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, DecoderLayout
from llmc.model.text import decode
from llmc.runtime.ort.errors import run_context
from llmc.runtime.ort.runner import OrtRunner


class Stepper:
    """Runs one model step (prefill or decode) through IOBinding on the session's device
    (``OrtRunner.run_bound``: OrtValue inputs are bound as they are, outputs stay OrtValues)."""

    def __init__(self, session: Any, layout: DecoderLayout, artifact: Path) -> None:
        self.runner, self.layout, self.artifact = OrtRunner(session, io_binding=True), layout, artifact
        # A shared cache's binding, kept from one step to the next while the same buffers are
        # passed back: only input_ids, attention_mask and position_ids are bound again.
        self._binding: Any = None
        self._bound_past: Optional[list[Any]] = None

    def run(
        self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: Optional[list[Any]],
        capacity: int = 0, last_only: bool = False,
    ) -> tuple[Any, list[Any]]:
        """``(logits, present)`` as OrtValues; ``past`` None is prefill (an empty cache). A shared
        cache is allocated at prefill for ``capacity`` tokens and then updated in place.
        ``last_only``: the logits of each row's last position alone where the artifact can
        (``logits_to_keep``), else of every position."""
        feeds: dict[str, Any] = {INPUT_IDS: ids, ATTENTION_MASK: mask, **self.layout.keep(last_only)}
        if self.layout.has_position_ids:
            feeds[POSITION_IDS] = positions
        hint = (
            f"at sequence length {mask.shape[1]}, beyond the model's context? pass a shorter prompt or "
            "fewer new tokens"
        )
        if past is not None and past is self._bound_past:  # the buffers bound last step: in place
            with run_context(hint, str(self.artifact)):
                binding = self.runner.run_again(self._binding, feeds, fresh=(LOGITS,))
            return binding.get_outputs()[self.runner.output_names.index(LOGITS)], past
        if past is None and self.layout.shared_cache:
            past = self._allocate(ids.shape[0], max(capacity, ids.shape[1]))
        if past is None:
            feeds.update(self.layout.empty_past(ids.shape[0]))
        else:  # the previous step's present: bound as it is, no copy
            feeds.update(zip(self.layout.past_names, past, strict=True))
        into = dict(zip(self.layout.present_names, past, strict=True)) if self.layout.shared_cache else None
        with run_context(hint, str(self.artifact)):
            self.runner.check_feeds(feeds)
            binding = self.runner.bind_and_run(feeds, into or {})
        outputs = self.runner.outputs_of(binding)
        if self.layout.shared_cache:  # present is past, updated in place: the next step re-uses the binding
            self._binding, self._bound_past = binding, past
            return outputs[LOGITS], past
        return outputs[LOGITS], [outputs[name] for name in self.layout.present_names]

    def cached_past(self, tensors: list[np.ndarray], capacity: int) -> list[Any]:
        """A prefix's cache tensors ``[1, kv, length, d]`` as the past of the next run, copied into
        ``OrtValue``s that own their memory: of ``capacity`` positions when the cache is shared
        (updated in place), else of the prefix's length."""
        from onnxruntime import OrtValue

        device, device_id = self.runner.device, self.runner.device_id
        values = []
        for tensor in tensors:
            length = capacity if self.layout.shared_cache else tensor.shape[2]
            buffer = np.zeros((1, tensor.shape[1], length, tensor.shape[3]), dtype=self.layout.kv_dtype)
            buffer[:, :, : tensor.shape[2]] = tensor
            value = OrtValue.ortvalue_from_shape_and_type(list(buffer.shape), self.layout.kv_dtype, device, device_id)
            value.update_inplace(buffer)  # a copy: ortvalue_from_numpy would borrow the array's memory
            values.append(value)
        return values

    def _allocate(self, batch: int, capacity: int) -> list[Any]:
        """One [batch, kv_heads, capacity, head_size] buffer per cache tensor, on the session's
        device (never read beyond the positions written: GroupQueryAttention attends to the mask's length)."""
        from onnxruntime import OrtValue

        shape = [batch, self.layout.kv_heads, capacity, self.layout.head_size]
        device, device_id = self.runner.device, self.runner.device_id
        return [
            OrtValue.ortvalue_from_shape_and_type(shape, self.layout.kv_dtype, device, device_id)
            for _ in self.layout.past_names
        ]


@dataclasses.dataclass
class Request:
    """One batch to generate: token id prompts and how to continue them."""

    prompts: list[list[int]]
    max_new_tokens: int
    sampling: Sampling
    eos: set[int]
    pad: int
    stop: tuple[str, ...] = ()
    tokenizer: Any = None
    stream: Optional[Callable[[str], None]] = None
    min_new_tokens: int = 0  # EOS is masked until then
    prefix: Optional[PrefixCache] = None  # one-prompt requests reuse and feed it


class Rows:
    """Per-row new tokens, stop reasons and (for ``stream``) the text already emitted."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.tokens: list[list[int]] = [[] for _ in request.prompts]
        self.reasons: list[Optional[str]] = [None for _ in request.prompts]
        self.emitted = ""

    @property
    def finished(self) -> np.ndarray:
        return np.array([reason is not None for reason in self.reasons])

    def add(self, chosen: np.ndarray) -> None:
        for row, token in enumerate(chosen.tolist()):
            if self.reasons[row] is not None:
                continue
            self.tokens[row].append(token)
            if token in self.request.eos:
                self.reasons[row] = "eos"
            elif self.request.stop and self._cut(row)[1]:
                self.reasons[row] = "stop"
        if self.request.stream is not None:
            self._stream()

    def results(self, ttft: float, per_token: float, drafted: int = 0, accepted: int = 0) -> list[GenerationResult]:
        """Every row's :class:`GenerationResult`: ``ttft`` in seconds, ``per_token`` in ms (a
        stream gets the rest of its text first)."""
        if self.request.stream is not None:
            self._stream(finished=True)
        return [
            GenerationResult(
                token_ids=self.tokens[row], text=self.text(row), ttft_ms=1000 * ttft, ms_per_token=per_token,
                prompt_tokens=len(prompt), stop_reason=self.reasons[row] or "length", drafted=drafted,
                accepted=accepted,
            )
            for row, prompt in enumerate(self.request.prompts)
        ]

    def text(self, row: int) -> Optional[str]:
        return self._cut(row)[0] if self.request.tokenizer is not None else None

    def _cut(self, row: int) -> tuple[str, bool]:
        """Row's text, cut before the first stop string; whether one was found."""
        text = decode(self.request.tokenizer, self.tokens[row])
        found = [text.index(s) for s in self.request.stop if s and s in text]
        return (text[: min(found)], True) if found else (text, False)

    def _stream(self, finished: bool = False) -> None:
        """Hand ``stream`` what of row 0's text is ready (``llmc.generation.streamed``); ``finished``:
        generation has ended (else row 0's stop reason says)."""
        text = self.text(0) or ""
        new = piece(ready(text, self.request.stop, finished or self.reasons[0] is not None), self.emitted)
        if new:
            self.request.stream(new)
            self.emitted += new


def left_pad(prompts: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)`` [batch, longest], the padding on the left."""
    longest = max(len(p) for p in prompts)
    ids = np.full((len(prompts), longest), pad, dtype=np.int64)
    mask = np.zeros((len(prompts), longest), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, -len(prompt) :] = prompt
            mask[row, -len(prompt) :] = 1
    return ids, mask


def positions_of(mask: np.ndarray) -> np.ndarray:
    """Position ids counted from each row's first real token (0 on the padding)."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)


def last_logits(logits: Any, request: Request, made: int) -> np.ndarray:
    """The last position's logits, EOS masked while fewer than ``min_new_tokens`` were made."""
    last = logits.numpy()[:, -1, :]
    if made < request.min_new_tokens and request.eos:
        last = last.copy()
        last[:, [e for e in request.eos if e < last.shape[-1]]] = -np.inf
    return last


def prefill(stepper: Stepper, request: Request) -> tuple[Any, list[Any], np.ndarray, np.ndarray]:
    """``(logits, cache, mask, positions)`` after the prompts; a one-prompt request computes only
    what ``request.prefix`` does not hold, then adds its prompt's blocks to it."""
    ids, mask = left_pad(request.prompts, request.pad)
    positions = positions_of(mask)
    capacity = ids.shape[1] + request.max_new_tokens
    # a LongRoPE artifact's cached keys are rotated by the factors of their request's length, which
    # another prompt's length may not share (llmc.model.decoder.RECOMPUTE_CACHE_AFTER): no reuse
    reusable = len(request.prompts) == 1 and stepper.layout.recompute_cache_after is None
    cache = request.prefix if reusable else None
    hit = cache.acquire(request.prompts[0]) if cache is not None else None
    try:
        if hit is not None and hit.length:
            past = stepper.cached_past(hit.tensors, capacity)
            logits, past = stepper.run(ids[:, hit.length :], mask, positions[:, hit.length :], past, last_only=True)
        else:
            logits, past = stepper.run(ids, mask, positions, None, capacity=capacity, last_only=True)
        if cache is not None and not cache.holds(request.prompts[0]):  # copy the cache out only when new
            cache.insert(request.prompts[0], [value.numpy()[:, :, : ids.shape[1]] for value in past])
    finally:
        if hit is not None:
            cache.release(hit)
    return logits, past, mask, positions


def run_generation(stepper: Stepper, request: Request) -> list[GenerationResult]:
    """Prefill every prompt at once, then decode one token per step until every row stops."""
    rng = request.sampling.generator()
    rows = Rows(request)
    start = time.perf_counter()
    logits, past, mask, positions = prefill(stepper, request)
    chosen = choose(last_logits(logits, request, 0), request.sampling, rng)
    ttft = time.perf_counter() - start
    decoding, steps = 0.0, 0
    recompute = stepper.layout.recompute_cache_after
    sequence = left_pad(request.prompts, request.pad)[0] if recompute is not None else None
    while True:
        rows.add(chosen)
        if rows.finished.all() or steps + 1 >= request.max_new_tokens:
            break
        chosen = np.where(rows.finished, request.pad, chosen).astype(np.int64)
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
        positions = positions[:, -1:] + 1
        began = time.perf_counter()
        if sequence is not None:
            sequence = np.concatenate([sequence, chosen[:, None]], axis=1)
        if recompute is not None and mask.shape[1] == recompute + 1:
            # the cache was rotated for a shorter sequence: prefill everything again, as
            # transformers does (llmc.model.decoder.RECOMPUTE_CACHE_AFTER)
            capacity = mask.shape[1] + request.max_new_tokens - steps
            logits, past = stepper.run(sequence, mask, positions_of(mask), None, capacity=capacity, last_only=True)
        else:
            logits, past = stepper.run(chosen[:, None], mask, positions, past, last_only=True)
        chosen = choose(last_logits(logits, request, steps + 1), request.sampling, rng)
        decoding += time.perf_counter() - began
        steps += 1
    return rows.results(ttft, 1000 * decoding / steps if steps else 0.0)
