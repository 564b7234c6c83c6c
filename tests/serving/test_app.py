"""``llmc serve``'s app in one process on uvicorn (no Ray): OpenAI's routes driven by the official
``openai`` client, text-embeddings-inference's routes, batching across connections, and errors in
each API's shape; answers equal the task API's and the artifact's own."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures as futures
import json
import socket
import subprocess
import sys

import numpy as np
import pytest

import llmc
from llmc.errors import LlmcError
from llmc.serving.engine import ServeSettings
from llmc.serving.run import LocalServer
from tests.serving.conftest import free_port

openai = pytest.importorskip("openai")
requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TEXTS = [
    "A short one.",
    "This sentence is somewhat longer than the first one, with a few more words in it.",
    "Mid-length text about embeddings.",
    "x",
    "The quick brown fox jumps over the lazy dog while the cat watches from the windowsill.",
    "Another mid-length sentence here.",
]


@pytest.fixture(scope="module")
def embedding_server(embedder):
    with LocalServer(ServeSettings(str(embedder.artifact), model_name="tiny-embedder", batch_wait_ms=20)) as url:
        yield url


@pytest.fixture(scope="module")
def rerank_server(cross_encoder):
    with LocalServer(ServeSettings(str(cross_encoder.artifact), batch_wait_ms=20)) as url:
        yield url


def _client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_models_and_embeddings_equal_the_task_api(embedding_server, embedder):
    from llmc.tasks.model import task_model

    client = _client(embedding_server)
    assert [m.id for m in client.models.list()] == ["tiny-embedder"]
    assert client.models.retrieve("tiny-embedder").owned_by == "llmc"
    runner = llmc.load(embedder.artifact, threads=1)
    want = runner.embed(TEXTS)
    floats = client.embeddings.create(model="tiny-embedder", input=TEXTS, encoding_format="float")
    assert floats.object == "list" and floats.model == "tiny-embedder"
    assert [(d.object, d.index) for d in floats.data] == [("embedding", i) for i in range(len(TEXTS))]
    got = np.array([d.embedding for d in floats.data], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    tokens = sum(len(e.ids) for e in task_model(runner).tokenizer.encode(TEXTS))
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == tokens
    decoded = client.embeddings.create(model="tiny-embedder", input=TEXTS)  # the client asks for base64
    np.testing.assert_array_equal(np.array([d.embedding for d in decoded.data], dtype=np.float32), got)
    raw = requests.post(embedding_server + "/v1/embeddings", json={"input": TEXTS[:2], "encoding_format": "base64"})
    vectors = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw.json()["data"]]
    np.testing.assert_array_equal(np.stack(vectors), got[:2])
    one = client.embeddings.create(model="tiny-embedder", input=TEXTS[3], dimensions=64, encoding_format="float")
    np.testing.assert_allclose(np.array([one.data[0].embedding]), runner.embed(TEXTS[3]), rtol=0, atol=1e-6)


def test_openai_errors_have_openai_shape_and_status(embedding_server):
    client = _client(embedding_server)
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="gpt-nothing", input="x")
    error = caught.value
    assert (error.status_code, error.code, error.param, error.type) == (404, "model_not_found", "model",
                                                                         "invalid_request_error")
    for options, param, words in (
        ({"input": "x", "dimensions": 7}, "dimensions", "64-dimensional"),
        ({"input": [[1, 2, 3]]}, "input", "token ids"),
        ({"input": []}, "input", "empty"),
        ({"input": ""}, "input", "empty string"), ({"input": ["x", ""]}, "input", "input[1]"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "float"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model="tiny-embedder", **options)
        assert caught.value.status_code == 400 and caught.value.param == param and words in caught.value.message
    with pytest.raises(openai.NotFoundError, match="decoder"):  # an encoder does not complete
        client.completions.create(model="tiny-embedder", prompt="hello")
    for path, body, status in (("/v1/embeddings", "{not json", 400), ("/v1/nothing", "{}", 404)):
        answer = requests.post(embedding_server + path, data=body)
        assert answer.status_code == status
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    answer = requests.post(embedding_server + "/predict", json={"inputs": "x"})  # not a classifier: TEI's Backend
    assert answer.status_code == 424 and answer.json()["error_type"] == "Backend" and "classify" in answer.json()["error"]
    health = requests.get(embedding_server + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_rerank_and_predict_equal_the_task_api(rerank_server, cross_encoder):
    runner = llmc.load(cross_encoder.artifact, threads=1)
    query, texts = TEXTS[0], TEXTS[1:]
    ranked = requests.post(rerank_server + "/rerank", json={"query": query, "texts": texts, "return_text": True}).json()
    want = runner.rerank(query, texts)
    assert [r["index"] for r in ranked] == [i for i, _ in want]
    np.testing.assert_allclose([r["score"] for r in ranked], [s for _, s in want], rtol=0, atol=1e-6)
    assert [r["text"] for r in ranked] == [texts[i] for i, _ in want]
    raw = requests.post(rerank_server + "/rerank", json={"query": query, "texts": texts, "raw_scores": True}).json()
    assert [r["index"] for r in raw] == [i for i, _ in want] and "text" not in raw[0]
    np.testing.assert_allclose(1 / (1 + np.exp(-np.array([r["score"] for r in raw]))), [s for _, s in want], atol=1e-6)

    def labels(answer):
        return [(p["label"], round(p["score"], 6)) for p in answer]

    def expected(found):
        return [(label, round(score, 6)) for label, score in found]

    single = requests.post(rerank_server + "/predict", json={"inputs": texts[0]}).json()
    assert labels(single) == expected(runner.classify(texts[0])[0])
    pair = requests.post(rerank_server + "/predict", json={"inputs": [query, texts[1]]}).json()
    assert labels(pair) == expected(runner.classify(pairs=[(query, texts[1])])[0])
    batch = requests.post(rerank_server + "/classify", json={"inputs": [[texts[0]], [query, texts[1]]]}).json()
    assert [labels(b) for b in batch] == [labels(single), labels(pair)]
    for body, status, kind in (({"texts": ["a"]}, 422, "Validation"), ({"query": "q", "texts": []}, 400, "Empty")):
        answer = requests.post(rerank_server + "/rerank", json=body)
        assert answer.status_code == status and answer.json()["error_type"] == kind, answer.text
    assert requests.post(rerank_server + "/predict", json={"inputs": ["a", "b", "c"]}).status_code == 422


def test_an_embedder_reranks_by_cosine(embedding_server, embedder):
    ranked = requests.post(embedding_server + "/rerank", json={"query": TEXTS[0], "texts": TEXTS[1:]}).json()
    want = llmc.load(embedder.artifact, threads=1).rerank(TEXTS[0], TEXTS[1:])
    assert [(r["index"], round(r["score"], 5)) for r in ranked] == [(i, round(s, 5)) for i, s in want]


def _uncut_length(runner, text):
    from tokenizers import Tokenizer

    from llmc.tasks.model import task_model

    tokenizer = Tokenizer.from_str(task_model(runner).tokenizer.tokenizer.to_str())
    tokenizer.no_truncation()
    return len(tokenizer.encode(text).ids)


def test_tei_embed_equals_the_task_api_and_refuses_long_inputs(embedding_server, embedder):
    from llmc.tasks.model import task_model

    runner = llmc.load(embedder.artifact, threads=1)
    got = requests.post(embedding_server + "/embed", json={"inputs": TEXTS})
    assert got.status_code == 200, got.text
    np.testing.assert_allclose(np.array(got.json(), np.float32), runner.embed(TEXTS), rtol=0, atol=1e-6)
    one = requests.post(embedding_server + "/embed", json={"inputs": TEXTS[1], "normalize": True}).json()
    assert len(one) == 1 and len(one[0]) == 64  # a list of vectors even for one string
    np.testing.assert_allclose(np.array(one, np.float32), runner.embed(TEXTS[1:2]), rtol=0, atol=1e-6)
    limit = task_model(runner).max_length
    assert limit is not None
    long = " ".join(["word"] * (limit + 20))
    given = _uncut_length(runner, long)
    assert given > limit
    refused = requests.post(embedding_server + "/embed", json={"inputs": [TEXTS[0], long]})
    assert refused.status_code == 413
    assert refused.json() == {"error": f"`inputs` must have less than {limit} tokens. Given: {given}",
                              "error_type": "Validation"}
    cut = requests.post(embedding_server + "/embed", json={"inputs": long, "truncate": True})
    assert cut.status_code == 200, cut.text
    np.testing.assert_allclose(np.array(cut.json(), np.float32), runner.embed([long]), rtol=0, atol=1e-6)
    silent = requests.post(embedding_server + "/v1/embeddings", json={"input": long, "encoding_format": "float"})
    assert silent.status_code == 200  # OpenAI's route cuts, as the task API does
    np.testing.assert_allclose([silent.json()["data"][0]["embedding"]], runner.embed([long]), rtol=0, atol=1e-6)
    for body, status, kind, words in (
        ({"inputs": "x", "normalize": False}, 422, "Validation", "normalises its embeddings in its graph"),
        ({"inputs": []}, 400, "Empty", "empty"),
        ({"inputs": 3}, 422, "Validation", "string"),
        ({"inputs": "x", "truncate": "yes"}, 422, "Validation", "truncate"),
    ):
        answer = requests.post(embedding_server + "/embed", json=body)
        assert (answer.status_code, answer.json()["error_type"]) == (status, kind), answer.text
        assert words in answer.json()["error"]
    assert requests.get(embedding_server + "/health").status_code == 200


def test_a_long_input_refuses_only_its_own_request_in_a_batch(embedder):
    """One batcher run holding requests that may and may not be cut: only the one that may not
    (``truncate`` false) is refused; the others' vectors equal the task API's."""
    from llmc.serving.encoders import embed_batch
    from llmc.serving.errors import BadRequest
    from llmc.tasks.model import task_model

    runner = llmc.load(embedder.artifact, threads=1)
    task = task_model(runner)
    long = " ".join(["word"] * (task.max_length + 5))
    answers = embed_batch(task, [(TEXTS[:2], False), ([TEXTS[2], long], False), ([long], True), TEXTS[3:5]])
    assert isinstance(answers[1], BadRequest) and answers[1].kind.tei_status == 413
    assert f"Given: {_uncut_length(runner, long)}" in str(answers[1])
    for answer, texts in ((answers[0], TEXTS[:2]), (answers[2], [long]), (answers[3], TEXTS[3:5])):
        vectors, tokens = answer
        np.testing.assert_allclose(vectors, runner.embed(texts), rtol=0, atol=1e-6)
        assert tokens == sum(len(e.ids) for e in task.tokenizer.encode(texts))
    assert embed_batch(task, [([long], False)])[0].status == 413  # the tokenizer cuts again after a refusal
    assert len(embed_batch(task, [([long], True)])[0][0]) == 1


def test_tei_embed_normalises_only_when_asked():
    from llmc.serving.encoders import embed_json

    assert embed_json(np.array([[3.0, 4.0]]), True) == [[0.6000000238418579, 0.800000011920929]]
    assert embed_json(np.array([[3.0, 4.0]]), False) == [[3.0, 4.0]]


def _ids(rng, rows, width):
    return {"input_ids": rng.integers(1, 90, (rows, width)).tolist(), "attention_mask": np.ones((rows, width), int).tolist()}


def _count(metrics: str, name: str) -> float:
    return float(metrics.split(f"\n{name} ")[1].split()[0])


def test_concurrent_requests_are_merged(artifacts, embedder):
    """Requests on concurrent connections share runs; each answer is its request's alone."""
    direct = llmc.load(artifacts[0], threads=1)
    rng = np.random.default_rng(0)
    bodies = [_ids(rng, 1 + i % 2, 4 + i % 3) for i in range(24)]
    with LocalServer(ServeSettings(str(artifacts[0]), batch_wait_ms=20)) as url, futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda b: requests.post(url + "/v1/infer", json={"inputs": b}), bodies))
        metrics = requests.get(url + "/metrics").text
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.status_code == 200, answer.text
        want = direct.run({k: np.array(v, np.int64) for k, v in body.items()})
        for name, array in want.items():
            np.testing.assert_allclose(np.array(answer.json()["outputs"][name]), array, atol=1e-5, rtol=1e-5)
    assert _count(metrics, "llmc_batch_rows_count") < 24  # fewer runs than requests
    assert _count(metrics, "llmc_requests_in_flight") == 0  # all answered (/metrics itself is not counted)
    assert "llmc_queue_depth 0" in metrics

    runner = llmc.load(embedder.artifact, threads=1)
    with LocalServer(ServeSettings(str(embedder.artifact), batch_wait_ms=20)) as url, futures.ThreadPoolExecutor(12) as pool:
        posted = list(pool.map(lambda t: requests.post(url + "/v1/embeddings", json={"input": t}), TEXTS * 3))
        metrics = requests.get(url + "/metrics").text
    for text, answer in zip(TEXTS * 3, posted, strict=True):
        np.testing.assert_allclose(answer.json()["data"][0]["embedding"], runner.embed(text)[0], rtol=0, atol=1e-5)
    assert _count(metrics, "llmc_batch_rows_count") < len(TEXTS) * 3


