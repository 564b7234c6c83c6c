"""Chat and completions through the official ``openai`` client on a uvicorn server with continuous
batching: greedy answers equal ``Runner.generate`` alone or under concurrency, ``n``, logprobs,
streams with usage, the pinned system prompt, a client gone frees its slot, and every refused
field is one OpenAI error with the server still healthy."""

from __future__ import annotations

import concurrent.futures as futures
import time

import pytest
from typer.testing import CliRunner

import llmc
from llmc.serving.engine import ServeSettings
from llmc.serving.run import LocalServer

openai = pytest.importorskip("openai")
requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("transformers")

TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}w10 {{ m['content'] }} w11 {% else %}"
            "w12 {{ m['content'] }} w13 {% endif %}{% endfor %}w14")
SYSTEM = " ".join(f"w{20 + i % 30}" for i in range(40))  # 42 tokens with its markers: two full blocks


@pytest.fixture(scope="module")
def chat_artifact(tmp_path_factory):
    """A tiny llama (head size 16: GroupQueryAttention) whose tokenizer has a chat template."""
    from llmc.cli.main import app
    from llmc.export import llama_model
    from tests.export.test_export_cli import _tokenizer

    model = llama_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=64, max_position_embeddings=256, tie_word_embeddings=False,
                        initializer_range=0.5, bos_token_id=2, eos_token_id=3)
    source = tmp_path_factory.mktemp("hf") / "chat"
    model.save_pretrained(source)
    tokenizer = _tokenizer(64)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(source)
    out = tmp_path_factory.mktemp("exports") / "chat"
    assert CliRunner().invoke(app, ["export", str(source), "-o", str(out)]).exit_code == 0
    built = llmc.build(out / "model.onnx", output=tmp_path_factory.mktemp("artifacts") / "chat", cache=False, threads=1)
    return built.path


@pytest.fixture(scope="module")
def server(chat_artifact):
    settings = ServeSettings(str(chat_artifact), model_name="tiny-chat", slots=4, kv_cache_mb=1, system_prompt=SYSTEM)
    with LocalServer(settings) as url:
        yield url


@pytest.fixture(scope="module")
def direct(chat_artifact):
    return llmc.load(chat_artifact, threads=1)


def _client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _chat_ids(direct, messages):
    from llmc.model import text as texts

    tokenizer = texts.load_tokenizer(direct.artifact.path)
    return texts.encode(tokenizer, texts.chat_messages(direct.artifact.path, messages), special=False)


def test_greedy_chat_equals_generate_alone_and_under_concurrency(server, direct):
    client = _client(server)
    questions = [f"w{5 + i} w{30 + i} w{9 + 2 * i}" for i in range(8)]
    want = [direct.generate(_chat_ids(direct, [{"role": "user", "content": q}]), max_new_tokens=12, speculative="off")
            for q in questions]

    def ask(question):
        answer = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": question}],
                                                max_tokens=12, temperature=0)
        return answer.choices[0].message.content, answer.usage.completion_tokens, answer.choices[0].finish_reason

    assert ask(questions[0]) == (want[0].text, want[0].tokens, "length" if want[0].stop_reason == "length" else "stop")
    with futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, questions))
    assert [a[:2] for a in answers] == [(w.text, w.tokens) for w in want]
    metrics = requests.get(server + "/metrics").text
    for gauge in ("llmc_slots_in_use", "llmc_tokens_per_second", "llmc_prefix_cache_hit_rate", "llmc_queue_depth"):
        assert f"\n{gauge} " in metrics


def test_n_choices_seeds_and_max_completion_tokens(server):
    client = _client(server)
    messages = [{"role": "user", "content": "w7 w8"}]
    sampled = client.chat.completions.create(model="tiny-chat", messages=messages, n=3, temperature=1.0, seed=5,
                                             max_completion_tokens=10, extra_body={"min_tokens": 10})
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert sampled.usage.completion_tokens == 30 and {c.finish_reason for c in sampled.choices} == {"length"}
    again = client.chat.completions.create(model="tiny-chat", messages=messages, n=3, temperature=1.0, seed=5,
                                           max_completion_tokens=10, extra_body={"min_tokens": 10})
    assert [c.message.content for c in again.choices] == [c.message.content for c in sampled.choices]  # seeded
    assert len({c.message.content for c in sampled.choices}) > 1  # each choice its own draws
    greedy = client.chat.completions.create(model="tiny-chat", messages=messages, n=2, temperature=0, max_tokens=6)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content


