"""Serving on Ray Serve over loopback: throughput and latency against direct calls, prefix reuse.

MiniLM (llmc fp32, padding skipped) on ``/v1/infer``, one real sentence per request, at 1, 4 and
16 concurrent clients against the artifact called directly in one process (one call at a time:
what a process without a server does). SmolLM2-135M int4 on ``/v1/completions``: requests of 16
greedy tokens at 1 and 4 clients against direct ``generate`` calls, and the time to the first
streamed token of a request whose 512-token prompt prefix an earlier request left in the prefix
cache against a cold one. One replica with 2 threads (this machine has 2 cores); loopback only,
bounded load.

    python -m benchmarks.serving
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import machine_line, sentences, tokenize, write_section

ROOT = harness.ROOT
ENCODER = ROOT / ".cache" / "padding" / "llmc-fp32"
DECODER = ROOT / ".cache" / "decode" / "smollm2-llmc-int4"
PORT = 8790
THREADS = 2


def _percentiles(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def _load(call: Any, payloads: list[Any], clients: int) -> dict[str, float]:
    """Run ``call`` on every payload from ``clients`` threads; latency percentiles and rate."""
    latencies: list[float] = []

    def one(payload: Any) -> None:
        start = time.perf_counter()
        call(payload)
        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, payloads))
    wall = time.perf_counter() - start
    return {**_percentiles(latencies), "per_s": len(payloads) / wall}


def encoder_rows(base: str, count: int) -> dict[str, Any]:
    import requests

    import llmc

    ids, mask = tokenize(sentences(1000, 1000 + count), 128)
    lengths = mask.sum(1)
    bodies = [{"input_ids": ids[i : i + 1, : lengths[i]].tolist(), "attention_mask": mask[i : i + 1, : lengths[i]].tolist()}
              for i in range(count)]
    direct = llmc.load(ENCODER, threads=THREADS)
    feeds = [{k: np.array(v, np.int64) for k, v in b.items()} for b in bodies]
    for f in feeds[:5]:
        direct.run(f)
    rows = {"direct (1 process, one call at a time)": _load(direct.run, feeds, 1)}
    session = requests.Session()
    health = _load(lambda _: session.get(base + "/health"), range(50), 1)
    for clients in (1, 4, 16):
        _load(lambda b: requests.post(base + "/v1/infer", json={"inputs": b}), bodies[:8], clients)  # warm
        rows[f"served, {clients} client(s)"] = _load(
            lambda b: requests.post(base + "/v1/infer", json={"inputs": b}).raise_for_status(), bodies, clients
        )
    metrics = requests.get(base + "/metrics").text
    runs = float(metrics.split("llmc_batch_rows_count ")[1].split()[0])
    rows_sum = float(metrics.split("llmc_batch_rows_sum ")[1].split()[0])
    return {"rows": rows, "http_p50_ms": health["p50"], "rows_per_run": rows_sum / runs,
            "peak_rss_mb": requests.get(base + "/health").json()["peak_rss_mb"]}


def decoder_rows(base: str, count: int) -> dict[str, Any]:
    import requests

    import llmc

    prompts = [f"{line} " for line in sentences(1500, 1500 + count)]
    direct = llmc.load(DECODER, threads=THREADS)
    direct.generate(prompts[0], max_new_tokens=4)
    rows = {"direct generate (one at a time)": _load(
        lambda p: direct.generate(p, max_new_tokens=16, min_new_tokens=16, temperature=0.0), prompts, 1)}
    body = {"max_tokens": 16, "temperature": 0}
    for clients in (1, 4):
        rows[f"served, {clients} client(s)"] = _load(
            lambda p: requests.post(base + "/v1/completions", json={**body, "prompt": p}).raise_for_status(), prompts, clients
        )
    return {"rows": rows, "prefix": _prefix_ttft(base), "peak_rss_mb": requests.get(base + "/health").json()["peak_rss_mb"]}


def _first_chunk(base: str, prompt: str) -> float:
    import requests

    start = time.perf_counter()
    with requests.post(base + "/v1/completions", json={"prompt": prompt, "max_tokens": 2, "temperature": 0,
                                                        "stream": True}, stream=True) as response:
        for line in response.iter_lines():
            if line:
                return time.perf_counter() - start
    raise RuntimeError("no chunk")


def _prefix_ttft(base: str) -> dict[str, float]:
    """Time to the first streamed chunk: a cold 512-token-prefix prompt, then prompts sharing it."""
    text = " ".join(sentences(1800, 1900))
    cold, warm = [], []
    for trial in range(5):
        prefix = f"Document {trial}. {text}"  # a fresh prefix per trial: the first request is cold
        cold.append(_first_chunk(base, prefix + " Question one?"))
        warm.append(_first_chunk(base, prefix + f" Question {trial + 2}, another one?"))
    return {"cold_ms": 1e3 * statistics.median(cold), "warm_ms": 1e3 * statistics.median(warm)}


def _serve(path: Path) -> str:
    from llmc.serving.run import start
    from llmc.serving.server import ServeSettings

    start(ServeSettings(str(path), threads_per_replica=THREADS, max_batch_size=16, batch_wait_ms=2, max_queue=256),
          "127.0.0.1", PORT)
    return f"http://127.0.0.1:{PORT}"


def render(results: dict[str, Any]) -> str:
    lines = ["<!-- serving:begin -->", f"{machine_line()} `python -m benchmarks.serving`.\n"]
    for title, key in (("MiniLM fp32, `/v1/infer`, one sentence per request", "encoder"),
                       ("SmolLM2-135M int4, `/v1/completions`, 16 greedy tokens per request", "decoder")):
        part = results[key]
        lines += [f"**{title}** (replica peak RSS {part['peak_rss_mb']:.0f} MB)\n", "| | requests/s | p50 ms | p99 ms |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {r['per_s']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} |" for name, r in part["rows"].items()]
        lines.append("")
    enc, dec = results["encoder"], results["decoder"]
    lines.append(f"HTTP round trip (`GET /health`, p50): {enc['http_p50_ms']:.2f} ms; rows per model run under load: "
                 f"{enc['rows_per_run']:.2f}. Time to the first streamed token, 512-token shared prefix: cold "
                 f"{dec['prefix']['cold_ms']:.0f} ms, prefix cached {dec['prefix']['warm_ms']:.0f} ms "
                 f"({dec['prefix']['warm_ms'] / dec['prefix']['cold_ms']:.2f}x).")
    lines.append("<!-- serving:end -->")
    return "\n".join(lines)


def main() -> None:
    from llmc.serving.run import stop

    results = {}
    try:
        base = _serve(ENCODER)
        results["encoder"] = encoder_rows(base, 200)
        base = _serve(DECODER)
        results["decoder"] = decoder_rows(base, 16)
    finally:
        stop()
    text = render(results)
    (ROOT / ".cache" / "serving-results.json").write_text(json.dumps(results, indent=1))
    write_section("<!-- serving:begin -->", "<!-- serving:end -->", text)
    print(text)


if __name__ == "__main__":
    main()
