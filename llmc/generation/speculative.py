"""Prompt-lookup speculative decoding: drafts copied from the prompt and the text so far, checked
by the model in one multi-token step (``generate(..., speculative="ngram")``,
``llmc generate --speculative ngram``).

Answers that quote, extract or repeat a given passage copy long runs of their prompt. The drafter
(:class:`Drafter`, as llama.cpp's ``--lookup`` and transformers' ``prompt_lookup_num_tokens``)
matches the last ``n`` tokens (n = 3, then 2, then 1: ``MAX_NGRAM``, ``MIN_NGRAM``) against the
earlier tokens of prompt + generated text, the most recent occurrence first, and drafts the
tokens that followed it (a continuation that runs into the end goes on copying its own draft, so
a repeating text drafts its period). The verify step feeds ``[last chosen token, d1 .. dk]`` at positions ``p .. p+k``:
the greedy pick at each position is the model's own next token there, so the longest prefix of
drafts equal to those picks is accepted, plus the pick after it. Every step makes at least one
token, and exactly the tokens plain greedy decoding makes (EOS masking before ``min_new_tokens``
is applied per position; EOS, stop strings and ``max_new_tokens`` end it on the very token plain
decoding ends on, later tokens of the step are dropped). Rejected drafts roll back by not
extending ``attention_mask`` over them: GroupQueryAttention's shared buffer attends to the mask's
length, and the next step overwrites those positions. Drafts are cut so that nothing is fed past
the position plain decoding's last step feeds, so the cache allocated at prefill (prompt +
``max_new_tokens``) holds them.

When it pays (:class:`Policy`): on SmolLM2-135M int4 (llmc's defaults, 2 threads, 256 cached
tokens) a step of ``w`` tokens took 1.96x a one-token step at w = 2, 2.27x at 3, 3.05x at 9,
4.07x at 17 and 5.16x at 25 (:func:`step_cost` fits ``1.82 + 0.14 (w - 1)``; ONNX Runtime's
profile puts the jump in MatMulNBits, whose accuracy-level-0 kernel for more than one row costs
2.5x its one-row kernel). So a verify step costs about two plain steps and each further draft
token about a seventh of one: drafts must be long and likely. How likely depends on the match's
``run``, the tokens before the end that agree with the tokens before the copied text (counted
back past n, up to ``MAX_RUN``). Over greedy SmolLM2 answers to copy and free-text prompts
(sentences 1000-1300 of the benchmark corpus, not the benchmark's), a run of 1 was followed by no
accepted draft 78% of the time; 2: 47%; 3: 36%; 4-7: 11-23%; 8 or more: 2-4%, with a median of
18 accepted after those. Choosing the draft length that maximizes expected tokens per cost on
those answers gave 0 for a run of 1 or 2 (no draft pays for its verify step), about 2 per
matching token from 3, about 20 from 8: the policy drafts ``DRAFT_PER_RUN`` tokens per matching
token from ``MIN_RUN`` up to ``MAX_DRAFT``. It also watches this answer: when its last
``WINDOW`` verify steps made fewer tokens than the one-token steps their cost would have, it stops
drafting for ``COOLDOWN`` tokens, twice as long each time that happens again (back to
``COOLDOWN`` after a step that accepts half its drafts), so text that does not copy runs at
plain speed and a copy later in the answer is still drafted.

Where it runs: one prompt, greedy (temperature 0), on a shared cache (every attention
GroupQueryAttention). ONNX Runtime's CPU GroupQueryAttention refuses a multi-token step with a
past for batch > 1; a cache that is not shared would have to be cut back after each rejection;
sampling would need rejection sampling to keep its distribution. ``speculative="ngram"`` asked
for in those cases is one error line (it would silently do nothing); ``"auto"`` (what ``llmc
serve`` uses) falls back to plain decoding.

Why written here: llama.cpp, TensorRT-LLM, onnxruntime-genai and transformers have it inside their
own engines; no library drafts model-free over ONNX Runtime sessions driven by IOBinding, and the
rollback by the mask is a property of llmc's shared cache (:mod:`llmc.model.decoder`).
"""

from __future__ import annotations

import collections
import time
from typing import Any, Optional

import numpy as np