def test_completions_take_a_list_of_prompts_and_token_ids(server, direct):
    """OpenAI's prompt forms: each of a list of prompts answered n times (choice index = prompt x n +
    choice), token ids as the text's own, streamed as whole; usage counts every prompt once."""
    from llmc.model import text as texts

    client = _client(server)
    prompts = ["w5 w6", "w7", "w8 w9 w10"]
    alone = [client.completions.create(model="tiny-chat", prompt=p, max_tokens=6, temperature=0).choices[0].text
             for p in prompts]
    together = client.completions.create(model="tiny-chat", prompt=prompts, n=2, max_tokens=6, temperature=0)
    assert [c.index for c in together.choices] == list(range(6))
    assert [c.text for c in together.choices] == [a for a in alone for _ in range(2)]
    tokenizer = texts.load_tokenizer(direct.artifact.path)
    ids = [texts.encode(tokenizer, p) for p in prompts]
    assert together.usage.prompt_tokens == sum(len(i) for i in ids)
    by_ids = client.completions.create(model="tiny-chat", prompt=ids, max_tokens=6, temperature=0)
    assert [c.text for c in by_ids.choices] == alone
    one = client.completions.create(model="tiny-chat", prompt=ids[0], max_tokens=6, temperature=0)
    assert one.choices[0].text == alone[0]
    streamed = ["", "", ""]
    for chunk in client.completions.create(model="tiny-chat", prompt=prompts, max_tokens=6, temperature=0, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == alone
    for bad in ([], [""], [[]], [1, "a"], [[10**9]]):
        answer = requests.post(server + "/v1/completions", json={"prompt": bad, "max_tokens": 2}, timeout=10)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "prompt", (bad, answer.text)
    # every choice of a request draws its own numbers: a prompt listed twice is a prompt with n=2
    sampled = {"max_tokens": 8, "temperature": 1.0, "seed": 3, "extra_body": {"min_tokens": 8}}
    listed = client.completions.create(model="tiny-chat", prompt=["w5", "w5"], **sampled)
    twice = client.completions.create(model="tiny-chat", prompt="w5", n=2, **sampled)
    assert [c.text for c in listed.choices] == [c.text for c in twice.choices]
    answer = requests.post(server + "/v1/completions", json={"prompt": ["w5"] * 9, "n": 2}, timeout=10)
    assert answer.status_code == 400 and "18 choices" in answer.json()["error"]["message"]


def test_logprobs_in_both_apis(server):
    client = _client(server)
    answer = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "w9"}],
                                            max_tokens=5, temperature=0, logprobs=True, top_logprobs=3,
                                            extra_body={"min_tokens": 5})
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens == 5
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token  # greedy: the likeliest
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob) and entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
    text = client.completions.create(model="tiny-chat", prompt="w9 w10", max_tokens=4, temperature=0, logprobs=2,
                                     extra_body={"min_tokens": 4})
    probs = text.choices[0].logprobs
    assert len(probs.tokens) == len(probs.token_logprobs) == len(probs.top_logprobs) == 4
    assert all(len(top) == 2 for top in probs.top_logprobs) and probs.text_offset[0] == 0


def test_streams_carry_usage_and_equal_the_whole_answer(server):
    client = _client(server)
    messages = [{"role": "user", "content": "w15 w16 w17"}]
    whole = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=9, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=9, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    plain = list(client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=9, temperature=0,
                                                stream=True))
    assert all(c.usage is None for c in plain)


def test_the_system_prompt_is_pinned_and_reused(server, direct):
    from llmc.generation.prefix import BLOCK

    health = requests.get(server + "/health").json()
    pinned = health["prefix_cache"]["pinned_tokens"]
    assert health["system_prompt_tokens"] >= 32 and pinned == health["system_prompt_tokens"] // BLOCK * BLOCK
    before = health["prefix_cache"]["tokens_reused"]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "w40 w41"}]
    answer = _client(server).chat.completions.create(model="tiny-chat", messages=messages, max_tokens=8, temperature=0)
    want = direct.generate(_chat_ids(direct, messages), max_new_tokens=8, speculative="off")
    assert answer.choices[0].message.content == want.text
    # the system message's blocks at least (the pinned prefix's last tokens open the user turn, and
    # the tokenizer may join them with a real turn's first word differently)
    assert requests.get(server + "/health").json()["prefix_cache"]["tokens_reused"] >= before + 32