class _Busy:
    """An engine's admission state only (no model)."""

    def __init__(self, max_queue: int, in_flight: int = 0) -> None:
        from llmc.serving.metrics import Metrics

        self.settings, self.in_flight, self.metrics = ServeSettings("x", max_queue=max_queue), in_flight, Metrics()


def test_overload_answers_503_with_retry_after():
    from llmc.serving.app import OPENAI, TEI, admitted

    busy = _Busy(max_queue=2, in_flight=2)

    async def handler(engine):
        raise AssertionError("not admitted")

    response = asyncio.run(admitted(busy, OPENAI, handler))
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    error = json.loads(response.body)["error"]
    assert error["type"] == "server_error" and error["code"] == "overloaded" and "--max-queue 2" in error["message"]
    response = asyncio.run(admitted(busy, TEI, handler))  # text-embeddings-inference says 429 Overloaded
    assert response.status_code == 429 and json.loads(response.body)["error_type"] == "Overloaded"
    assert 'outcome="rejected_overload"} 2' in busy.metrics.prometheus()


def test_a_stream_stays_in_flight_until_its_last_event():
    from fastapi.responses import StreamingResponse

    from llmc.serving.app import OPENAI, admitted

    engine = _Busy(max_queue=1)

    async def scenario():
        finish = asyncio.Event()

        async def events():
            yield "data: 1\n\n"
            await finish.wait()
            yield "data: [DONE]\n\n"

        async def stream(_):
            return StreamingResponse(events())

        first = await admitted(engine, OPENAI, stream)
        assert engine.in_flight == 1  # answered with a stream, still generating
        second = await admitted(engine, OPENAI, stream)
        assert second.status_code == 503
        chunks = [await first.body_iterator.__anext__()]
        finish.set()
        chunks += [chunk async for chunk in first.body_iterator]
        assert chunks == ["data: 1\n\n", "data: [DONE]\n\n"] and engine.in_flight == 0
        unread = await admitted(engine, OPENAI, stream)  # a client gone before the first event
        assert engine.in_flight == 1
        await unread.body_iterator.aclose()
        assert engine.in_flight == 0

    asyncio.run(scenario())


