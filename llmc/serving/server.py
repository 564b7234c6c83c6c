"""``llmc serve``: an artifact behind a Ray Serve HTTP endpoint.

Ray Serve runs the replicas (``--replicas``, each with ``--threads-per-replica`` CPUs), the HTTP
proxy, and ``@serve.batch`` dynamic batching; the same application runs on one machine
(``serve.run``) or a cluster (``--address`` or ``serve deploy`` of the ``--emit-config`` YAML,
whose ``import_path`` is :func:`app`). Per replica:

* ``POST /v1/infer``: requests whose inputs agree beyond the batch axis are merged into one run
  (only when the build measured every output's batch axis as axis 0) and split back; each answer
  is the artifact's answer to that request alone;
* ``POST /v1/completions`` and ``/v1/chat/completions`` for decoders (OpenAI's fields; ``stream``
  as server-sent events), generation on the artifact's runtime;
* ``GET /health``, ``GET /metrics`` (Prometheus text);
* at most ``max_queue`` requests in flight: beyond, 503 with ``Retry-After``. Bad requests are
  one line with a 4xx status and leave the replica healthy.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations as objects
# (``request: Request`` with ``Request`` imported where the app is built).
import asyncio
import collections
import dataclasses
import json
import sys
import threading
import time
from typing import Any

from llmc.errors import LlmcError
from llmc.model.decoder import is_decoder
from llmc.serving.metrics import Metrics
from llmc.serving.protocol import (
    BadRequest,
    cut_to,
    merge,
    outputs_json,
    pad_to_longest,
    parse_inputs,
    shape_key,
    specs,
    split,
)


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    artifact: str
    replicas: int = 1
    threads_per_replica: int = 1
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0
    max_queue: int = 64
    max_elements: int = 4_000_000
    max_new_tokens: int = 512
    prefix_cache_mb: int = 256  # decoders: prompts' KV blocks reused across requests (0: off)
    result_cache: int = 0  # answers kept for repeated temperature-0 requests (0: off)
    # Decoders: prompt-lookup drafts for greedy requests where they can run (llmc.generation.speculative)
    speculative: str = "auto"

    def to_args(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Engine:
    """One replica's artifact, batching and counters (Ray-free: the deployment wraps it)."""

    def __init__(self, settings: ServeSettings) -> None:
        import llmc

        self.settings = settings
        self.runner = llmc.load(settings.artifact, threads=settings.threads_per_replica, engine=False)
        self.inputs = specs(self.runner.session)
        padding = self.runner.artifact.manifest.padding or {}
        outputs = padding.get("outputs") or {}
        self.mergeable = bool(outputs) and all(v.get("batch_axis") == 0 for v in outputs.values())
        # Requests of different lengths share a run, padded, where the build measured that
        # padding leaves every real position unchanged (the loaded runner then skips it again).
        self.padded_merge = self.mergeable and bool(padding.get("trim", {}).get("safe"))
        self.layout = padding if self.padded_merge else None
        self.decoder = is_decoder(i.name for i in self.inputs)
        self.metrics = Metrics()
        self.in_flight = 0
        self.prefix = None
        if self.decoder and settings.prefix_cache_mb > 0:
            from llmc.generation.prefix import PrefixCache

            self.prefix = PrefixCache(settings.prefix_cache_mb << 20)
        self.results: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self.generation_lock = threading.Lock()  # one generation at a time per replica

    def run_batch(self, batch: list[tuple[dict[str, Any], float]]) -> list[Any]:
        """Run ``(request, arrival time)`` pairs, merged where allowed; results in order. A merged
        run that fails is run again request by request, so that only the request the model
        refuses (e.g. a token id beyond its vocabulary) gets the error (an :class:`LlmcError`)."""
        started = time.perf_counter()
        requests = [feeds for feeds, _ in batch]
        for _, arrival in batch:
            self.metrics.queued(started - arrival)
        results: list[Any] = [None] * len(requests)
        groups: dict[Any, list[int]] = {}
        for index, feeds in enumerate(requests):
            key = index if not self.mergeable else shape_key(feeds, self.layout)
            groups.setdefault(key, []).append(index)
        for members in groups.values():
            group = [requests[i] for i in members]
            lengths = None
            if self.layout is not None:
                group, lengths = pad_to_longest(group, self.layout)
            feeds, rows = merge(group)
            self.metrics.batch(sum(rows))
            try:
                outputs = split(self.runner.run(feeds), rows)
            except LlmcError:
                if len(members) == 1:
                    outputs = [sys.exc_info()[1]]
                else:
                    outputs = [self._alone(request) for request in group]
            for n, (i, out) in enumerate(zip(members, outputs, strict=True)):
                ok = lengths is not None and not isinstance(out, LlmcError)
                results[i] = cut_to(out, lengths[n], self.layout) if ok else out
        return results

    def _alone(self, request: dict[str, Any]) -> Any:
        try:
            return self.runner.run(request)
        except LlmcError as exc:
            return exc


