"""``llmc serve``'s HTTP app: one FastAPI app and one route table for both engines.

:func:`build_app` makes the app around an :class:`~llmc.serving.engine.Engine`, which its lifespan
loads (in a worker thread) before the server takes any request: uvicorn runs the lifespan before
it listens (``llmc serve``, one process, ``llmc.serving.run``), and a Ray Serve replica runs it
before Ray routes to the replica (``--replicas``, ``--address``, ``--emit-config``: the same app
behind ``serve.ingress``, ``llmc.serving.server``). Routes:

* ``GET /health``: 200 once the model is loaded, 503 before; ``GET /metrics`` (Prometheus text,
  with the queue depth and requests in flight);
* OpenAI's: ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST /v1/embeddings`` (encoders),
  ``POST /v1/completions`` and ``/v1/chat/completions`` (decoders), and ``POST /v1/infer`` (any
  artifact: ``{"inputs": ...}`` -> ``{"outputs": ...}``); their errors are OpenAI's error object;
* text-embeddings-inference's: ``POST /embed`` (on the same batcher as ``/v1/embeddings``),
  ``POST /rerank``, ``POST /predict`` (and ``/classify``), with its error shape
  (``llmc.serving.errors``).

Every working route goes through :func:`admitted`: at most ``max_queue`` requests in flight
(streams count until their last event), beyond that 503 (TEI's routes: 429) with
``Retry-After``; a refused request is one line in its API's error shape and leaves the server
healthy. ``/v1/infer`` and the encoder routes are batched across connections
(``llmc.serving.batcher``).
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations as objects.
import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError
from llmc.serving import encoders
from llmc.serving.bounds import parse_json, read_body
from llmc.serving.engine import Engine, ServeSettings
from llmc.serving.errors import (
    LOADING,
    MODEL_NOT_FOUND,
    OVERLOADED,
    UNSUPPORTED,
    BadRequest,
    openai_error,
    tei_error,
)
from llmc.serving.protocol import outputs_json, parse_inputs

OPENAI, TEI = "openai", "tei"


class Served:
    """The app's state: the settings, and the engine once loaded (or the error that stopped it)."""

    def __init__(self, settings: ServeSettings, engine: Engine | None = None) -> None:
        self.settings, self.engine, self.error = settings, engine, None

    async def load(self) -> None:
        if self.engine is None:
            try:
                self.engine = await asyncio.get_running_loop().run_in_executor(None, Engine, self.settings)
            except Exception as exc:
                self.error = exc
                raise


def build_app(settings: ServeSettings, engine: Engine | None = None) -> Any:
    """The FastAPI app serving ``settings.artifact`` (``engine``: one already loaded)."""
    from fastapi import FastAPI

    served = Served(settings, engine)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        await served.load()
        yield
        if served.engine is not None:
            served.engine.close()  # a decoder's scheduler thread stops; its requests end with an error

    api = FastAPI(title="llmc", lifespan=lifespan)
    api.state.llmc = served
    _routes(api, served)
    return api


