"""`make bench`: llmc vs ONNX Runtime ORT_ENABLE_ALL on the raw (dynamo) export, written to
benchmarks/RESULTS.md with the machine and versions.

For each model and batch size, both are timed interleaved in one process (order rotated every
round) with the same seeded inputs and the same thread count; the table gives medians and the
llmc / ORT ratio. The ONNX backend node-case counts (the semantics oracle) are recorded too.

    python -m benchmarks.run [--runs N] [--threads T] [--models minilm,bert-base]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import llmc
from benchmarks import conformance, models
from llmc.compiler.bench import resolve_target, run_benchmark
from llmc.compiler.build import _versions
from llmc.compiler.feeds import make_feeds, resolve_shapes
from llmc.compiler.model_io import load_model

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SEQUENCE = 128
BATCHES = (1, 8)
MODELS = {
    "minilm": ("all-MiniLM-L6-v2 (real weights)", lambda: models.minilm(dynamo=True)),
    "bert-base": ("BERT-base (random weights, BertConfig defaults)", lambda: models.bert_base(dynamo=True)),
    # The legacy (TorchScript) export is not pre-cleaned by the exporter: the passes have work.
    "minilm-legacy": ("all-MiniLM-L6-v2, legacy export (dynamo=False)", lambda: models.minilm(dynamo=False)),
}


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def bench_model(key: str, runs: int, threads: int) -> list[dict[str, Any]]:
    title, export = MODELS[key]
    source = export()
    rows = []
    for batch in BATCHES:
        shapes = {"input_ids": (batch, SEQUENCE)}
        out = models.CACHE.parent / "bench" / f"{key}-b{batch}.llmc-ort"
        artifact = llmc.build(source, output=out, shapes=shapes, threads=threads)
        model = load_model(source)
        feeds = make_feeds(model, resolve_shapes(model, shapes)[0])
        ours_target = resolve_target(artifact.path, threads=threads, label="llmc")
        # The same artifact with every ORT fusion on: the A/B behind SLOWER_ORT_FUSIONS.
        all_fusions = dataclasses.replace(
            ours_target, label="llmc, all ORT fusions",
            config=dataclasses.replace(ours_target.config, disabled_optimizers=[]),
        )
        targets = [
            resolve_target(source, threads=threads, level="all", label="ORT_ENABLE_ALL"),
            ours_target,
            all_fusions,
        ]
        n = _runs_for(targets[0], feeds, runs)
        ort, ours, fused = run_benchmark(targets, feeds, runs=n, warmup=5)
        rows.append({
            "model": title, "batch": batch, "runs": n,
            "ort_p50": ort.p50_ms, "llmc_p50": ours.p50_ms, "ratio": ours.p50_ms / ort.p50_ms,
            "fused_ratio": fused.p50_ms / ort.p50_ms,
            "ort_p90": ort.p90_ms, "llmc_p90": ours.p90_ms,
            "ort_rss": ort.peak_rss_mb, "llmc_rss": ours.peak_rss_mb,
            "nodes_before": artifact.manifest["nodes"]["before"],
            "nodes_after": artifact.manifest["nodes"]["after"],
            "max_abs_error": artifact.manifest["verification"]["max_abs_error"],
            "compile_s": artifact.manifest["compile_seconds"],
        })
        print(f"{key} b{batch}: ORT {ort.p50_ms:.2f} ms, llmc {ours.p50_ms:.2f} ms "
              f"({ours.p50_ms / ort.p50_ms:.3f}x)", flush=True)
    return rows


def _runs_for(target, feeds, runs: int, budget_s: float = 30.0) -> int:
    """Timed runs per model: ``runs``, fewer for slow models (~budget_s each), never under 40."""
    from llmc.backends.ort import OrtRunner, create_session

    runner = OrtRunner(create_session(target.model_path, target.config))
    runner.run(feeds)
    start = time.perf_counter()
    runner.run(feeds)
    return max(40, min(runs, int(budget_s / (time.perf_counter() - start))))


def render(rows: list[dict[str, Any]], node_cases: dict[str, Any], threads: int, seconds: float) -> str:
    versions = _versions()
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`python -m benchmarks.run`) on {datetime.date.today()}, "
        f"{seconds / 60:.1f} min.",
        "",
        f"- Machine: {machine()}",
        f"- Threads: {threads} intra-op (both sides)",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "## Latency: llmc fp32 vs ONNX Runtime ORT_ENABLE_ALL on the raw export",
        "",
        f"Sequence {SEQUENCE}; exports use the default (dynamo) exporter unless the row says "
        "legacy. Both timed interleaved in one process on the same seeded inputs, switching model "
        "every 10 runs after a 50 ms pause and one untimed run (ONNX Runtime's spinning worker "
        "threads of the session that just ran otherwise starve the next one on 2 cores); "
        "p50/p90 in ms; ratio = llmc p50 / ORT p50 (below 1 is faster). Peak RSS from a fresh "
        "process per model (session + runs). Max abs error: the artifact vs the source model, "
        "both in ORT_DISABLE_ALL. The llmc artifact's session skips ONNX Runtime's "
        "SkipLayerNormFusion on CPU (`SLOWER_ORT_FUSIONS`); 'ratio, all ORT fusions' times the same "
        "artifact with it on, in the same interleaved run: the A/B behind that choice.",
        "",
        "| model | batch | runs | ORT p50 | llmc p50 | ratio | ratio, all ORT fusions | ORT p90 "
        "| llmc p90 | ORT RSS MB | llmc RSS MB | nodes before -> after | max abs error | compile s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['runs']} | {r['ort_p50']:.2f} | {r['llmc_p50']:.2f} "
            f"| {r['ratio']:.3f} | {r['fused_ratio']:.3f} | {r['ort_p90']:.2f} | {r['llmc_p90']:.2f} | {r['ort_rss']:.0f} "
            f"| {r['llmc_rss']:.0f} | {r['nodes_before']} -> {r['nodes_after']} "
            f"| {r['max_abs_error']:.1e} | {r['compile_s']:.2f} |"
        )
    lines += [
        "",
        "## ONNX backend node cases after the default pipeline",
        "",
        "Each case that ONNX Runtime (ORT_DISABLE_ALL) itself passes is compiled with the default "
        "`ort` pipeline and must still pass with the case's own tolerances "
        "(`tests/test_onnx_node_cases.py`; `python -m benchmarks.conformance`).",
        "",
        f"- cases: {node_cases['cases']}",
        f"- ran: {node_cases['ran']}, passed: {node_cases['passed']}, failed: {node_cases['failed']}",
        f"- skipped: {node_cases['skipped']}",
    ]
    lines += [f"  - {reason}: {n}" for reason, n in node_cases["skip_reasons"].items()]
    lines += [f"  - FAILED {f}" for f in node_cases["failures"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs at batch 1 (divided by batch, at least 40)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    for key in args.models.split(","):
        rows += bench_model(key, args.runs, args.threads)
    conformance.quiet()
    node_cases = conformance.summarize([conformance.check_case(c) for c in conformance.load_cases()])
    RESULTS.write_text(render(rows, node_cases, args.threads, time.perf_counter() - start))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
