"""Fixtures, the CLI runner, the server and the outcome classifier of ``benchmarks.hardening``.

Everything is built in a temp dir from random weights (``llmc.export`` helpers, a WordLevel
tokenizer of ``w4 .. w63``): no downloads. Outcomes: ``handled`` (one-line error, exit 1/2, a 4xx
JSON error, or a correct result), ``traceback`` (a Python traceback, a crash, an HTTP 5xx),
``wrong success`` (exit 0 / 200 where the input should be refused), ``security`` (a file from
outside a model directory read into an output, a write through a link, a swapped cache entry used,
an unsafe cache directory used) and ``hang`` (past the probe's timeout, or /health blocked).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HANDLED, TRACEBACK, WRONG, SECURITY, HANG = "handled", "traceback", "wrong success", "security", "hang"
OUTCOMES = (HANDLED, TRACEBACK, WRONG, SECURITY, HANG)
VOCAB = 64
SECRET = "HARDENING-SECRET-7f3a"  # the marker of files outside every model directory
# A template that adds BOS itself (the tokenizer adds one too), raises on RAISE, loops on LOOP.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['content'] == 'RAISE' %}{{ raise_exception('refused by the template') }}{% endif %}"
    "{% if m['content'] == 'LOOP' %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
    "{% endfor %}{% endif %}w12 {{ m['content'] }} w13 {% endfor %}w14"
)
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PYTHONUNBUFFERED": "1",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@dataclasses.dataclass
class Run:
    rc: int | None
    out: str
    err: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.rc is None

    @property
    def text(self) -> str:
        return self.out + self.err

    def last_line(self) -> str:
        lines = [x for x in self.text.strip().splitlines() if x.strip()]
        return lines[-1].strip()[:160] if lines else ""


def llmc(*args: Any, timeout: float = 120, env: dict[str, str] | None = None) -> Run:
    """``python -m llmc ARGS`` in a fresh process (bytes arguments pass as they are)."""
    command = [sys.executable, "-m", "llmc", *(a if isinstance(a, bytes) else str(a) for a in args)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, env={**ENV, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        return Run(None, _text(exc.stdout), _text(exc.stderr), time.perf_counter() - started)
    return Run(done.returncode, _text(done.stdout), _text(done.stderr), time.perf_counter() - started)


def _text(data: bytes | str | None) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")


def classify_cli(run: Run, refuse: bool) -> tuple[str, str]:
    """The outcome of a CLI probe whose input should be refused (``refuse``) or accepted."""
    if run.timed_out:
        return HANG, f"no exit after {run.seconds:.0f} s"
    if "Traceback (most recent call last)" in run.text:
        return TRACEBACK, _exception_line(run.text)
    if run.rc == 0:
        return (WRONG, "exit 0: accepted") if refuse else (HANDLED, "exit 0: a correct result")
    if run.rc in (1, 2):
        return HANDLED, f"exit {run.rc}: {run.last_line()}"
    return TRACEBACK, f"crashed, exit {run.rc}: {run.last_line()}"


def _exception_line(text: str) -> str:
    tail = [x for x in text.split("Traceback (most recent call last)")[-1].splitlines() if x and not x.startswith(" ")]
    tail = [x for x in tail if "Error" in x.split(":")[0] or "Exception" in x.split(":")[0]] or tail
    return ("traceback: " + tail[-1].strip())[:160] if tail else "traceback"


def classify_http(status: int | None, body: str, refuse: bool, seconds: float = 0.0) -> tuple[str, str]:
    """The outcome of one HTTP request (``status`` None: no answer within the timeout)."""
    if status is None:
        return HANG, f"no answer after {seconds:.0f} s"
    if status >= 500 and status != 503:
        return TRACEBACK, f"HTTP {status}: {body[:120]}"
    if 400 <= status < 500 or status == 503:
        try:
            error = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            return TRACEBACK, f"HTTP {status} without a JSON error: {body[:100]}"
        message = error.get("message", error) if isinstance(error, dict) else error
        return HANDLED, f"HTTP {status}: {str(message)[:120]}"
    return (WRONG, f"HTTP {status}: accepted") if refuse else (HANDLED, f"HTTP {status}: a correct result")


# -- fixtures ------------------------------------------------------------------------------------------


def tokenizer(bos: bool = True) -> Any:
    """A WordLevel tokenizer of ``w4 .. w63`` whose post-processor adds BOS, with TEMPLATE."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "<s>": 2, "</s>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>",
                                   eos_token="</s>")
    fast.chat_template = TEMPLATE
    return fast


