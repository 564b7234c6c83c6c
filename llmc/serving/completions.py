"""OpenAI's ``/v1/completions`` and ``/v1/chat/completions`` on a decoder artifact.

The request is checked field by field first (``llmc.serving.openai_params``), then tokenized and
run as ``n`` sequences by the artifact's :class:`~llmc.serving.decoding.Decoding` (continuous
batching where the artifact allows it). Answers carry ``usage`` (prompt, completion and total
tokens; streams only with ``stream_options.include_usage``, in one last chunk whose ``choices``
is empty) and, when asked, ``logprobs`` in each API's shape (chat: ``content`` entries with
``token``/``logprob``/``bytes``/``top_logprobs``, ``bytes`` the token's own
(``llmc.model.token_bytes``); completions: ``tokens``/``token_logprobs``/``top_logprobs``/
``text_offset``), for the tokens of the answer (``llmc.generation.streamed``: not a stop string's
after it). A request whose client goes away (a stream's, or one waiting for its whole answer)
cancels its sequences: their slots are free at the next step.
``--result-cache`` answers a repeated greedy request (same prompt and settings, no logprobs or
grammar) from memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
import uuid
from typing import Any, Awaitable, Callable, Optional

from llmc.errors import LlmcError
from llmc.generation.sequence import Sequence, TokenLogprob
from llmc.model.token_bytes import token_bytes
from llmc.serving.errors import CLIENT_GONE, BadRequest, openai_error
from llmc.serving.openai_params import CompletionRequest, parse

POLL_SECONDS = 0.25  # how often a whole answer being made asks whether its client is still there


async def complete(engine: Any, body: Any, chat: bool, streaming: Any, json_response: Any,
                   gone: Optional[Callable[[], Awaitable[bool]]] = None) -> Any:
    """The HTTP response to one completion request (``streaming``/``json_response``: FastAPI's;
    ``gone``: whether the client has closed the connection, asked while a whole answer is made)."""
    if not engine.decoder:
        raise BadRequest("this artifact is not a decoder: POST /v1/infer", 404)
    request = parse(body, chat, engine.settings.max_new_tokens)
    decoding = engine.decoding
    parts = []  # (prompt ids, settings) of each prompt, answered n times each
    for part in [request] if chat else [dataclasses.replace(request, prompt=p) for p in request.prompts]:
        # templating and tokenizing a long prompt take milliseconds: off the event loop (/health stays quick)
        ids, max_tokens = await asyncio.get_running_loop().run_in_executor(
            None, decoding.prompt_ids, part, engine.settings.max_new_tokens)
        parts.append((ids, decoding.params(part, max_tokens)))
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    if request.stream:
        stream = _Stream(engine, parts, request.n)
        await engine.decoding.run(stream.sequences)  # a refusal is still an error response here
        return streaming(_events(engine, stream, request, ident), media_type="text/event-stream")
    cacheable = all(_cacheable(params) for _, params in parts)
    key = (tuple((tuple(ids), params) for ids, params in parts), request.n) if cacheable else None
    if key is not None and key in engine.results:  # an exact repeat: the same answer
        engine.results.move_to_end(key)
        engine.metrics.count("result_cache_hit")
        sequences = engine.results[key]
    else:
        sequences = await _run(engine, parts, request.n, gone)
        if key is not None and engine.settings.result_cache > 0:
            engine.results[key] = sequences
            while len(engine.results) > engine.settings.result_cache:
                engine.results.popitem(last=False)
    return json_response(_answer(sequences, request, ident, decoding.tokenizer, engine.settings.served_model))


def _cacheable(params: Any) -> bool:
    return params.sampling.greedy and not params.logprobs and params.constraint_factory is None


async def _run(engine: Any, parts: list[tuple[list[int], Any]], n: int,
               gone: Optional[Callable[[], Awaitable[bool]]] = None) -> list[Sequence]:
    """Run ``n`` sequences of each part's prompt ids with its settings to their end, in order;
    cancelled (their slots free at the next step) if this request is, or if its client goes away
    (``gone``, asked every :data:`POLL_SECONDS`)."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(n * len(parts))]
    order: dict[int, int] = {}

    def done(sequence: Sequence) -> None:
        future = futures[order[id(sequence)]]
        loop.call_soon_threadsafe(lambda: future.done() or future.set_result(sequence))

    sequences = [s for first, (ids, params) in enumerate(parts)
                 for s in engine.decoding.sequences(ids, params, n, None, done, first * n)]
    order.update({id(s): i for i, s in enumerate(sequences)})
    await engine.decoding.run(sequences)
    everything = asyncio.gather(*futures)
    try:
        while not (await asyncio.wait({everything}, timeout=POLL_SECONDS))[0]:
            if gone is not None and await gone():
                raise BadRequest("the client closed the connection before the answer", CLIENT_GONE)
        finished = everything.result()
    except BaseException:  # cancelled, the client gone, or asking for it failed: free the slots
        for sequence in sequences:
            sequence.cancel()
        raise
    for sequence in finished:
        _raise_error(sequence)
        _measure(engine, sequence)
    return finished


def _raise_error(sequence: Sequence) -> None:
    if sequence.error is None:
        return
    if isinstance(sequence.error, LlmcError):
        raise BadRequest(str(sequence.error)) from None
    raise sequence.error  # a bug: a 500 with its traceback in the server's log