async def _call(app, method, path, body=b""):
    """One request straight to the ASGI app (no server, no lifespan): (status, headers, JSON)."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "http_version": "1.1", "scheme": "http",
             "server": ("test", 80), "client": ("test", 1), "root_path": "", "asgi": {"version": "3.0"}}
    await app(scope, receive, send)
    headers = dict(sent[0]["headers"])
    return sent[0]["status"], headers, json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def test_health_is_ready_only_once_the_model_is_loaded(embedder):
    from llmc.serving.app import build_app

    app = build_app(ServeSettings(str(embedder.artifact)))

    async def scenario():
        status, _, body = await _call(app, "GET", "/health")
        assert status == 503 and body == {"status": "loading"}
        status, headers, body = await _call(app, "POST", "/v1/embeddings", b'{"input": "x"}')
        assert status == 503 and body["error"]["code"] == "loading" and headers[b"retry-after"] == b"1"
        status, _, body = await _call(app, "POST", "/rerank", b'{"query": "q", "texts": ["x"]}')
        assert status == 503 and body["error_type"] == "Unhealthy"
        assert (await _call(app, "GET", "/v1/models"))[0] == 200  # what is served is known before it loads
        await app.state.llmc.load()  # what the lifespan does before the server listens
        status, _, body = await _call(app, "GET", "/health")
        assert status == 200 and body["status"] == "ok"
        status, _, body = await _call(app, "POST", "/v1/embeddings", b'{"input": "x"}')
        assert status == 200 and len(body["data"][0]["embedding"]) == 64

    asyncio.run(scenario())


def test_no_connection_before_the_model_is_loaded_and_a_failed_load_is_one_line(tmp_path):
    from llmc.serving.run import _listening_socket

    port = free_port()
    sock = _listening_socket("127.0.0.1", port)  # bound while the model loads, not listening
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        sock.close()
    with socket.create_server(("127.0.0.1", port)), pytest.raises(LlmcError, match=f"cannot listen on 127.0.0.1:{port}"):
        _listening_socket("127.0.0.1", port)  # another server has the port
    with pytest.raises(LlmcError, match="did not start") as caught:
        LocalServer(ServeSettings(str(tmp_path / "missing"))).start()
    assert "\n" not in str(caught.value)


def test_llmc_serve_runs_one_process_without_ray(embedder):
    """`llmc serve ARTIFACT` (no --replicas/--address): uvicorn in this process; Ray is not imported."""
    port = free_port()
    script = f"""