def llama_dir(directory: Path, kv_heads: int = 2, seed: int = 0) -> Path:
    """A tiny random llama (2 layers, hidden 64, context 256) with the tokenizer, saved to ``directory``."""
    import torch

    from llmc.export import llama_model

    torch.manual_seed(seed)
    model = llama_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv_heads,
                        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=256, tie_word_embeddings=False,
                        initializer_range=0.5, bos_token_id=2, eos_token_id=3)
    model.save_pretrained(directory)
    tokenizer().save_pretrained(directory)
    return directory


def reusable(artifact: Path) -> bool:
    """An earlier run's artifact of :func:`llama_dir`, built from an export that recorded its
    256-token context (its tokenizer names no model_max_length: the recorded context is what
    bounds perplexity's windows)."""
    try:
        task = json.loads((artifact / "manifest.json").read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(task, dict) and task.get("context") == 256


def relu_onnx(path: Path, bias: float) -> Path:
    """y = Relu(x + w), w = bias: the cache probes' source models (two biases: two cache keys)."""
    import numpy as np
    import onnx
    import onnx.helper as oh

    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])
    w = onnx.numpy_helper.from_array(np.full(3, bias, np.float32), "w")
    graph = oh.make_graph([oh.make_node("Add", ["x", "w"], ["s"]), oh.make_node("Relu", ["s"], ["y"])], "g", [x], [y], [w])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=10), path)
    return path


def words(count: int, start: int = 4) -> str:
    return " ".join(f"w{4 + (start - 4 + i) % (VOCAB - 4)}" for i in range(count))


# -- the server ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``llmc serve ARTIFACT`` (uvicorn, one process) on a free port, its address space capped so a
    huge allocation fails in it instead of taking the machine."""

    def __init__(self, artifact: Path, log: Path, *args: Any, cap_gb: int = 12) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cap = cap_gb << 30
        command = [sys.executable, "-m", "llmc", "serve", str(artifact), "--port", str(self.port), *map(str, args)]
        self.process = subprocess.Popen(
            command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=ENV,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)),
        )

    def __enter__(self) -> Server:
        import requests

        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llmc serve exited {self.process.returncode}: {self.log.read_text()[-800:]}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"llmc serve did not answer /health in 180 s: {self.log.read_text()[-800:]}")

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def alive(self) -> bool:
        return self.process.poll() is None

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory (VmHWM), MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def post(self, route: str, body: Any, timeout: float = 30, raw: bool = False) -> tuple[int | None, str, float]:
        """POST ``body`` (JSON, NaN allowed; ``raw``: bytes/str as is): status (None: timeout), text, seconds."""
        import requests

        data = body if raw else json.dumps(body, allow_nan=True)
        started = time.perf_counter()
        try:
            answer = requests.post(self.url + route, data=data, headers={"Content-Type": "application/json"},
                                   timeout=timeout)
        except requests.Timeout:
            return None, "", time.perf_counter() - started
        except requests.ConnectionError as exc:
            return 599, f"connection failed: {exc.__class__.__name__}", time.perf_counter() - started
        return answer.status_code, answer.text, time.perf_counter() - started

    def health_ms(self, timeout: float = 10) -> float:
        import requests

        started = time.perf_counter()
        try:
            requests.get(self.url + "/health", timeout=timeout)
        except requests.RequestException:
            return timeout * 1000
        return (time.perf_counter() - started) * 1000


def infer_body(artifact: Path, **override: Any) -> dict[str, Any]:
    """A valid ``/v1/infer`` body for the decoder artifact (one new token after one cached one),
    with ``override``'s inputs replaced."""
    import numpy as np
    import onnx

    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    inputs: dict[str, Any] = {}
    for value in model.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name == "input_ids":
            inputs[value.name] = [[5]]
        elif value.name == "attention_mask":
            inputs[value.name] = [[1, 1]]
        elif value.name == "position_ids":
            inputs[value.name] = [[1]]
        else:  # past key/value: [batch, kv heads, past, head size]
            inputs[value.name] = np.zeros((1, dims[1] or 1, 1, dims[3] or 1), np.float32).tolist()
    inputs.update(override)
    return {"inputs": inputs}


