"""A served decoder: its tokenizer, prefix cache, system prompt, and continuous batching.

:class:`Decoding` turns a checked OpenAI request (``llmc.serving.openai_params``) into
:class:`~llmc.generation.sequence.Sequence` s, one per choice, and runs them:

* on a :class:`~llmc.generation.scheduler.Scheduler` (``--slots`` sequences decode together; a new
  request joins between steps) when the artifact can share a timeline (GroupQueryAttention with the
  padding from the mask: every CPU build of ``llmc export``'s decoders);
* else one sequence at a time (``llmc.generation.alone``), in a worker thread under a lock.

``--system-prompt`` text is rendered through the chat template at start; the tokens every chat
beginning with that system message shares are prefilled once into the prefix cache and pinned
there (never evicted), so such chats prefill only what follows. Chats are tokenized without
adding special tokens (the template writes them), as ``llmc generate --chat`` does.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from llmc.errors import LlmcError
from llmc.generation.alone import run_alone
from llmc.generation.api import generate, open_decoder
from llmc.generation.prefix import PrefixCache
from llmc.generation.sampling import Sampling
from llmc.generation.scheduler import Scheduler, supports
from llmc.generation.sequence import Sequence, SequenceParams
from llmc.model import text as texts
from llmc.serving.errors import BadRequest
from llmc.serving.openai_params import CompletionRequest

SYSTEM = "system"
MAX_COLUMNS = 32768  # a slot's KV length when neither the context nor --kv-cache-mb bounds it lower


class Decoding:
    """One artifact's generation for the server (module docstring)."""

    def __init__(self, runner: Any, settings: Any) -> None:
        self.artifact = Path(runner.artifact.path)
        self.session, self.manifest = runner.session, runner.artifact.manifest
        self.stepper, layout = open_decoder(runner.session, self.artifact, self.manifest)
        self.speculative = settings.speculative == "auto"
        has_tokenizer = (self.artifact / texts.TOKENIZER_JSON).is_file()
        self.tokenizer = texts.load_tokenizer(self.artifact) if has_tokenizer else None
        config = texts.generation_config(self.artifact)
        self.eos, self.pad = texts.eos_ids(config), texts.pad_id(config)
        self.context = texts.context_length(self.artifact)
        self.prefix = PrefixCache(settings.prefix_cache_mb << 20) if settings.prefix_cache_mb > 0 else None
        self.vocab = runner.session.get_outputs()[0].shape[-1]
        self.why_alone = supports(layout) if settings.slots > 1 else "--slots 1"
        self.scheduler: Optional[Scheduler] = None
        self._alone_lock = threading.Lock()
        self.waiting_alone = 0
        if self.why_alone is None:
            per_token = 2 * layout.num_layers * layout.kv_heads * layout.head_size * np.dtype(layout.kv_dtype).itemsize
            budget = (settings.kv_cache_mb << 20) // (settings.slots * per_token)
            capacity = max(2, min(self.context or MAX_COLUMNS, MAX_COLUMNS, budget))
            self.scheduler = Scheduler(runner.session, layout, self.artifact, slots=settings.slots, capacity=capacity,
                                       chunk=settings.prefill_chunk, pad=self.pad, prefix=self.prefix)
        if self.scheduler is not None:
            self.scheduler.warm_up()
        self.system_tokens = 0
        if settings.system_prompt:
            self.system_tokens = self._pin_system_prompt(settings.system_prompt)
        if self.scheduler is not None:
            self.scheduler.start()

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()

    @property
    def queued(self) -> int:
        return self.scheduler.queued if self.scheduler is not None else self.waiting_alone

    @property
    def slots_in_use(self) -> int:
        return self.scheduler.slots_in_use if self.scheduler is not None else int(self._alone_lock.locked())

    def prompt_ids(self, request: CompletionRequest, cap: int) -> tuple[list[int], int]:
        """The request's prompt as token ids, and the new tokens it may have (``max_tokens``, or
        as many as fit the context and a slot, at most ``cap``); one error line for a template
        that fails or a prompt that does not fit."""
        if self.tokenizer is None:
            raise BadRequest(f"{self.artifact.name} has no tokenizer ({texts.TOKENIZER_JSON}): it cannot take text")
        param = "messages" if request.chat else "prompt"
        self._refuse_long_text(request, param)
        try:
            if request.chat:
                text = texts.chat_messages(self.artifact, request.messages)
                ids = texts.encode(self.tokenizer, text, special=False)
            elif isinstance(request.prompt, tuple):  # token ids
                ids = list(request.prompt)
                if not all(0 <= token < self.vocab for token in ids):
                    raise BadRequest(f"the prompt's token ids must be in [0, {self.vocab}): this model's vocabulary",
                                     param=param)
            else:
                ids = texts.encode(self.tokenizer, request.prompt)
        except LlmcError as exc:
            raise BadRequest(str(exc), param=param) from None
        if not ids:
            raise BadRequest("the prompt is empty once tokenized", param=param)
        limits = [(self.context, "the model's context")]
        if self.scheduler is not None:
            limits.append((self.scheduler.cache.capacity, "a decoding slot (--kv-cache-mb / --slots)"))
        limit, what = min(((n, w) for n, w in limits if n is not None), default=(None, ""))
        wanted = request.max_tokens if request.max_tokens is not None else cap
        if limit is not None and request.max_tokens is None:
            wanted = min(wanted, limit - len(ids))
        if limit is not None and (wanted < 1 or len(ids) + wanted > limit):
            raise BadRequest(
                f"the prompt is {len(ids)} tokens; with max_tokens {wanted} that passes {what} of {limit} tokens: "
                "shorten the prompt or lower max_tokens", param=param, code="context_length_exceeded")
        return ids, wanted

    def _refuse_long_text(self, request: CompletionRequest, param: str) -> None:
        """A prompt whose characters could not fit the context even at the tokenizer's longest
        token is refused before it is templated or tokenized (both take time a huge text would
        spend for nothing)."""
        limit = min((n for n in (self.context, self.scheduler and self.scheduler.cache.capacity) if n), default=None)
        if limit is None:
            return
        texts_ = [m["content"] for m in request.messages] if request.chat else [request.prompt]
        if not request.chat and not isinstance(request.prompt, str):
            return  # token ids: their count is checked against the limits
        chars = sum(len(t) for t in texts_)
        if chars > limit * self.longest_token:
            raise BadRequest(f"the prompt is {chars} characters, more than {limit} tokens can hold: shorten it",
                             param=param, code="context_length_exceeded")

    @functools.cached_property
    def longest_token(self) -> int:
        """Characters of the tokenizer's longest token (a bound on characters per token)."""
        return max((len(token) for token in self.tokenizer.get_vocab()), default=1) if self.tokenizer else 1

    def params(self, request: CompletionRequest, max_tokens: int) -> SequenceParams:
        factory = None
        if request.response_format is not None:
            factory = self._constraint(request.response_format)
        return SequenceParams(
            max_new_tokens=max_tokens, stop=request.stop,
            # greedy draws nothing: its seed is 0 (equal greedy requests are one result-cache key)
            sampling=Sampling(request.temperature, 0, request.top_p, request.seed if request.temperature else 0),
            min_new_tokens=max_tokens if request.ignore_eos else min(request.min_tokens, max_tokens),
            presence_penalty=request.presence_penalty, frequency_penalty=request.frequency_penalty,
            logprobs=request.logprobs, top_logprobs=request.top_logprobs, constraint_factory=factory,
        )

    def _constraint(self, response_format: dict[str, Any]) -> Optional[Callable[[], Any]]:
        try:
            from llmc.generation.grammar import response_constraint
        except ImportError:
            raise BadRequest('"response_format" needs llguidance: pip install "llmc[serve]"', param="response_format") from None
        try:
            first = response_constraint(response_format, self.artifact / texts.TOKENIZER_JSON, self.vocab, self.eos)
        except LlmcError as exc:
            raise BadRequest(str(exc), param="response_format") from None
        if first is None:
            return None
        made = [first]
        return lambda: made.pop() if made else response_constraint(
            response_format, self.artifact / texts.TOKENIZER_JSON, self.vocab, self.eos)

    def sequences(
        self, ids: list[int], params: SequenceParams, n: int, on_text: Optional[Callable[..., None]],
        on_done: Callable[[Sequence], None], first: int = 0,
    ) -> list[Sequence]:
        """``n`` choices of ``ids``; ``first``: the request's choices before them (several prompts),
        so every choice of a request draws its own random numbers."""
        return [
            Sequence(ids, params, self.eos, self.tokenizer,
                     on_text=(lambda piece, probs, i=i: on_text(i, piece, probs)) if on_text else None,
                     on_done=on_done, seed_offset=first + i)
            for i in range(n)
        ]

    async def run(self, sequences: list[Sequence]) -> None:
        """Start ``sequences`` (their ``on_done`` says when each ends)."""
        if self.scheduler is not None:
            try:
                self.scheduler.submit(sequences)
            except LlmcError as exc:
                raise BadRequest(str(exc), code="context_length_exceeded") from None
            return
        asyncio.get_running_loop().run_in_executor(None, self._alone, sequences)

    def _alone(self, sequences: list[Sequence]) -> None:
        self.waiting_alone += 1
        with self._alone_lock:
            self.waiting_alone -= 1
            for sequence in sequences:
                if self.speculative and _plain(sequence.params):
                    self._drafted(sequence)
                else:
                    run_alone(self.stepper, sequence, self.pad, self.prefix)

    def _drafted(self, sequence: Sequence) -> None:
        """A plain greedy sequence through ``generate`` with prompt-lookup drafts where they run
        (``llmc.generation.speculative``: the same tokens)."""
        params = sequence.params
        stream = (lambda piece: sequence.on_text(piece, [])) if sequence.on_text is not None else None
        try:
            result = generate(self.session, self.artifact, sequence.prompt, max_new_tokens=params.max_new_tokens,
                              stop=params.stop, stream=stream, prefix_cache=self.prefix, manifest=self.manifest,
                              speculative="auto")
        except Exception as exc:  # noqa: BLE001 - handed to the request as its answer
            sequence.finish("error", exc)
            return
        sequence.adopt(result)

    def _pin_system_prompt(self, text: str) -> int:
        """Prefill the chat template's system prefix into the prefix cache and pin it; its length."""
        if self.prefix is None:
            raise LlmcError("--system-prompt needs the prefix cache: --prefix-cache-mb above 0")
        if self.tokenizer is None:
            raise LlmcError(f"--system-prompt: {self.artifact} has no tokenizer ({texts.TOKENIZER_JSON})")
        turns = [[{"role": SYSTEM, "content": text}, {"role": "user", "content": probe}] for probe in ("a", "b")]
        first, second = (texts.encode(self.tokenizer, texts.chat_messages(self.artifact, t), special=False) for t in turns)
        shared = 0
        while shared < min(len(first), len(second)) and first[shared] == second[shared]:
            shared += 1
        prefix = first[:shared]
        if len(prefix) < self.prefix.block:
            return 0
        sequence = Sequence(prefix, SequenceParams(max_new_tokens=1), self.eos, None)
        if self.scheduler is not None:
            self.scheduler.submit([sequence])
            self.scheduler.run_until_idle()
        else:
            run_alone(self.stepper, sequence, self.pad, self.prefix)
        if sequence.error is not None:
            raise LlmcError(f"--system-prompt: prefilling it failed: {sequence.error}")
        self.prefix.pin(prefix)
        return len(prefix)


def _plain(params: SequenceParams) -> bool:
    """Greedy, nothing but stop strings and a length: what ``generate`` can run with drafts."""
    return (params.sampling.greedy and not params.logprobs and not params.presence_penalty
            and not params.frequency_penalty and params.constraint_factory is None and not params.min_new_tokens)
