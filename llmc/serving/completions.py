"""OpenAI-compatible ``/v1/completions`` and ``/v1/chat/completions`` on a decoder artifact.

Fields: ``prompt`` (completions) or ``messages`` (chat: role/content turns through the artifact's
chat template), ``max_tokens`` (16), ``temperature`` (1.0), ``top_p`` (1.0), ``stop`` (a string
or a list), ``seed``, ``stream`` (server-sent events: one ``data:`` chunk per piece of text, then
``data: [DONE]``). Answers carry ``usage`` (prompt, completion and total tokens). A replica runs
one generation at a time (the artifact's runtime, KV cache updated in place); others wait.
Greedy requests decode with prompt-lookup drafts where they can run (``speculative="auto"``,
``--speculative off`` turns it off): the same tokens, faster when the answer copies the prompt.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from llmc.errors import LlmcError
from llmc.serving.errors import BadRequest, openai_error


def parse(body: Any, chat: bool, max_new_tokens: int) -> dict[str, Any]:
    """The generation request, or :class:`BadRequest`."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
        ):
            raise BadRequest('"messages" must be a non-empty list of {"role": str, "content": str}', param="messages")
    elif not isinstance(body.get("prompt"), str) or not body["prompt"]:
        raise BadRequest('"prompt" must be a non-empty string', param="prompt")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest('"stop" must be a string or a list of strings', param="stop")
    request = {
        "max_tokens": _number(body, "max_tokens", 16, int, 1, max_new_tokens),
        "temperature": _number(body, "temperature", 1.0, float, 0.0, 100.0),
        "top_p": _number(body, "top_p", 1.0, float, 0.0, 1.0),
        "seed": _number(body, "seed", 0, int, 0, 2**63 - 1),
        "stop": stop, "stream": bool(body.get("stream", False)),
    }
    if request["top_p"] == 0.0:
        raise BadRequest('"top_p" must be above 0', param="top_p")
    return {**request, **({"messages": body["messages"]} if chat else {"prompt": body["prompt"]})}


def _number(body: dict[str, Any], key: str, default: Any, kind: type, low: float, high: float) -> Any:
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise BadRequest(f'"{key}" must be {"an integer" if kind is int else "a number"}', param=key)
    if not low <= value <= high:
        raise BadRequest(f'"{key}" must be between {low:g} and {high:g}, not {value}', param=key)
    return kind(value)


async def complete(engine: Any, body: Any, chat: bool, streaming: Any, json_response: Any) -> Any:
    """The HTTP response to one completion request (``streaming``/``json_response``: FastAPI's)."""
    if not engine.decoder:
        raise BadRequest("this artifact is not a decoder: POST /v1/infer", 404)
    request = parse(body, chat, engine.settings.max_new_tokens)
    prompt = request.get("prompt")
    if chat:
        from llmc.model.text import chat_messages

        prompt = _guard(lambda: chat_messages(engine.runner.artifact.path, request["messages"]))
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    if request["stream"]:
        return streaming(_events(engine, prompt, request, chat, ident), media_type="text/event-stream")
    result = await asyncio.get_running_loop().run_in_executor(None, _generate, engine, prompt, request, None)
    return json_response(_answer(result, chat, ident))


def _guard(call: Any) -> Any:
    try:
        return call()
    except LlmcError as exc:
        raise BadRequest(str(exc)) from None


def _generate(engine: Any, prompt: str, request: dict[str, Any], stream: Any) -> Any:
    key = (prompt, request["max_tokens"], tuple(request["stop"])) if request["temperature"] == 0 else None
    if key is not None and stream is None and key in engine.results:  # an exact repeat: the same answer
        engine.results.move_to_end(key)
        engine.metrics.count("result_cache_hit")
        return engine.results[key]
    with engine.generation_slot():
        result = _guard(lambda: engine.runner.generate(
            prompt, max_new_tokens=request["max_tokens"], temperature=request["temperature"], top_p=request["top_p"],
            seed=request["seed"], stop=request["stop"], stream=stream, prefix_cache=engine.prefix,
            speculative=engine.settings.speculative,
        ))
    engine.metrics.generation(result.ttft_ms, result.ms_per_token, result.drafted, result.accepted)
    if engine.prefix is not None:
        engine.metrics.cache_hits = engine.prefix.stats()["hits"]
    if key is not None and engine.settings.result_cache > 0:
        engine.results[key] = result
        while len(engine.results) > engine.settings.result_cache:
            engine.results.popitem(last=False)
    return result


def _usage(result: Any) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.tokens,
            "total_tokens": result.prompt_tokens + result.tokens}


def _finish(result: Any) -> str:
    return "length" if result.stop_reason == "length" else "stop"


def _answer(result: Any, chat: bool, ident: str) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(result)}
    if chat:
        choice["message"] = {"role": "assistant", "content": result.text}
    else:
        choice["text"] = result.text
    return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "choices": [choice], "usage": _usage(result)}


async def _events(engine: Any, prompt: str, request: dict[str, Any], chat: bool, ident: str) -> Any:
    """Server-sent events: each piece of text as it is decoded, then the finish and usage."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    task = loop.run_in_executor(
        None, _generate, engine, prompt, request, lambda piece: loop.call_soon_threadsafe(queue.put_nowait, piece)
    )
    task.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
    kind = "chat.completion.chunk" if chat else "text_completion"
    while (piece := await queue.get()) is not None:
        delta = {"delta": {"content": piece}} if chat else {"text": piece}
        yield _sse({"id": ident, "object": kind, "choices": [{"index": 0, **delta, "finish_reason": None}]})
    try:
        result = task.result()
    except BadRequest as exc:  # OpenAI's error object as the stream's last event
        yield _sse(openai_error(exc)[1])
        return
    last = {"delta": {}} if chat else {"text": ""}
    yield _sse({"id": ident, "object": kind, "choices": [{"index": 0, **last, "finish_reason": _finish(result)}],
                "usage": _usage(result)})
    yield "data: [DONE]\n\n"


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