# -- the server's probes --------------------------------------------------------------------------

SERVE_ARGS = ("--max-queue", 2, "--slots", 2, "--kv-cache-mb", 4, "--served-model-name", "tiny", "--threads-per-replica", 1)


def _server(fx: Any) -> Server:
    if getattr(fx, "server", None) is None:
        fx.server = Server(fx.artifact, fx.root / "serve.log", *SERVE_ARGS).__enter__()
    return fx.server


def stop(fx: Any) -> None:
    if getattr(fx, "server", None) is not None:
        fx.server.__exit__()
        fx.server = None


def _chat(content: str = "w5 w6", **fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0, **fields}


def _refused(fx: Any, route: str, body: Any, raw: bool = False, timeout: float = 30) -> tuple[str, str]:
    server = _server(fx)
    status, text, seconds = server.post(route, body, timeout=timeout, raw=raw)
    return classify_http(status, text, refuse=True, seconds=seconds)


def _allocation(fx: Any, **inputs: Any) -> tuple[str, str]:
    server = _server(fx)
    before = server.peak_rss_mb()
    status, text, seconds = server.post("/v1/infer", infer_body(fx.artifact, **inputs), timeout=60)
    grown = server.peak_rss_mb() - before
    outcome, detail = classify_http(status, text, refuse=True, seconds=seconds)
    return outcome, f"{detail}; peak RSS +{grown:.0f} MiB"


def _large_prompt_health(fx: Any) -> tuple[str, str]:
    """A 300,000-word completion prompt while /health is polled: every poll under 100 ms?"""
    import threading

    server = _server(fx)
    idle = max(server.health_ms() for _ in range(5))
    answer: dict[str, Any] = {}
    body = json.dumps({"model": "tiny", "prompt": words(300_000), "max_tokens": 4})  # built before: no GIL contention
    sender = threading.Thread(target=lambda: answer.update(
        zip(("status", "text", "seconds"), server.post("/v1/completions", body, timeout=120, raw=True), strict=True)))
    sender.start()
    polls = []
    time.sleep(0.05)
    while sender.is_alive():
        polls.append(server.health_ms())
        time.sleep(0.02)
    sender.join()
    outcome, detail = classify_http(answer["status"], answer["text"], refuse=True, seconds=answer["seconds"])
    worst = max(polls, default=0.0)
    detail += f"; /health worst {worst:.0f} ms over {len(polls)} polls (idle worst {idle:.0f} ms)"
    if worst > 100 and outcome == HANDLED:
        return HANG, detail
    return outcome, detail


def _streams_past_queue(fx: Any) -> tuple[str, str]:
    """Six streams at once against --max-queue 2: some must be 503 when more than two overlap."""
    import threading

    import requests

    server = _server(fx)
    server.post("/v1/chat/completions", _chat(), timeout=60)  # the first chat imports transformers: not raced here
    body = _chat(max_tokens=200, min_tokens=200, stream=True)
    barrier, spans, others = threading.Barrier(6), [], []

    def one() -> None:
        barrier.wait()
        started = time.perf_counter()
        try:
            with requests.post(server.url + "/v1/chat/completions", json=body, stream=True, timeout=60) as answer:
                text = b"".join(answer.iter_content(1 << 16)).decode("utf-8", "replace")
                spans.append((answer.status_code, started, time.perf_counter()))
                if answer.status_code not in (200, 503):
                    others.append(f"{answer.status_code} {text[:100]}")
        except requests.RequestException as exc:
            spans.append((exc.__class__.__name__, started, time.perf_counter()))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    statuses = Counter(str(s) for s, _, _ in spans)
    admitted = [(a, b) for s, a, b in spans if s == 200]
    overlap = max((sum(a <= t < b for a, b in admitted) for t, _ in admitted), default=0)
    detail = f"statuses {dict(statuses)}; at most {overlap} admitted streams ran at once; {'; '.join(others)}".rstrip("; ")
    if any(not isinstance(s, int) or s >= 500 and s != 503 for s, _, _ in spans):
        return TRACEBACK, detail
    if overlap > 2:
        return WRONG, detail
    return (HANDLED, detail) if statuses.get("503") else ("not probed", detail + " (no overlap past the queue)")