import json, os, sys, threading, time, urllib.request
from llmc.cli.main import app
threading.Thread(target=lambda: app(["serve", {str(embedder.artifact)!r}, "--port", "{port}",
                 "--served-model-name", "e"], standalone_mode=False), daemon=True).start()
for _ in range(600):
    try:
        health = json.load(urllib.request.urlopen("http://127.0.0.1:{port}/health"))
        break
    except OSError:
        time.sleep(0.1)
models = json.load(urllib.request.urlopen("http://127.0.0.1:{port}/v1/models"))
print(json.dumps({{"ray": "ray" in sys.modules, "status": health["status"], "model": models["data"][0]["id"]}}), flush=True)
os._exit(0)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    (found,) = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert json.loads(found) == {"ray": False, "status": "ok", "model": "e"}


def test_completions_on_uvicorn_equal_generate(artifacts):
    direct = llmc.load(artifacts[1], threads=1)
    want = direct.generate("hello world", max_new_tokens=6, temperature=0.0)
    with LocalServer(ServeSettings(str(artifacts[1]), model_name="tiny-llama")) as url:
        client = _client(url)
        answer = client.completions.create(model="tiny-llama", prompt="hello world", max_tokens=6, temperature=0)
        assert answer.choices[0].text == want.text and answer.usage.completion_tokens == want.tokens
        pieces = client.completions.create(model="tiny-llama", prompt="hello world", max_tokens=6, temperature=0,
                                           stream=True)
        assert "".join(chunk.choices[0].text for chunk in pieces) == want.text
        with pytest.raises(openai.NotFoundError) as caught:
            client.completions.create(model="tiny-embedder", prompt="hello world")
        assert caught.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model="tiny-llama", prompt="hello world", max_tokens=0)
        assert caught.value.param == "max_tokens"
        with pytest.raises(openai.NotFoundError):  # a decoder does not embed
            client.embeddings.create(model="tiny-llama", input="hello")
        metrics = requests.get(url + "/metrics").text
    assert "llmc_requests_in_flight 0" in metrics and 'outcome="ok"} 2' in metrics
