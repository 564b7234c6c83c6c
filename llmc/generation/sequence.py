"""One sequence of continuous batching: what it asked for, what it has made, how it is told.

:class:`SequenceParams` are a request's generation settings (OpenAI's fields map onto them);
:class:`Sequence` holds one choice's state while the scheduler (``llmc.generation.scheduler``)
runs it: its prompt, new tokens, sampling generator, logprobs, stop state and the callbacks that
hand text to its caller (``on_text(piece, logprobs)``: each piece as it is decoded with the
logprobs of the tokens since the last piece; ``on_done(sequence)`` once). The next token
is chosen from the model's last-position logits as ``Runner.generate`` chooses it (greedy: the
argmax, EOS masked before ``min_new_tokens``), after the per-sequence processors: presence and
frequency penalties (OpenAI's: ``logit - count * frequency - (count > 0) * presence`` over the
tokens generated so far) and a grammar :class:`~llmc.generation.grammar.Constraint`'s allowed set.
Logprobs are the model's own distribution (log-softmax of the raw logits, before penalties,
temperature or grammar), as vLLM reports them by default.

While a :class:`HeldCallbacks` holds them (the continuous-batching scheduler's thread), the
callbacks wait and run together, in order, when it delivers them: just before the scheduler's
next model run. A server's callback hands the piece to its event loop's thread, which wakes and
takes the GIL at the next point the calling thread lets it go (any large numpy operation). Told
as each token was chosen, the event loop's work for 8 streams ran in between the scheduler's own
(a 1.7 ms gap between two 8-row decode steps of SmolLM2, 0.2 ms a stream); delivered just before
a run, it runs beside the run's native code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import numpy as np

from llmc.generation.result import GenerationResult
from llmc.generation.sampling import Sampling, choose
from llmc.generation.streamed import covering, piece, ready
from llmc.model.text import decode

MAX_TOP_LOGPROBS = 20  # OpenAI's limit
_HELD = threading.local()  # the HeldCallbacks collecting this thread's callbacks, if any


class HeldCallbacks:
    """Sequences' ``on_text``/``on_done`` calls made in a thread while it is :meth:`holding` wait
    until :meth:`deliver` (module docstring): a scheduler delivers them just before its next model
    run, whose native code lets the callbacks' receivers (an event loop) run beside it."""

    def __init__(self) -> None:
        self._calls: list[tuple[Callable[..., None], tuple[Any, ...]]] = []

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        outer = getattr(_HELD, "holder", None)
        _HELD.holder = self
        try:
            yield
        finally:
            _HELD.holder = outer

    def deliver(self) -> None:
        """Make the held calls, in order; every one runs, and the first exception one raised is
        raised after them (an interrupt stops them: the calls not made yet stay held). Calls the
        callbacks make themselves are not held."""
        calls, self._calls = self._calls, []
        failed: Optional[BaseException] = None
        outer, _HELD.holder = getattr(_HELD, "holder", None), None
        try:
            for index, (function, args) in enumerate(calls):
                try:
                    function(*args)
                except Exception as exc:  # noqa: BLE001 - the others are still told; the first is raised
                    failed = failed or exc
                except BaseException:
                    self._calls[:0] = calls[index + 1 :]
                    raise
        finally:
            _HELD.holder = outer
        if failed is not None:
            raise failed


def _call(function: Callable[..., None], *args: Any) -> None:
    holder = getattr(_HELD, "holder", None)
    if holder is None:
        function(*args)
    else:
        holder._calls.append((function, args))


@dataclasses.dataclass(frozen=True)
class SequenceParams:
    max_new_tokens: int = 16
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()
    min_new_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    constraint_factory: Optional[Callable[[], Any]] = None  # a fresh grammar Constraint per choice


@dataclasses.dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the ``top_logprobs`` most likely tokens and theirs


