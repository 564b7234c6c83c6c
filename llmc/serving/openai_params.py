"""OpenAI's completion request fields, checked strictly before any work: one :class:`BadRequest` each.

``/v1/completions``: ``prompt`` (a string, token ids, or a list of either: each prompt answered
``n`` times, at most ``MAX_N`` choices in all); ``/v1/chat/completions``: ``messages`` (role/content
turns). Both: ``n`` (1..``MAX_N``), ``max_tokens`` (chat: also ``max_completion_tokens``, which
wins; absent: completions 16, chat as many as fit the context, at most the server's cap), ``temperature`` (0..2), ``top_p`` (0..1, above 0), ``seed`` (absent: a fresh one per request, so repeated sampled requests
differ, as OpenAI's do), ``stop`` (a string or up to 4),
``presence_penalty`` and ``frequency_penalty`` (-2..2), ``logprobs`` (chat: a boolean, with
``top_logprobs`` 0..20; completions: an integer 0..5, the top count), ``stream`` (a boolean) with
``stream_options.include_usage``, ``response_format`` (``text``, ``json_object``, ``json_schema``:
``llmc.generation.grammar``), ``user`` (kept for logs only); and vLLM's ``min_tokens`` and
``ignore_eos``. Fields OpenAI has that llmc does not do (tools, logit_bias, echo, best_of,
suffix, audio) are refused by name rather than ignored.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any, Optional

from llmc.serving.errors import BadRequest

MAX_N = 16
MAX_STOPS = 4
# Chat roles a turn may have: OpenAI's "developer" is its newer name for "system". "tool" and
# "function" turns answer tool calls, which llmc does not make ("tools" is refused too).
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logit_bias", "echo", "best_of", "suffix",
               "audio", "prediction", "parallel_tool_calls")


@dataclasses.dataclass(frozen=True)
class CompletionRequest:
    chat: bool
    prompt: Optional[str | tuple[int, ...]]  # text or token ids: the first (or only) of ``prompts``
    messages: Optional[list[dict[str, str]]]
    n: int
    max_tokens: Optional[int]  # None: as many as fit (chat without max_tokens)
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]
    presence_penalty: float
    frequency_penalty: float
    logprobs: bool
    top_logprobs: int
    stream: bool
    include_usage: bool
    response_format: Optional[dict[str, Any]]
    min_tokens: int
    ignore_eos: bool
    prompts: tuple[str | tuple[int, ...], ...] = ()  # completions: every prompt, each answered ``n`` times


def parse(body: Any, chat: bool, max_new_tokens: int) -> CompletionRequest:
    """The request in ``body``, or :class:`BadRequest` naming the field (``max_new_tokens``: the
    server's cap on ``max_tokens``)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    for key in UNSUPPORTED:
        if body.get(key) not in (None, False, [], {}, 1 if key == "best_of" else None):
            raise BadRequest(f'"{key}" is not supported by this server; remove it', param=key)
    messages = _messages(body) if chat else None
    prompts = () if chat else _prompts(body)
    default = min(16, max_new_tokens)  # OpenAI's completions default, within the server's cap
    max_tokens = None if chat and body.get("max_tokens") is None else _number(body, "max_tokens", default, int, 1,
                                                                               max_new_tokens)
    if chat and body.get("max_completion_tokens") is not None:
        max_tokens = _number(body, "max_completion_tokens", default, int, 1, max_new_tokens)
    logprobs, top = _logprobs(body, chat)
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)):
        raise BadRequest('"stream_options" is an object, only with "stream": true', param="stream_options")
    include_usage = _boolean(options or {}, "include_usage", "stream_options.include_usage")
    response_format = body.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise BadRequest('"response_format" must be an object such as {"type": "json_object"}', param="response_format")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest('"user" must be a string', param="user")
    n = _number(body, "n", 1, int, 1, MAX_N)
    if len(prompts) * n > MAX_N:
        raise BadRequest(f'{len(prompts)} prompts with "n" {n} are {len(prompts) * n} choices; at most {MAX_N} a '
                         "request", param="prompt")
    top_p = _number(body, "top_p", 1.0, float, 0.0, 1.0)
    if top_p == 0.0:
        raise BadRequest('"top_p" must be above 0', param="top_p")
    return CompletionRequest(
        chat=chat, prompt=prompts[0] if prompts else None, prompts=prompts, messages=messages, n=n,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, float, 0.0, 2.0), top_p=top_p,
        seed=_seed(body), stop=_stop(body),
        presence_penalty=_number(body, "presence_penalty", 0.0, float, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, float, -2.0, 2.0), logprobs=logprobs,
        top_logprobs=top, stream=stream, include_usage=include_usage, response_format=response_format,
        min_tokens=_number(body, "min_tokens", 0, int, 0, max_tokens or max_new_tokens),
        ignore_eos=_boolean(body, "ignore_eos"),
    )


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest('"messages" must be a non-empty list of {"role": str, "content": str}', param="messages")
    turns = []
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # OpenAI's content parts: text parts only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise BadRequest(f'"messages[{index}].content": only text parts are supported', param="messages")
            content = "".join(part["text"] for part in content)
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(content, str):
            raise BadRequest(f'"messages[{index}]" must be {{"role": str, "content": str}}', param="messages")
        role = ROLES.get(message["role"])
        if role is None:
            raise BadRequest(f'"messages[{index}].role" is {message["role"]!r}: llmc takes '
                             f'{", ".join(map(repr, ROLES))} (no tool calls)', param="messages")
        turns.append({"role": role, "content": content})
    return turns