def _routes(api: Any, served: Served) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException

    import llmc.serving.jsonbody  # noqa: F401  (orjson: a missing one is llmc serve's one line at start)

    def route(dialect: str, handler: Callable[[Engine, Any], Awaitable[Any]]) -> Any:
        async def endpoint(request: Request) -> Any:
            return await admitted(served.engine, dialect, lambda engine: handler(engine, request))

        return endpoint

    for path, dialect, handler in (
        ("/v1/infer", OPENAI, _infer), ("/v1/embeddings", OPENAI, _embeddings),
        ("/v1/completions", OPENAI, _completion), ("/v1/chat/completions", OPENAI, _chat),
        ("/embed", TEI, _embed), ("/rerank", TEI, _rerank), ("/predict", TEI, _predict), ("/classify", TEI, _predict),
    ):
        api.add_api_route(path, route(dialect, handler), methods=["POST"], name=path, response_model=None)

    @api.get("/health", response_model=None)
    async def health() -> Any:
        engine = served.engine
        if engine is None:
            state = {"status": "failed", "error": str(served.error)} if served.error else {"status": "loading"}
            return JSONResponse(state, status_code=503)
        import resource

        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return JSONResponse({"status": "ok", "model": served.settings.served_model, "artifact": served.settings.artifact,
                             "pid": os.getpid(), "in_flight": engine.in_flight, "queue_depth": engine.queue_depth,
                             "peak_rss_mb": round(peak_mb, 1), **engine.health()})

    @api.get("/metrics", response_model=None)
    async def metrics() -> Any:
        engine = served.engine
        if engine is None:
            return PlainTextResponse("# loading\n", status_code=503)
        return PlainTextResponse(engine.metrics.prometheus(engine.gauges()), media_type="text/plain; version=0.0.4")

    @api.get("/v1/models", response_model=None)
    async def models() -> Any:
        return JSONResponse({"object": "list", "data": [_model_card(served.settings)]})

    @api.get("/v1/models/{model:path}", response_model=None)
    async def model(model: str) -> Any:
        if model != served.settings.served_model:
            return _error(_unknown_model(model, served.settings), OPENAI)
        return JSONResponse(_model_card(served.settings))

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:  # unknown routes, wrong methods
        if request.url.path.startswith("/v1/"):
            body = {"message": f"{request.method} {request.url.path}: {exc.detail}", "type": "invalid_request_error",
                    "param": None, "code": None}
            return JSONResponse({"error": body}, status_code=exc.status_code, headers=exc.headers)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def admitted(engine: Engine | None, dialect: str, handler: Callable[[Engine], Awaitable[Any]]) -> Any:
    """``handler(engine)``'s response; 503 while loading or beyond ``max_queue`` requests in
    flight; a :class:`BadRequest` as its API's error. A streamed response stays in flight until
    its last event (or its client goes)."""
    from fastapi.responses import StreamingResponse

    if engine is None:
        return _error(BadRequest("the model is still loading; retry shortly", LOADING), dialect)
    if engine.in_flight >= engine.settings.max_queue:
        engine.metrics.count("rejected_overload")
        message = f"overloaded: {engine.in_flight} requests in flight (--max-queue {engine.settings.max_queue}); retry"
        return _error(BadRequest(message, OVERLOADED), dialect)
    engine.in_flight += 1
    start = time.perf_counter()
    done = _Done(engine, start)
    try:
        response = await handler(engine)
        if isinstance(response, StreamingResponse):
            response.body_iterator = _Released(response.body_iterator, done)
            done = None
        engine.metrics.count("ok")
        return response
    except BadRequest as exc:
        engine.metrics.count(f"bad_{exc.status}")
        return _error(exc, dialect)
    finally:
        if done is not None:
            done()


class _Done:
    """Ends one request's time in flight, once."""

    def __init__(self, engine: Engine, start: float) -> None:
        self.engine, self.start = engine, start

    def __call__(self) -> None:
        if self.engine is not None:
            self.engine.in_flight -= 1
            self.engine.metrics.latency(time.perf_counter() - self.start)
            self.engine = None


class _Released:
    """A stream's events; its request leaves the in-flight count when the stream ends, fails,
    is closed, or is dropped unread (a client gone before the first event)."""

    def __init__(self, events: Any, done: _Done) -> None:
        self.events, self.done = events, done

    def __aiter__(self) -> "_Released":
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.events.__anext__()
        except BaseException:
            self.done()
            raise

    async def aclose(self) -> None:
        self.done()
        closer = getattr(self.events, "aclose", None)
        if closer is not None:
            await closer()

    def __del__(self) -> None:
        self.done()


def _error(exc: BadRequest, dialect: str) -> Any:
    from fastapi.responses import JSONResponse

    status, body = openai_error(exc) if dialect == OPENAI else tei_error(exc)
    headers = {"Retry-After": "1"} if exc.kind in (OVERLOADED, LOADING) else None
    return JSONResponse(body, status_code=status, headers=headers)


def _model_card(settings: ServeSettings) -> dict[str, Any]:
    try:
        created = int(Path(settings.artifact).stat().st_mtime)
    except OSError:
        created = 0
    return {"id": settings.served_model, "object": "model", "created": created, "owned_by": "llmc"}


def _unknown_model(name: Any, settings: ServeSettings) -> BadRequest:
    return BadRequest(f"the model '{name}' does not exist: this server serves '{settings.served_model}' "
                      "(GET /v1/models)", MODEL_NOT_FOUND, param="model")


def _check_model(engine: Engine, body: Any) -> None:
    """A ``model`` that is not a string is a 400; one this server does not serve, a 404."""
    model = body.get("model") if isinstance(body, dict) else None
    if model is not None and not isinstance(model, str):
        raise BadRequest('"model" must be a string (the id GET /v1/models lists)', param="model")
    if model is not None and model != engine.settings.served_model:
        raise _unknown_model(model, engine.settings)


