"""The processes :mod:`benchmarks.serving` measures with: lean asyncio HTTP clients (aiohttp,
keep-alive connections, uvloop where installed) and the runtime called directly, each run in a
fresh process of its own (``harness.job``) so that neither the client's nor the direct runner's
work lands in the server's process.

Every function here is module-level and returns a plain dict (it crosses a process boundary).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

THREADS = 2
NEW_TOKENS = 64
# Ask the server for exactly NEW_TOKENS tokens, in vLLM's words (``min_tokens``, ``ignore_eos``):
# a server without them ignores them, and the rows report the tokens each stream really got.
FORCE = {"min_tokens": NEW_TOKENS, "ignore_eos": True}


def _run(coroutine: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def _ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.array(seconds) * 1e3, q))


# -- embeddings -------------------------------------------------------------------------------------


def direct_embed(path: str, texts: list[str]) -> dict[str, Any]:
    """``runner.embed([text])`` one call at a time (what a process without a server does):
    per-call p50/p99 and calls per second, after 16 warm-up calls."""
    import llmc

    runner = llmc.load(path, threads=THREADS)
    for text in texts[:16]:
        runner.embed([text])
    times = []
    start = time.perf_counter()
    for text in texts:
        began = time.perf_counter()
        runner.embed([text])
        times.append(time.perf_counter() - began)
    wall = time.perf_counter() - start
    return {"p50_ms": _ms(times, 50), "p99_ms": _ms(times, 99), "per_s": len(texts) / wall}


def embed_client(url: str, texts: list[str], clients: int, repeat: int) -> dict[str, Any]:
    """``POST /v1/embeddings`` with one sentence a request from ``clients`` concurrent
    connections until every text was sent ``repeat`` times: latency p50/p99 and requests/s."""
    return _run(_embed_load(url, texts, clients, repeat))


async def _embed_load(url: str, texts: list[str], clients: int, repeat: int) -> dict[str, Any]:
    import aiohttp

    bodies = [json.dumps({"input": text}).encode() for text in texts]
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(body: bytes) -> float:
            began = time.perf_counter()
            async with session.post(url + "/v1/embeddings", data=body) as response:
                answer = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"/v1/embeddings answered {response.status}: {answer[:200]!r}")
            return time.perf_counter() - began

        async with session.post(url + "/v1/embeddings", data=bodies[0]) as response:  # the answer is real
            dimension = len((await response.json())["data"][0]["embedding"])
        queue = list(reversed(bodies * repeat))
        latencies: list[float] = []

        async def worker(share: list[bytes]) -> None:
            while share:
                latencies.append(await one(share.pop()))

        await asyncio.gather(*(worker(bodies[i : i + 2]) for i in range(0, 2 * clients, 2)))  # warm-up
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(worker(queue) for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"p50_ms": _ms(latencies, 50), "p99_ms": _ms(latencies, 99), "per_s": len(latencies) / wall,
            "requests": len(latencies), "dimension": dimension}


# -- chat -------------------------------------------------------------------------------------------


async def _stream(session: Any, url: str, messages: list[dict[str, str]], max_tokens: int, force: bool) -> dict[str, Any]:
    """One streamed chat completion: its text, tokens (the final usage), finish reason, time to
    the first content chunk and ms per token after it."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            **(FORCE if force else {})}
    start = time.perf_counter()
    first = last = None
    pieces: list[str] = []
    usage: dict[str, Any] | None = None
    finish = None
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"/v1/chat/completions answered {response.status}: {(await response.text())[:200]}")
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error'].get('message')}")
            if event.get("usage"):
                usage = event["usage"]
            if not event.get("choices"):
                continue
            choice = event["choices"][0]
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                last = time.perf_counter()
                first = first or last
                pieces.append(piece)
            finish = choice.get("finish_reason") or finish
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else len(pieces)
    if first is None:
        first = last = end
    return {"text": "".join(pieces), "tokens": tokens, "finish": finish, "ttft_ms": 1e3 * (first - start),
            "ms_per_token": 1e3 * (last - first) / max(tokens - 1, 1), "wall_s": end - start}


def chat_client(url: str, conversations: list[list[dict[str, str]]], warmup: list[dict[str, str]]) -> dict[str, Any]:
    """Each conversation streamed alone, one after another; then ``len(conversations)`` clients
    at once, each streaming ``REPEAT`` conversations back to back (a closed loop: a client sends
    its next request when its last one ends, so after the first wave requests arrive while the
    others decode)."""
    return _run(_chat_load(url, conversations, warmup))


REPEAT = 3


async def _chat_load(url: str, conversations: list[list[dict[str, str]]], warmup: list[dict[str, str]]) -> dict[str, Any]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        await _stream(session, url, warmup, 8, False)
        alone = [await _stream(session, url, messages, NEW_TOKENS, True) for messages in conversations]
        for index, stream in enumerate(alone):
            stream["prompt"] = index

        async def client(first: int) -> list[dict[str, Any]]:
            done = []
            for k in range(REPEAT):
                index = (first + k) % len(conversations)
                stream = await _stream(session, url, conversations[index], NEW_TOKENS, True)
                done.append({**stream, "prompt": index, "wave": k})
            return done

        start = time.perf_counter()
        together = await asyncio.gather(*(client(i) for i in range(len(conversations))))
        wall = time.perf_counter() - start
    return {"alone": alone, "together": [s for streams in together for s in streams], "together_wall_s": wall}


def summary(streams: list[dict[str, Any]], wall_s: float | None) -> dict[str, float]:
    """TTFT and ms/token medians over streams; tokens/s: alone (``wall_s`` None) the median
    stream's own rate, together all streams' tokens over the wall time."""
    tokens = [s["tokens"] for s in streams]
    rate = statistics.median(s["tokens"] / s["wall_s"] for s in streams) if wall_s is None else sum(tokens) / wall_s
    return {"ttft_ms": statistics.median(s["ttft_ms"] for s in streams),
            "ms_per_token": statistics.median(s["ms_per_token"] for s in streams), "tokens_per_s": rate,
            "tokens_min": min(tokens), "tokens_max": max(tokens)}


def direct_chat(path: str, conversations: list[list[dict[str, str]]], forced: list[int]) -> dict[str, Any]:
    """``runner.generate`` greedy on each conversation's chat prompt (the server's own
    ``chat_messages``), ``forced[i]`` tokens at least (EOS masked until then)."""
    import llmc
    from llmc.model.text import chat_messages

    runner = llmc.load(path, threads=THREADS)
    texts = []
    for messages, least in zip(conversations, forced, strict=True):
        prompt = chat_messages(Path(path), messages)
        texts.append(runner.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=least, temperature=0.0).text)
    return {"texts": texts}


def system_client(url: str, system: str, questions: list[str]) -> dict[str, Any]:
    """TTFT of chats that share ``system`` as their system message: the first request after the
    server started, and the median of the others."""
    return _run(_system_load(url, system, questions))


async def _system_load(url: str, system: str, questions: list[str]) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        ttfts = [(await _stream(session, url, [{"role": "system", "content": system}, {"role": "user", "content": q}],
                                4, False))["ttft_ms"] for q in questions]
    return {"first_ms": ttfts[0], "later_ms": statistics.median(ttfts[1:])}