class Sequence:
    """One choice being generated (module docstring). Thread-safe for :meth:`cancel` only: the
    scheduler's thread owns everything else."""

    def __init__(
        self, prompt: list[int], params: SequenceParams, eos: set[int], tokenizer: Any,
        on_text: Optional[Callable[[str, list[TokenLogprob]], None]] = None,
        on_done: Optional[Callable[["Sequence"], None]] = None,
        seed_offset: int = 0,
    ) -> None:
        self.prompt, self.params, self.eos, self.tokenizer = list(prompt), params, eos, tokenizer
        self.on_text, self.on_done = on_text, on_done
        sampling = params.sampling
        self.rng = np.random.default_rng([sampling.seed, seed_offset]) if seed_offset else sampling.generator()
        self.constraint = params.constraint_factory() if params.constraint_factory is not None else None
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.reason: Optional[str] = None
        self.error: Optional[BaseException] = None  # what stopped it, when a run failed
        self.emitted = ""
        self.reported = 0  # logprobs handed to on_text so far
        self.counts: dict[int, int] = {}
        self.slot: Optional[int] = None
        self.start = 0  # the prompt's first column in its slot
        self.offset = 0  # its stored keys read as written at column position + offset (rotary inside)
        self.placed = False  # its prompt has columns in its slot
        self.done_prefill = 0  # prompt tokens whose keys and values are in the slot (or held from the prefix cache)
        self.cached = 0  # of which came from the prefix cache
        self.created = time.perf_counter()
        self.drafted = self.accepted = 0  # prompt-lookup draft tokens verified / kept (llmc.generation.alone)
        self.first_token_at: Optional[float] = None
        self.finished_at: Optional[float] = None
        self._cancelled = threading.Event()

    # --- called from any thread
    def cancel(self) -> None:
        """Stop at the next step and free the slot (a client gone)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # --- the scheduler's thread
    @property
    def finished(self) -> bool:
        return self.reason is not None

    @property
    def position(self) -> int:
        """The rotary position of the next token fed to the model (the last one chosen)."""
        return len(self.prompt) + len(self.tokens) - 1

    def choose(self, logits: np.ndarray) -> int:
        """Pick, record and report the next token from last-position ``logits`` [vocab]."""
        row = logits.astype(np.float32, copy=False)
        if self.params.logprobs:
            raw = _log_softmax(row.astype(np.float64))
        scores = self._processed(row)
        token = int(choose(scores[None, :], self.params.sampling, self.rng)[0])
        if self.params.logprobs:
            self.logprobs.append(_record(raw, token, self.params.top_logprobs))
        self._add(token)
        return token

    def _processed(self, row: np.ndarray) -> np.ndarray:
        params, scores = self.params, row
        if self.counts and (params.presence_penalty or params.frequency_penalty):
            scores = scores.copy()
            ids = np.fromiter(self.counts, dtype=np.int64)
            counts = np.fromiter(self.counts.values(), dtype=np.float32)
            scores[ids] -= counts * params.frequency_penalty + params.presence_penalty
        if len(self.tokens) < params.min_new_tokens and self.eos:
            scores = scores.copy() if scores is row else scores
            scores[[e for e in self.eos if e < scores.shape[-1]]] = -np.inf
        if self.constraint is not None:
            allowed = self.constraint.allowed()
            scores = np.where(allowed[: scores.shape[-1]], scores, -np.inf)
        return scores

    def _add(self, token: int) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.tokens.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1
        if self.constraint is not None:
            self.constraint.advance(token)
        if token in self.eos:
            self.reason = "eos"
        elif self.params.stop and self.tokenizer is not None and self._cut()[1]:
            self.reason = "stop"
        elif self.constraint is not None and self.constraint.done:
            self.reason = "eos"  # the grammar's value is complete
        elif len(self.tokens) >= self.params.max_new_tokens:
            self.reason = "length"
        self._stream()

    def text(self) -> Optional[str]:
        return self._cut()[0] if self.tokenizer is not None else None

    def _cut(self) -> tuple[str, bool]:
        text = decode(self.tokenizer, self.tokens)
        found = [text.index(s) for s in self.params.stop if s and s in text]
        return (text[: min(found)], True) if found else (text, False)

    def _stream(self) -> None:
        """Hand ``on_text`` what of the text is ready (``llmc.generation.streamed``) with the
        logprobs of the tokens it covers; once finished, the rest of the answer's logprobs even
        where no text is left. Nothing without a caller to tell or a tokenizer."""
        if self.on_text is None or self.tokenizer is None:
            return
        text = self.text() or ""
        finished = self.reason is not None
        new = piece(ready(text, self.params.stop, finished), self.emitted)
        if finished:
            kept = self.kept_logprobs()
        else:
            kept = self._covered(len(self.emitted) + len(new), text) if new else self.reported
        if new or kept > self.reported:
            self.emitted += new
            _call(self.on_text, new, self.logprobs[self.reported : kept])
            self.reported = max(self.reported, kept)

    def _covered(self, length: int, text: str) -> int:
        """Logprob records of the tokens whose text starts before character ``length``."""
        if not self.logprobs:
            return 0
        return len(self.logprobs) if length >= len(text) else covering(self.tokenizer, self.tokens, length)

    def kept_logprobs(self) -> int:
        """How many logprob records belong to the answer: those of the tokens whose text starts
        before its end (not a stop string's after it, nor an end-of-sequence token's:
        ``llmc.generation.streamed``)."""
        if not self.logprobs or self.tokenizer is None:
            return len(self.logprobs)
        return min(len(self.logprobs), covering(self.tokenizer, self.tokens, len(self.text() or "")))

    def finish(self, reason: Optional[str] = None, error: Optional[BaseException] = None) -> None:
        """Mark finished (``reason`` when not already; ``error`` when a run failed) and hand the
        sequence to ``on_done``."""
        if self.reason is None:
            self.reason = reason or "length"
            if error is None and self.reason != "cancelled":
                self._stream()  # ended by its loop, not by a token: the rest of its answer
        self.error = error
        self.finished_at = time.perf_counter()
        if self.on_done is not None:
            _call(self.on_done, self)

    def adopt(self, result: GenerationResult) -> None:
        """Take ``result`` (generated elsewhere, e.g. with drafts) as this sequence's tokens, and finish."""
        self.first_token_at = self.created + result.ttft_ms / 1000
        self.tokens = list(result.token_ids)
        self.emitted = self.text() or ""  # its stream ran there (llmc.generation.loop.Rows)
        self.drafted, self.accepted = result.drafted, result.accepted
        for token in self.tokens:
            self.counts[token] = self.counts.get(token, 0) + 1
        self.finish(result.stop_reason)

    def result(self) -> GenerationResult:
        end = self.finished_at or time.perf_counter()
        first = self.first_token_at or end
        steps = max(len(self.tokens) - 1, 0)
        reason = "length" if self.reason == "cancelled" else self.reason
        return GenerationResult(
            token_ids=list(self.tokens), text=self.text(), ttft_ms=1000 * (first - self.created),
            ms_per_token=1000 * (end - first) / steps if steps else 0.0, prompt_tokens=len(self.prompt),
            stop_reason=reason or "length", drafted=self.drafted, accepted=self.accepted,
        )


def _log_softmax(row: np.ndarray) -> np.ndarray:
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def _record(logprobs: np.ndarray, token: int, top: int) -> TokenLogprob:
    best: list[tuple[int, float]] = []
    if top:
        ids = np.argpartition(-logprobs, top - 1)[:top]
        ids = ids[np.argsort(-logprobs[ids], kind="stable")]
        best = [(int(i), float(logprobs[i])) for i in ids]
    return TokenLogprob(token, float(logprobs[token]), best)