async def read_json(request: Any) -> Any:
    """The body as JSON, bounded before it is parsed (``llmc.serving.bounds``)."""
    settings = request.app.state.llmc.settings
    return parse_json(await read_body(request, settings.max_body_mb << 20))


async def _infer(engine: Engine, request: Any) -> Any:
    from llmc.serving.jsonbody import FastJSONResponse

    arrival = time.perf_counter()
    with engine.infer.coming():
        feeds = parse_inputs(await read_json(request), engine.inputs, engine.settings.max_elements)
        engine.bounds.check(feeds)
    result = await engine.infer.submit((feeds, arrival))
    if isinstance(result, LlmcError):  # the model refused these inputs' values
        raise BadRequest(str(result))
    return FastJSONResponse(outputs_json(result))


async def _embeddings(engine: Engine, request: Any) -> Any:
    from llmc.serving.jsonbody import FastJSONResponse
    from llmc.spec.task import FEATURE_EXTRACTION, SENTENCE_EMBEDDING

    with engine.embed.coming():
        body = await read_json(request)
        _check_model(engine, body)
        encoders.require(engine.task, "embed", SENTENCE_EMBEDDING, FEATURE_EXTRACTION)
        texts, as_base64 = encoders.parse_embeddings(body, engine.embedding_dimension)
    vectors, tokens = _answer(await engine.embed.submit((texts, True)))
    wanted = body.get("dimensions")
    if wanted is not None and wanted != vectors.shape[-1]:
        raise BadRequest(f'"dimensions": this model gives {vectors.shape[-1]}-dimensional embeddings', param="dimensions")
    return FastJSONResponse(encoders.embeddings_json(vectors, tokens, engine.settings.served_model, as_base64))


async def _embed(engine: Engine, request: Any) -> Any:
    """TEI's ``POST /embed`` (``llmc.serving.encoders``)."""
    from llmc.serving.jsonbody import FastJSONResponse
    from llmc.spec.task import FEATURE_EXTRACTION, SENTENCE_EMBEDDING

    with engine.embed.coming():
        body = await read_json(request)
        encoders.require(engine.task, "embed", SENTENCE_EMBEDDING, FEATURE_EXTRACTION)
        in_graph = bool(engine.task.spec is not None and engine.task.spec.normalize)
        texts, normalize, truncate = encoders.parse_embed(body, in_graph)
    vectors, _ = _answer(await engine.embed.submit((texts, truncate)))
    return FastJSONResponse(encoders.embed_json(vectors, normalize and not in_graph))


async def _rerank(engine: Engine, request: Any) -> Any:
    from llmc.serving.jsonbody import FastJSONResponse
    from llmc.spec.task import FEATURE_EXTRACTION, SENTENCE_EMBEDDING, TEXT_CLASSIFICATION

    with engine.rerank.coming():
        body = await read_json(request)
        encoders.require(engine.task, "rerank", TEXT_CLASSIFICATION, SENTENCE_EMBEDDING, FEATURE_EXTRACTION)
        query, texts, raw, return_text = encoders.parse_rerank(body)
    ranked = _answer(await engine.rerank.submit((query, texts, raw)))
    return FastJSONResponse(encoders.rerank_json(ranked, texts, return_text))


async def _predict(engine: Engine, request: Any) -> Any:
    from llmc.serving.jsonbody import FastJSONResponse
    from llmc.spec.task import TEXT_CLASSIFICATION

    with engine.predict.coming():
        body = await read_json(request)
        encoders.require(engine.task, "classify", TEXT_CLASSIFICATION)
        sequences, batch, raw = encoders.parse_predict(body)
    labelled = _answer(await engine.predict.submit((sequences, raw)))
    return FastJSONResponse(encoders.predict_json(labelled, batch))


def _answer(result: Any) -> Any:
    if isinstance(result, BadRequest):  # this request alone refused in the batch (e.g. too many tokens)
        raise result
    if isinstance(result, LlmcError):  # the task API refused these texts with this model
        raise BadRequest(str(result), UNSUPPORTED)
    return result


async def _completion(engine: Engine, request: Any, chat: bool = False) -> Any:
    from fastapi.responses import JSONResponse, StreamingResponse

    from llmc.serving.completions import complete

    body = await read_json(request)
    _check_model(engine, body)
    return await complete(engine, body, chat, StreamingResponse, JSONResponse, gone=request.is_disconnected)


async def _chat(engine: Engine, request: Any) -> Any:
    return await _completion(engine, request, chat=True)