from llmc.errors import LlmcError
from llmc.generation.loop import Request, Rows, Stepper, last_logits, prefill
from llmc.generation.result import GenerationResult
from llmc.model.decoder import DecoderLayout

MODES = ("off", "ngram", "auto")
MAX_NGRAM, MIN_NGRAM = 3, 1
# A step of w > 1 tokens costs STEP_JUMP + PER_TOKEN * (w - 1) more than a one-token step (above).
STEP_JUMP, PER_TOKEN = 0.82, 0.14
MAX_RUN = 32  # matching tokens counted back from the end
MIN_RUN, DRAFT_PER_RUN, MAX_DRAFT = 3, 2, 32  # draft 2 tokens per matching token, from 3 matching
WINDOW, COOLDOWN, MAX_COOLDOWN = 8, 16, 256  # verify steps judged together; tokens of pause


def step_cost(width: int) -> float:
    """A ``width``-token step's time in one-token steps (the fit above)."""
    return 1.0 if width <= 1 else 1.0 + STEP_JUMP + PER_TOKEN * (width - 1)


class Policy:
    """How many tokens to draft after a match of ``run`` tokens: none below ``MIN_RUN``, then
    ``DRAFT_PER_RUN`` per matching token up to ``MAX_DRAFT``; none at all for a while when the
    last ``WINDOW`` verify steps made fewer tokens than the one-token steps their cost would
    have (:func:`step_cost`), a while that doubles each time it happens again."""

    def __init__(self) -> None:
        self.window: collections.deque[tuple[float, int]] = collections.deque(maxlen=WINDOW)
        self.pause, self.cooldown = 0, COOLDOWN

    def length(self, run: int, room: int) -> int:
        """Draft tokens worth verifying after a ``run``-token match, at most ``room``."""
        if self.pause > 0 or run < MIN_RUN:
            return 0
        return max(0, min(room, MAX_DRAFT, DRAFT_PER_RUN * run))

    def record(self, drafted: int, accepted: int, made: int) -> None:
        """One step that made ``made`` tokens, ``accepted`` of its ``drafted`` drafts."""
        self.pause = max(0, self.pause - made)
        if not drafted:
            return
        self.window.append((step_cost(drafted + 1), accepted + 1))
        if accepted >= drafted // 2:
            self.cooldown = COOLDOWN
        cost, tokens = sum(c for c, _ in self.window), sum(t for _, t in self.window)
        if len(self.window) >= 2 and tokens < cost:
            self.pause, self.cooldown = self.cooldown, min(2 * self.cooldown, MAX_COOLDOWN)
            self.window.clear()


class Drafter:
    """Prompt-lookup drafts over ``tokens`` (the prompt, then each generated token as it comes):
    for every n-gram, the start of its latest occurrence that a token followed."""

    def __init__(self, tokens: list[int], max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM) -> None:
        self.tokens: list[int] = []
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.latest: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_ngram, max_ngram + 1)}
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            end = len(self.tokens)  # the n-grams ending here now have a continuation: ``token``
            for n, latest in self.latest.items():
                if end >= n:
                    latest[tuple(self.tokens[end - n : end])] = end - n
            self.tokens.append(int(token))

    def match(self) -> Optional[tuple[int, int]]:
        """``(run, where its continuation starts)`` for the longest suffix n-gram seen before (its
        most recent occurrence), or None; ``run``: how many tokens before the end agree with the
        tokens before that start (n or more, at most ``MAX_RUN``)."""
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(self.tokens) > n:
                start = self.latest[n].get(tuple(self.tokens[-n:]))
                if start is not None:
                    return self._run(start + n, n), start + n
        return None

    def _run(self, start: int, least: int) -> int:
        run, end = least, len(self.tokens)
        while run < MAX_RUN and run < start and self.tokens[start - run - 1] == self.tokens[end - run - 1]:
            run += 1
        return run

    def copy(self, start: int, count: int) -> list[int]:
        """``count`` tokens from ``start`` on, going on over the copy itself past the end."""
        out: list[int] = []
        for index in range(start, start + count):
            out.append(self.tokens[index] if index < len(self.tokens) else out[index - len(self.tokens)])
        return out

    def draft(self, policy: Policy, room: int) -> list[int]:
        """The tokens ``policy`` drafts after the best match (none without one), at most ``room``."""
        run, start = self.match() or (0, 0)
        return self.copy(start, policy.length(run, room)) if run else []