def _measure(engine: Any, sequence: Sequence) -> None:
    result = sequence.result()
    engine.metrics.generation(result.ttft_ms, result.ms_per_token, result.drafted, result.accepted)


def _finish(sequence: Sequence) -> str:
    return "length" if sequence.reason in ("length", "cancelled") else "stop"


def _usage(sequences: list[Sequence], n: int) -> dict[str, int]:
    prompt = sum(len(s.prompt) for s in sequences[::n])  # each prompt once (n choices each)
    made = sum(len(s.tokens) for s in sequences)
    return {"prompt_tokens": prompt, "completion_tokens": made, "total_tokens": prompt + made}


def _answer(sequences: list[Sequence], request: CompletionRequest, ident: str, tokenizer: Any, model: str) -> dict[str, Any]:
    choices = []
    for index, sequence in enumerate(sequences):
        choice: dict[str, Any] = {"index": index}
        if request.chat:
            choice["message"] = {"role": "assistant", "content": sequence.text(), "refusal": None}
        else:
            choice["text"] = sequence.text()
        records = sequence.logprobs[: sequence.kept_logprobs()]  # not a stop string's tokens
        choice["logprobs"] = _logprobs(records, request, tokenizer) if request.logprobs else None
        choice["finish_reason"] = _finish(sequence)
        choices.append(choice)
    return {"id": ident, "object": "chat.completion" if request.chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": _usage(sequences, request.n)}


def _token(tokenizer: Any, token: int) -> tuple[str, list[int]]:
    """A token's text (decoded alone: U+FFFD for part of a character) and its own bytes."""
    if tokenizer is None:
        return str(token), list(str(token).encode())
    return tokenizer.decode([token], skip_special_tokens=False), token_bytes(tokenizer, token)


def _logprobs(records: list[TokenLogprob], request: CompletionRequest, tokenizer: Any, offset: int = 0) -> dict[str, Any]:
    """Logprobs of ``records`` in the request's API's shape (``offset``: characters before them)."""
    if request.chat:
        content = []
        for record in records:
            text, raw = _token(tokenizer, record.token)
            top = [dict(zip(("token", "bytes"), _token(tokenizer, t), strict=True), logprob=lp) for t, lp in record.top]
            content.append({"token": text, "logprob": record.logprob, "bytes": raw, "top_logprobs": top})
        return {"content": content, "refusal": None}
    tokens, offsets = [], []
    for record in records:
        offsets.append(offset)
        tokens.append(_token(tokenizer, record.token)[0])
        offset += len(tokens[-1])
    tops = [{_token(tokenizer, t)[0]: lp for t, lp in record.top} for record in records] if request.top_logprobs else None
    return {"tokens": tokens, "token_logprobs": [r.logprob for r in records], "top_logprobs": tops, "text_offset": offsets}


class _Stream:
    """A streamed request's sequences and the queue their pieces and ends come through."""

    def __init__(self, engine: Any, parts: list[tuple[list[int], Any]], n: int) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        order: dict[int, int] = {}

        def text(index: int, piece: str, records: list[TokenLogprob]) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, (index, piece, records, None))

        def done(sequence: Sequence) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, (order[id(sequence)], None, None, sequence))

        self.sequences: list[Sequence] = []
        for first, (ids, params) in enumerate(parts):  # choice index: prompt x n + the prompt's choice
            told = functools.partial(lambda base, i, piece, records: text(base + i, piece, records), first * n)
            self.sequences += engine.decoding.sequences(ids, params, n, told, done, first * n)
        order.update({id(s): i for i, s in enumerate(self.sequences)})


async def _events(engine: Any, stream: _Stream, request: CompletionRequest, ident: str) -> Any:
    """Server-sent events: each choice's text as it is decoded, its finish, the usage if asked."""
    kind = "chat.completion.chunk" if request.chat else "text_completion"
    base = {"id": ident, "object": kind, "created": int(time.time()), "model": engine.settings.served_model}
    tokenizer, offsets = engine.decoding.tokenizer, [0] * len(stream.sequences)
    try:
        if request.chat:
            for index in range(request.n):
                yield _sse({**base, "choices": [_chunk(index, {"role": "assistant", "content": ""}, request, None)]})
        remaining = len(stream.sequences)
        while remaining:
            index, piece, records, finished = await stream.queue.get()
            if finished is None:
                probs = _logprobs(records, request, tokenizer, offsets[index]) if request.logprobs else None
                offsets[index] += len(piece)
                delta = {"content": piece} if request.chat else piece
                yield _sse({**base, "choices": [_chunk(index, delta, request, probs)]})
                continue
            remaining -= 1
            _measure(engine, finished)
            if finished.error is not None:  # OpenAI's error object as the stream's last event
                yield _sse(openai_error(BadRequest(str(finished.error)))[1])
                return
            empty = {} if request.chat else ""
            yield _sse({**base, "choices": [_chunk(index, empty, request, None, _finish(finished))]})
        if request.include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(stream.sequences, request.n)})
        yield "data: [DONE]\n\n"
    finally:
        for sequence in stream.sequences:  # a client gone: free the slots at the next step
            sequence.cancel()


def _chunk(index: int, delta: Any, request: CompletionRequest, probs: Any, finish: Optional[str] = None) -> dict[str, Any]:
    body = {"index": index, "delta": delta} if request.chat else {"index": index, "text": delta}
    return {**body, "logprobs": probs, "finish_reason": finish}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