def _double_bos(fx: Any) -> tuple[str, str]:
    server = _server(fx)
    status, text, _ = server.post("/v1/chat/completions", _chat(max_tokens=8), timeout=60)
    if status != 200:
        return classify_http(status, text, refuse=False)
    served = json.loads(text)
    run = llmc("generate", fx.artifact, "--chat", "--prompt", "w5 w6", "--max-new-tokens", "8", "--json", timeout=120)
    if run.rc != 0:
        return classify_cli(run, refuse=False)
    local = json.loads(run.out)
    same = (served["choices"][0]["message"]["content"] == local["text"]
            and served["usage"]["prompt_tokens"] == local["prompt_tokens"])
    detail = (f"served {served['usage']['prompt_tokens']} prompt tokens, '{served['choices'][0]['message']['content']}'; "
              f"generate --chat {local['prompt_tokens']}, '{local['text']}'")
    return (HANDLED if same else WRONG), detail


def _template_server(fx: Any, content: str, timeout: float) -> tuple[str, str]:
    server = _server(fx)
    status, text, seconds = server.post("/v1/chat/completions", _chat(content), timeout=timeout)
    outcome, detail = classify_http(status, text, refuse=True, seconds=seconds)
    health = server.health_ms()
    return outcome, f"{detail}; /health then {health:.0f} ms"


def probes(fx: Any) -> list[tuple[str, str, str, Any]]:
    """(kind, case, expected, probe) of every server case, the looping template last."""
    s, refused = "server", "4xx JSON error"
    deep = '{"model": "tiny", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
    surrogate = '{"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "w5 \\ud800 w6"}]}'
    nan_past = {name: [[[[float("nan")] * 16] * 2]] for name in infer_body(fx.artifact)["inputs"] if name.startswith("past")}
    return [
        (s, "/v1/infer position_ids [[10**9]]", f"{refused}, no allocation", lambda f: _allocation(f, position_ids=[[10**9]])),
        (s, "/v1/infer attention_mask of 1,000,000 ones for one token", f"{refused}, no allocation",
         lambda f: _allocation(f, attention_mask=[[1] * 1_000_000])),
        (s, "a 300,000-word prompt while /health is polled", f"{refused}; /health under 100 ms", _large_prompt_health),
        (s, "JSON nested 100,000 deep", refused, lambda f: _refused(f, "/v1/chat/completions", deep, raw=True)),
        (s, "a lone surrogate in a chat message", f"{refused} (or a correct answer)",
         lambda f: _surrogate(f, surrogate)),
        (s, "NaN in /v1/infer's past key/values", refused, lambda f: _refused(f, "/v1/infer", infer_body(f.artifact, **nan_past))),
        (s, "six concurrent streams past --max-queue 2", "503 past the queue", _streams_past_queue),
        (s, '"stream": "false" (a string)', refused, lambda f: _refused(f, "/v1/chat/completions", _chat(stream="false"))),
        (s, 'an unknown "model"', "404 JSON error", lambda f: _refused(f, "/v1/chat/completions", {**_chat(), "model": "gpt-4"})),
        (s, "n = 1000", refused, lambda f: _refused(f, "/v1/chat/completions", _chat(n=1000))),
        (s, "/v1/infer input_ids [[-1]]", refused, lambda f: _refused(f, "/v1/infer", infer_body(f.artifact, input_ids=[[-1]]))),
        (s, "BOS twice: served chat vs llmc generate --chat (tokenizer and template both add BOS)",
         "the same tokens and text", _double_bos),
        ("chat templates", "served chat, a template that raises", refused, lambda f: _template_server(f, "RAISE", 30)),
        ("chat templates", "served chat, a template that loops 10**10 times", f"{refused} within 30 s",
         lambda f: _template_server(f, "LOOP", 30)),
    ]


def _surrogate(fx: Any, body: str) -> tuple[str, str]:
    server = _server(fx)
    status, text, seconds = server.post("/v1/chat/completions", body, raw=True)
    return classify_http(status, text, refuse=False, seconds=seconds)
