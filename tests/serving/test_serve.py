"""``llmc serve`` on Ray Serve (``--replicas``, ``--address``, ``--emit-config``): the real server on
loopback, driven with concurrent, malformed and generation requests; answers equal the artifact's
own; the replica stays healthy; the encoder routes and two replicas on the same app."""

from __future__ import annotations

import concurrent.futures as futures
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.serving.protocol import BadRequest, InputSpec, parse_inputs
from tests.serving.conftest import free_port

pytest.importorskip("ray.serve")
requests = pytest.importorskip("requests")
pytest.importorskip("transformers")

runner = CliRunner()


@pytest.fixture(scope="module")
def server():
    from llmc.serving.engine import ServeSettings
    from llmc.serving.run import start, stop

    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def deploy(path, **options):
        import ray

        if ray.is_initialized():  # the previous application's replicas go first (their CPUs)
            from ray import serve

            serve.delete("llmc")
        start(ServeSettings(str(path), **options), "127.0.0.1", port)
        return base

    yield deploy
    stop()


def _ids(rng, rows, width):
    return {"input_ids": rng.integers(1, 90, (rows, width)).tolist(), "attention_mask": np.ones((rows, width), int).tolist()}


def test_infer_concurrent_and_malformed(server, artifacts):
    base = server(artifacts[0], max_batch_size=8, batch_wait_ms=20, max_queue=64, max_elements=10_000)
    assert requests.get(base + "/health").json()["status"] == "ok"
    direct = llmc.load(artifacts[0], threads=1)
    rng = np.random.default_rng(0)
    bodies = [_ids(rng, 1 + i % 2, 4 + i % 3) for i in range(24)]
    with futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda b: requests.post(base + "/v1/infer", json={"inputs": b}), bodies))
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.status_code == 200, answer.text
        want = direct.run({k: np.array(v, np.int64) for k, v in body.items()})
        for name, array in want.items():
            np.testing.assert_allclose(np.array(answer.json()["outputs"][name]), array, atol=1e-5, rtol=1e-5)
    bad = {
        "{not json": (400, "not valid JSON"),
        json.dumps({"inputs": {"input_ids": [[1, 2]]}}): (400, "missing input(s) attention_mask"),
        json.dumps({"inputs": {"input_ids": [[1]], "attention_mask": [[1]], "extra": [1]}}): (400, "unknown input(s) extra"),
        json.dumps({"inputs": {"input_ids": [[1.5]], "attention_mask": [[1]]}}): (400, "integers"),
        json.dumps({"inputs": {"input_ids": [1, 2], "attention_mask": [1, 1]}}): (400, "rank 1"),
        json.dumps({"inputs": {"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], [1]]}}): (400, "rectangular"),
        json.dumps({"inputs": _ids(rng, 100, 60)}): (413, "more than 10000"),
        json.dumps([1, 2]): (400, "JSON object"),
        json.dumps({"inputs": {"input_ids": [[5, 10**6]], "attention_mask": [[1, 1]]}}): (400, "outside [0, 1000)"),
    }
    for body, (status, words) in bad.items():
        answer = requests.post(base + "/v1/infer", data=body)
        error = answer.json()["error"]  # OpenAI's error object
        assert answer.status_code == status and words in error["message"], (body[:40], answer.text)
        assert error["type"] == "invalid_request_error" and set(error) == {"message", "type", "param", "code"}
    assert requests.get(base + "/health").status_code == 200
    metrics = requests.get(base + "/metrics").text
    assert 'llmc_requests_total{outcome="ok"} 24' in metrics and 'outcome="bad_400"} 8' in metrics
    runs = float(metrics.split("llmc_batch_rows_count ")[1].split()[0])
    assert runs < 24  # concurrent requests of different lengths were merged into fewer runs
    assert float(metrics.split("llmc_queue_seconds_count ")[1].split()[0]) == 24  # refusals never queue


def test_completions_match_the_runtime_and_stream(server, artifacts):
    base = server(artifacts[1], max_queue=8)
    direct = llmc.load(artifacts[1], threads=1)
    want = direct.generate("hello world", max_new_tokens=6, temperature=0.0)
    answer = requests.post(base + "/v1/completions", json={"prompt": "hello world", "max_tokens": 6, "temperature": 0})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["choices"][0]["text"] == want.text and body["object"] == "text_completion"
    assert body["usage"] == {"prompt_tokens": want.prompt_tokens, "completion_tokens": want.tokens,
                             "total_tokens": want.prompt_tokens + want.tokens}
    events = requests.post(base + "/v1/completions", json={"prompt": "hello world", "max_tokens": 6, "temperature": 0,
                                                           "stream": True, "stream_options": {"include_usage": True}},
                           stream=True)
    chunks = [line[6:] for line in events.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert chunks[-1] == "[DONE]"
    pieces = [json.loads(c) for c in chunks[:-1]]
    assert "".join(p["choices"][0]["text"] for p in pieces if p["choices"]) == want.text
    assert pieces[-1]["choices"] == [] and pieces[-1]["usage"]["completion_tokens"] == want.tokens
    for payload, words in (({"max_tokens": 6}, '"prompt"'), ({"prompt": "x", "max_tokens": 0}, '"max_tokens"'),
                           ({"prompt": "x", "temperature": "hot"}, '"temperature"'), ({"prompt": "x", "stop": 3}, '"stop"')):
        answer = requests.post(base + "/v1/completions", json=payload)
        assert answer.status_code == 400 and words in answer.json()["error"]["message"]
    answer = requests.post(base + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code in (200, 400)  # 400: the tiny tokenizer has no chat template, said in one line
    if answer.status_code == 400:
        assert "chat template" in answer.json()["error"]["message"]
    assert requests.post(base + "/v1/infer", data="{}").status_code == 400
    assert requests.get(base + "/health").status_code == 200


def test_parse_inputs_checks_each_field():
    specs = [InputSpec("ids", np.int64, (None, None)), InputSpec("x", np.float32, (None, 3))]
    feeds = parse_inputs({"inputs": {"ids": [[1, 2]], "x": [[0.5, 1, 2]]}}, specs, 100)
    assert feeds["ids"].dtype == np.int64 and feeds["x"].dtype == np.float32
    for body, words in (({"inputs": {"ids": [[1]], "x": [[1, 2]]}}, "takes 3"),
                        ({"inputs": {"ids": [[1]], "x": [[1, 2, 3]] * 2}}, "batch size"),
                        ({"inputs": {"ids": [[2**70]], "x": [[1, 2, 3]]}}, "rectangular nested list"),
                        ({"inputs": {"ids": [1, 2], "x": [[1, 2, 3]]}}, "rank 1")):
        with pytest.raises(BadRequest, match=words):
            parse_inputs(body, specs, 100)


def test_emit_config_for_a_cluster(artifacts, tmp_path):
    path = tmp_path / "serve.yaml"
    result = runner.invoke(app, ["serve", str(artifacts[0]), "--replicas", "3", "--threads-per-replica", "2",
                                 "--port", "9000", "--emit-config", str(path)])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(path.read_text())
    (application,) = config["applications"]
    assert application["import_path"] == "llmc.serving.server:app"
    assert application["args"]["artifact"] == str(artifacts[0].resolve()) and config["http_options"]["port"] == 9000
    assert application["deployments"][0]["num_replicas"] == 3
    assert application["deployments"][0]["ray_actor_options"]["num_cpus"] == 2
    result = runner.invoke(app, ["serve", str(artifacts[0]), "--replicas", "0", "--emit-config", str(path)])
    assert result.exit_code == 1 and "--replicas must be >= 1" in result.output
    result = runner.invoke(app, ["serve", str(artifacts[0]), "--max-tokens", "2048", "--emit-config", str(path)])
    assert result.exit_code == 0 and yaml.safe_load(path.read_text())["applications"][0]["args"]["max_new_tokens"] == 2048
    result = runner.invoke(app, ["serve", str(artifacts[0]), "--max-tokens", "0", "--emit-config", str(path)])
    assert result.exit_code == 1 and "--max-tokens must be >= 1" in result.output


def test_padded_merge_gives_each_request_its_own_answer(artifacts):
    """Requests of different lengths padded into one run and cut back: the artifact's answers."""
    from llmc.serving.engine import Engine, ServeSettings

    engine = Engine(ServeSettings(str(artifacts[0])))
    assert engine.padded_merge
    # A server's threads spin while a run lasts and stop when it returns (llmc.serving.engine).
    assert engine.runner.session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    rng = np.random.default_rng(1)
    requests_ = [{k: np.array(v, np.int64) for k, v in _ids(rng, rows, width).items()} for rows, width in
                 ((1, 3), (2, 9), (1, 1), (3, 6))]
    answers = engine.run_batch([(r, 0.0) for r in requests_])
    for request, answer in zip(requests_, answers, strict=True):
        for name, want in engine.runner.run(request).items():
            assert answer[name].shape == want.shape
            np.testing.assert_allclose(answer[name], want, atol=1e-5, rtol=1e-5)
    assert engine.metrics.batch_rows.count == 1  # one run for all four
    # A request the model refuses (a token id beyond the vocabulary) fails alone in a merged run.
    bad = {"input_ids": np.array([[5, 10**6]]), "attention_mask": np.ones((1, 2), np.int64)}
    answers = engine.run_batch([(requests_[0], 0.0), (bad, 0.0), (requests_[3], 0.0)])
    assert isinstance(answers[1], LlmcError) and "\n" not in str(answers[1])
    np.testing.assert_allclose(answers[2]["last_hidden_state"], engine.runner.run(requests_[3])["last_hidden_state"],
                               atol=1e-5, rtol=1e-5)


TEXTS = ["A short one.", "Mid-length text about embeddings.", "The quick brown fox jumps over the lazy dog.", "x"]


def test_the_same_routes_on_ray(server, embedder):
    """The app's encoder routes on Ray Serve answer as the task API does (as on uvicorn)."""
    base = server(embedder.artifact, model_name="tiny-embedder")
    assert [m["id"] for m in requests.get(base + "/v1/models").json()["data"]] == ["tiny-embedder"]
    direct = llmc.load(embedder.artifact, threads=1)
    body = requests.post(base + "/v1/embeddings", json={"model": "tiny-embedder", "input": TEXTS}).json()
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS))) and body["object"] == "list"
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], direct.embed(TEXTS), atol=1e-6)
    ranked = requests.post(base + "/rerank", json={"query": TEXTS[0], "texts": TEXTS[1:]}).json()
    want = direct.rerank(TEXTS[0], TEXTS[1:])
    assert [r["index"] for r in ranked] == [i for i, _ in want]
    np.testing.assert_allclose([r["score"] for r in ranked], [score for _, score in want], atol=1e-6)
    answer = requests.post(base + "/v1/embeddings", json={"model": "another", "input": "x"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    answer = requests.post(base + "/predict", json={"inputs": "x"})  # an embedder does not classify
    assert answer.status_code == 424 and answer.json()["error_type"] == "Backend"
    assert requests.get(base + "/health").json()["status"] == "ok"


def test_two_replicas_answer_identically(server, artifacts):
    base = server(artifacts[0], replicas=2)
    feeds = _ids(np.random.default_rng(2), 2, 5)
    pids = {requests.get(base + "/health").json()["pid"] for _ in range(30)}
    assert len(pids) == 2  # both replicas are up and answer
    with futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: requests.post(base + "/v1/infer", json={"inputs": feeds}), range(24)))
    want = llmc.load(artifacts[0], threads=1).run({k: np.array(v, np.int64) for k, v in feeds.items()})
    for answer in answers:  # whichever replica answered, merged with others or not
        assert answer.status_code == 200, answer.text
        for name, array in want.items():
            np.testing.assert_allclose(np.array(answer.json()["outputs"][name]), array, atol=1e-5, rtol=1e-5)