def unsupported(layout: DecoderLayout, request: Request) -> Optional[str]:
    """Why speculative decoding cannot run ``request`` (and what to do), or None."""
    if len(request.prompts) > 1:
        return "runs one prompt at a time; pass one prompt or drop --speculative"
    if not request.sampling.greedy:
        return "is greedy only; pass --temperature 0 or drop --speculative"
    if layout.recompute_cache_after is not None:
        return (
            f"does not recompute the cache at {layout.recompute_cache_after} tokens as this artifact's "
            "rotary embedding needs (LongRoPE); drop --speculative"
        )
    if not layout.shared_cache:
        return (
            "needs every attention fused into GroupQueryAttention (its cache rolls back by the mask), "
            "which this artifact's is not; rebuild it without --disable-fusion gqa or drop --speculative"
        )
    return None


def wanted(mode: Optional[str], layout: DecoderLayout, request: Request) -> bool:
    """Whether to decode ``request`` speculatively: ``"ngram"`` where it can run (else one error
    line), ``"auto"`` where it can run (else plain decoding), ``"off"``/None never."""
    mode = mode or "off"
    if mode not in MODES:
        raise LlmcError(f"--speculative {mode}: must be one of {', '.join(MODES)}")
    if mode == "off":
        return False
    why = unsupported(layout, request)
    if why is not None and mode == "ngram":
        raise LlmcError(f"--speculative ngram {why}")
    return why is None


def _picks(logits: Any, request: Request, made: int) -> list[int]:
    """The greedy token at each position of a verify step; EOS masked at the positions whose
    token would come before ``min_new_tokens`` (``made``: tokens made before the step)."""
    scores = logits.numpy()[0]
    masked = max(0, min(request.min_new_tokens - made, scores.shape[0]))
    if masked and request.eos:
        scores = scores.copy()
        scores[:masked, [e for e in request.eos if e < scores.shape[-1]]] = -np.inf
    return np.argmax(scores, axis=-1).tolist()


def _agreed(drafts: list[int], picks: list[int]) -> int:
    """How many leading drafts equal the model's picks before them."""
    count = 0
    while count < len(drafts) and drafts[count] == picks[count]:
        count += 1
    return count


def run_speculative(stepper: Stepper, request: Request, policy: Optional[Policy] = None) -> list[GenerationResult]:
    """Prefill one prompt, then decode greedily with prompt-lookup drafts (see the module)."""
    policy = policy or Policy()
    rows = Rows(request)
    start = time.perf_counter()
    logits, past, mask, _ = prefill(stepper, request)
    new = [int(np.argmax(last_logits(logits, request, 0)[0]))]
    ttft = time.perf_counter() - start
    drafter = Drafter(request.prompts[0])
    length, decoding, drafted, accepted = mask.shape[1], 0.0, 0, 0
    while True:
        for token in new:
            rows.add(np.array([token], dtype=np.int64))
        made = len(rows.tokens[0])
        if rows.finished.all() or made >= request.max_new_tokens:
            break
        began = time.perf_counter()
        drafter.extend(new)
        room = request.max_new_tokens - made - 1  # the step's last pick is the last token allowed
        drafts = drafter.draft(policy, room)
        ids = np.array([[new[-1], *drafts]], dtype=np.int64)
        width = ids.shape[1]
        positions = np.arange(length, length + width, dtype=np.int64)[None]
        logits, past = stepper.run(ids, np.ones((1, length + width), np.int64), positions, past)
        picks = _picks(logits, request, made)
        agreed = _agreed(drafts, picks)
        new = [*drafts[:agreed], picks[agreed]]
        length += 1 + agreed
        policy.record(len(drafts), agreed, len(new))
        drafted, accepted = drafted + len(drafts), accepted + agreed
        decoding += time.perf_counter() - began
    after_first = len(rows.tokens[0]) - 1
    return rows.results(ttft, 1000 * decoding / after_first if after_first else 0.0, drafted, accepted)