def test_a_client_gone_frees_its_slot(server):
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "w5"}], "max_tokens": 200,
            "temperature": 0, "stream": True, "min_tokens": 200}
    with requests.post(server + "/v1/chat/completions", json=body, stream=True, timeout=60) as response:
        next(response.iter_lines())
    for _ in range(100):
        if "\nllmc_slots_in_use 0" in requests.get(server + "/metrics").text:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the slot was not freed")


@pytest.mark.parametrize(("body", "param", "status"), [
    ({"n": 17}, "n", 400), ({"temperature": 3}, "temperature", 400), ({"stream": "false"}, "stream", 400),
    ({"top_logprobs": 2}, "top_logprobs", 400), ({"tools": [{"type": "function"}]}, "tools", 400),
    ({"model": "gpt-4"}, "model", 404), ({"model": 5}, "model", 400), ({"stop": ["a", "b", "c", "d", "e"]}, "stop", 400),
    ({"presence_penalty": 5}, "presence_penalty", 400), ({"temperature": float("nan")}, None, 400),
    ({"messages": [{"role": "user", "content": " ".join(["w5"] * 600)}]}, "messages", 400),
    ({"messages": [{"role": "user", "content": " ".join(["w5"] * 20_000)}]}, "messages", 400),
    ({"stream_options": {"include_usage": True}}, "stream_options", 400),
])
def test_refused_fields_are_one_openai_error_and_the_server_stays_healthy(server, body, param, status):
    request = {"model": "tiny-chat", "messages": [{"role": "user", "content": "w5"}], **body}
    answer = requests.post(server + "/v1/chat/completions", data=_json(request), timeout=10)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and "\n" not in error["message"]
    started = time.perf_counter()
    assert requests.get(server + "/health", timeout=5).status_code == 200
    assert time.perf_counter() - started < 0.5


def _json(body):
    import json

    return json.dumps(body, allow_nan=True)


@pytest.fixture(scope="module")
def json_server(tmp_path_factory):
    """A tiny llama whose byte-level BPE tokenizer can write JSON, served with continuous batching."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmc.cli.main import app
    from llmc.export import llama_model
    from tests.generation.test_grammar import SENTENCES

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([*SENTENCES.read_text(encoding="utf-8").splitlines()[:300], '{"a": [1, 2], "b": "x"}'],
                            trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    model = llama_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=bpe.get_vocab_size(), max_position_embeddings=256,
                        tie_word_embeddings=False, initializer_range=0.5, bos_token_id=0, eos_token_id=0)
    source = tmp_path_factory.mktemp("hf") / "json"
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path_factory.mktemp("exports") / "json"
    assert CliRunner().invoke(app, ["export", str(source), "-o", str(out)]).exit_code == 0
    built = llmc.build(out / "model.onnx", output=tmp_path_factory.mktemp("artifacts") / "json", cache=False, threads=1)
    with LocalServer(ServeSettings(str(built.path), model_name="tiny-json", slots=4, kv_cache_mb=1)) as url:
        yield url


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["size", "kind"],
          "properties": {"size": {"type": "integer", "minimum": 0, "maximum": 99}, "kind": {"enum": ["cat", "dog"]}}}


def test_response_format_constrains_every_choice(json_server):
    import json

    client = _client(json_server)
    messages = [{"role": "user", "content": "Describe a pet."}]
    answer = client.chat.completions.create(
        model="tiny-json", messages=messages, n=3, temperature=1.0, seed=3, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA, "strict": True}})
    for choice in answer.choices:
        value = json.loads(choice.message.content)
        assert choice.finish_reason == "stop" and set(value) == {"size", "kind"}
        assert 0 <= value["size"] <= 99 and value["kind"] in ("cat", "dog")
    plain = client.chat.completions.create(model="tiny-json", messages=messages, max_tokens=30, temperature=0)
    with pytest.raises(json.JSONDecodeError):  # unconstrained, the random model writes no JSON
        json.loads(plain.choices[0].message.content)
    for bad in ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
                {"type": "xml"}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="tiny-json", messages=messages, response_format=bad)
        assert caught.value.param == "response_format" and "\n" not in caught.value.message
    assert requests.get(json_server + "/health").status_code == 200