def _deployment(settings: ServeSettings) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse
    from ray import serve

    api = FastAPI(title="llmc")

    @serve.deployment(
        name="llmc", num_replicas=settings.replicas, ray_actor_options={"num_cpus": settings.threads_per_replica},
        max_ongoing_requests=settings.max_queue + settings.max_batch_size,
    )
    @serve.ingress(api)
    class LlmcDeployment:
        def __init__(self, args: dict[str, Any]) -> None:
            self.engine = Engine(ServeSettings(**args))
            self._infer.set_max_batch_size(self.engine.settings.max_batch_size)
            self._infer.set_batch_wait_timeout_s(self.engine.settings.batch_wait_ms / 1e3)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
        async def _infer(self, requests: list[tuple[dict[str, Any], float]]) -> list[dict[str, Any]]:
            return await asyncio.get_running_loop().run_in_executor(None, self.engine.run_batch, requests)

        @api.get("/health")
        async def health(self) -> dict[str, Any]:
            import resource

            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return {"status": "ok", "artifact": self.engine.settings.artifact, "in_flight": self.engine.in_flight,
                    "peak_rss_mb": round(peak_mb, 1)}

        @api.get("/metrics")
        async def metrics(self) -> PlainTextResponse:
            return PlainTextResponse(self.engine.metrics.prometheus(), media_type="text/plain; version=0.0.4")

        @api.post("/v1/infer")
        async def infer(self, request: Request) -> Any:
            return await _admitted(self.engine, lambda: self._infer_one(request))

        async def _infer_one(self, request: Request) -> Any:
            arrival = time.perf_counter()
            feeds = parse_inputs(await _json(request), self.engine.inputs, self.engine.settings.max_elements)
            result = await self._infer((feeds, arrival))
            if isinstance(result, LlmcError):  # the model refused these inputs' values
                raise BadRequest(str(result))
            return JSONResponse(outputs_json(result))

        @api.post("/v1/completions")
        async def completions(self, request: Request) -> Any:
            return await _admitted(self.engine, lambda: _complete(self.engine, request, chat=False))

        @api.post("/v1/chat/completions")
        async def chat_completions(self, request: Request) -> Any:
            return await _admitted(self.engine, lambda: _complete(self.engine, request, chat=True))

    return LlmcDeployment.bind(settings.to_args())


async def _admitted(engine: Engine, handler: Any) -> Any:
    """``handler()``'s response, or 503 beyond ``max_queue`` in flight; a bad request is its status."""
    from fastapi.responses import JSONResponse

    if engine.in_flight >= engine.settings.max_queue:
        engine.metrics.count("rejected_overload")
        return JSONResponse({"error": f"overloaded: {engine.in_flight} requests in flight; retry"},
                            status_code=503, headers={"Retry-After": "1"})
    engine.in_flight += 1
    start = time.perf_counter()
    try:
        response = await handler()
        engine.metrics.count("ok")
        return response
    except BadRequest as exc:
        engine.metrics.count(f"bad_{exc.status}")
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    finally:
        engine.in_flight -= 1
        engine.metrics.latency(time.perf_counter() - start)

async def _json(request: Any) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None

async def _complete(engine: Engine, request: Any, chat: bool) -> Any:
    from fastapi.responses import JSONResponse, StreamingResponse

    from llmc.serving.completions import complete

    return await complete(engine, await _json(request), chat, StreamingResponse, JSONResponse)


def app(args: dict[str, Any]) -> Any:
    """The Ray Serve application builder (``import_path: llmc.serving.server:app``)."""
    return _deployment(ServeSettings(**args))
