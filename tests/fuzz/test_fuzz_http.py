"""Fuzzing the server through real HTTP (uvicorn, one process): arbitrary JSON, deep nesting, lone
surrogates, non-finite numbers, oversized bodies, and well-formed requests with hostile values
(huge position ids, negative token ids, long masks, long pasts, wild OpenAI fields) at every
route of a decoder artifact. Every answer is a result or one error in its API's shape, never a
500, and ``/health`` answers within 100 ms after each. Example counts scale with
``LLMC_FUZZ_EXAMPLES``."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmc.serving.engine import ServeSettings
from llmc.serving.run import LocalServer
from tests.fuzz.contract import fuzz_settings

requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("transformers")
from tests.serving.test_openai_decoding import chat_artifact  # noqa: E402, F401  (the fixture this module reuses)

ROUTES = ("/v1/infer", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/rerank", "/predict")
REFUSALS = {400, 404, 413, 422, 424}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0xDFFF), max_size=20),
)
any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                              max_size=4), max_leaves=20)
hostile_ints = st.sampled_from([-1, -(2**40), 2**31, 2**62, 10**9, 63, 64, 0])


@st.composite
def infer_bodies(draw):
    length = draw(st.integers(1, 6))
    past = draw(st.sampled_from([1, 3]))  # JSON cannot spell a 0-long axis inside a nested list
    heads = {name: [[[[0.0] * 16] * past] * 2] for name in _cache_names()}
    inputs = {"input_ids": [[draw(hostile_ints) for _ in range(length)]],
              "attention_mask": [[draw(st.sampled_from([1, 0, 2, -1])) for _ in range(length + past)]],
              "position_ids": [[draw(hostile_ints) for _ in range(length)]], **heads}
    if draw(st.booleans()):
        inputs["attention_mask"] = [[1] * draw(st.sampled_from([10**5, 3 * 10**5]))]
    return {"inputs": inputs}


@st.composite
def openai_bodies(draw):
    body = {"model": draw(st.sampled_from(["tiny-chat", "other", 3])), "messages": [{"role": "user", "content": "w5 w6"}],
            "prompt": "w5 w6"}
    for key in draw(st.lists(st.sampled_from(["n", "max_tokens", "temperature", "top_p", "seed", "stop", "logprobs",
                                              "top_logprobs", "stream", "presence_penalty", "response_format",
                                              "stream_options", "min_tokens", "max_completion_tokens", "tools"]),
                             max_size=4, unique=True)):
        body[key] = draw(st.one_of(scalars, hostile_ints, st.lists(scalars, max_size=3)))
    return body


def _cache_names():
    return [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]


@pytest.fixture(scope="module")
def server(chat_artifact):  # noqa: F811
    with LocalServer(ServeSettings(str(chat_artifact), model_name="tiny-chat", slots=2, kv_cache_mb=1,
                                   max_body_mb=1)) as url:
        yield url


def _send(server, route, payload):
    answer = requests.post(server + route, data=payload, timeout=30,
                           headers={"content-type": "application/json"})
    assert answer.status_code == 200 or answer.status_code in REFUSALS, (route, payload[:300], answer.text[:300])
    if answer.status_code != 200:
        body = answer.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body["error"]
        assert "\n" not in message and "Traceback" not in message
    started = time.perf_counter()
    assert requests.get(server + "/health", timeout=5).status_code == 200
    assert time.perf_counter() - started < 0.1


@fuzz_settings(12)
@given(route=st.sampled_from(ROUTES), body=any_json)
def test_arbitrary_json_is_refused_in_one_line(server, route, body):
    _send(server, route, json.dumps(body, allow_nan=True).encode())


@fuzz_settings(12)
@given(body=infer_bodies())
def test_hostile_infer_values_are_bounded_before_running(server, body):
    _send(server, "/v1/infer", json.dumps(body).encode())


@fuzz_settings(12)
@given(chat=st.booleans(), body=openai_bodies())
def test_hostile_openai_fields_are_one_error_each(server, chat, body):
    body = {**body, "max_tokens": body.get("max_tokens", 4)}
    _send(server, "/v1/chat/completions" if chat else "/v1/completions", json.dumps(body, allow_nan=True).encode())


@pytest.mark.parametrize("payload", [
    b"[" * 100_000 + b"]" * 100_000, b'{"prompt": "\\ud800"}', b'{"prompt": NaN}', b"x" * (2 << 20),
    b'{"inputs": {"input_ids": [[-1]]}}', b"\xff\xfe",
])
def test_malformed_bodies(server, payload):
    for route in ROUTES:
        _send(server, route, payload)


@pytest.mark.parametrize(("change", "words"), [
    ({}, None), ({"input_ids": [[-1]]}, "outside [0, 64)"), ({"input_ids": [[64]]}, "outside [0, 64)"),
    ({"position_ids": [[10**9]]}, "position_ids"), ({"attention_mask": [[1, 2]]}, "only 0 and 1"),
    ({"attention_mask": [[1] * 40_000]}, "context"),
])
def test_infer_values_past_the_model_are_refused(server, change, words):
    inputs = {"input_ids": [[5]], "attention_mask": [[1, 1]], "position_ids": [[1]],
              **{name: [[[[0.0] * 16]] * 2] for name in _cache_names()}, **change}
    answer = requests.post(server + "/v1/infer", json={"inputs": inputs}, timeout=30)
    if words is None:  # the well-formed request the others change one value of
        assert answer.status_code == 200 and len(answer.json()["outputs"]["logits"][0][0]) == 64, answer.text
        return
    assert answer.status_code == 400 and words in answer.json()["error"]["message"], answer.text