def _seed(body: dict[str, Any]) -> int:
    """The request's ``seed`` (any 64-bit integer, folded to non-negative), or a fresh one."""
    if body.get("seed") is None:
        return secrets.randbits(63)
    return _number(body, "seed", 0, int, -(2**63), 2**63 - 1) % 2**63


def _prompts(body: dict[str, Any]) -> tuple[str | tuple[int, ...], ...]:
    """OpenAI's ``prompt``: a string, a list of strings, a list of token ids, or a list of those."""
    prompt = body.get("prompt")
    if isinstance(prompt, str) or token_ids(prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt or not all(isinstance(p, str) and p or token_ids(p) for p in prompt):
        raise BadRequest('"prompt" must be a non-empty string, token ids, or a non-empty list of either',
                         param="prompt")
    return tuple(p if isinstance(p, str) else tuple(p) for p in prompt)


def token_ids(value: Any) -> bool:
    """``value`` is a non-empty list of token ids (integers)."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest(f'"stop" must be a string or a list of at most {MAX_STOPS} non-empty strings', param="stop")
    return tuple(stop)


def _logprobs(body: dict[str, Any], chat: bool) -> tuple[bool, int]:
    """(logprobs wanted, how many alternatives per token)."""
    if chat:
        wanted = _boolean(body, "logprobs")
        top = _number(body, "top_logprobs", 0, int, 0, 20)
        if top and not wanted:
            raise BadRequest('"top_logprobs" needs "logprobs": true', param="top_logprobs")
        return wanted, top
    value = body.get("logprobs")
    if value is None:
        return False, 0
    return True, _number(body, "logprobs", 0, int, 0, 5)


def _boolean(body: dict[str, Any], key: str, name: Optional[str] = None) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f'"{name or key}" must be true or false, not {value!r:.40}', param=name or key)
    return value


def _number(body: dict[str, Any], key: str, default: Any, kind: type, low: float, high: float) -> Any:
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise BadRequest(f'"{key}" must be {"an integer" if kind is int else "a number"}', param=key)
    if not low <= value <= high:  # NaN fails too
        cap = " (the server's --max-tokens)" if key in ("max_tokens", "max_completion_tokens") else ""
        raise BadRequest(f'"{key}" must be between {low:g} and {high:g}{cap}, not {value}', param=key)
    return kind(value)
