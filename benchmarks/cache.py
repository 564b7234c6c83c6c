"""Build cache: a second identical build into another output directory, against the first.

    python -m benchmarks.cache [--rounds 3] [--no-int8]

Each round uses a fresh cache directory and runs every build in a fresh process (so nothing is
warm in memory but the page cache): the cold build, the identical build into another ``-o``
(a cache hit; its model.onnx must be byte-identical), and for int8 a build with another accuracy
budget (a different artifact, so no hit, but the calibration statistics are reused). Medians of
the rounds go to the "Build cache" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import models
from benchmarks.harness import SENTENCES, job, machine_line, tokenizer_dir, write_section

BEGIN, END = "<!-- cache:begin -->", "<!-- cache:end -->"
TARGET = 5.0  # the cached rebuild must be at least this many times faster


def _build(source: str, out: str, cache_dir: str, precision: str, loss: float) -> dict[str, Any]:
    """One build in this (fresh) process; wall time, cache hit, calibration reuse, model bytes."""
    import os
    import time

    os.environ["LLMC_CACHE_DIR"] = cache_dir
    os.environ.pop("LLMC_NO_CACHE", None)
    import llmc
    from llmc.int8.options import QuantizeOptions

    kwargs: dict[str, Any] = {}
    if precision == "int8":
        kwargs = dict(
            calibration_data=str(SENTENCES), tokenizer=str(tokenizer_dir()),
            quantization=QuantizeOptions(samples=64, holdout=32, max_accuracy_loss=loss),
        )
    start = time.perf_counter()
    artifact = llmc.build(source, precision=precision, output=out, shapes={"input_ids": (1, 128)}, threads=2, **kwargs)
    seconds = time.perf_counter() - start
    stats = artifact.manifest.get("quantization", {}).get("statistics", {})
    return {
        "seconds": seconds,
        "hit": artifact.manifest["cache"]["hit"],
        "stats_reused": stats.get("reused"),
        "model": str(Path(out) / "model.onnx"),
    }


def _round(source: Path, precision: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llmc-cache-bench-") as tmp:
        cache = str(Path(tmp) / "cache")
        cold = job(_build, str(source), str(Path(tmp) / "a"), cache, precision, 0.005)
        hit = job(_build, str(source), str(Path(tmp) / "b"), cache, precision, 0.005)
        for result in (cold, hit):
            if "error" in result:
                raise SystemExit(f"{precision} build failed: {result['error']}")
        same = Path(cold["model"]).read_bytes() == Path(hit["model"]).read_bytes()
        row = {"cold": cold["seconds"], "hit": hit["seconds"], "was_hit": hit["hit"], "identical": same}
        if precision == "int8":
            other = job(_build, str(source), str(Path(tmp) / "c"), cache, precision, 0.01)
            row.update(calibrated=other["seconds"], stats_reused=other["stats_reused"], other_hit=other["hit"])
        return row


def render(rows: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        BEGIN,
        "## Build cache",
        "",
        f"`python -m benchmarks.cache`. {machine_line()}",
        "all-MiniLM-L6-v2 (real weights), `--shape input_ids=1x128`, 2 threads. Per round a fresh cache",
        "directory and a fresh process per build; medians over the rounds. The cached rebuild is the",
        "same build into another output directory.",
        "",
        "| build | cold build (s) | cached rebuild (s) | speed-up | byte-identical model | other budget, stats reused (s) |",
        "|---|---|---|---|---|---|",
    ]
    for precision, results in rows.items():
        cold = statistics.median(r["cold"] for r in results)
        hit = statistics.median(r["hit"] for r in results)
        identical = all(r["identical"] and r["was_hit"] for r in results)
        reused = "-"
        if precision == "int8":
            calibrated = statistics.median(r["calibrated"] for r in results)
            ok = all(r["stats_reused"] and not r["other_hit"] for r in results)
            reused = f"{calibrated:.2f}" + ("" if ok else " (statistics NOT reused)")
        lines.append(
            f"| MiniLM {precision} | {cold:.2f} | {hit:.3f} | {cold / hit:.1f}x | {'yes' if identical else 'NO'} | {reused} |"
        )
    worst = min(statistics.median(r["cold"] for r in v) / statistics.median(r["hit"] for r in v) for v in rows.values())
    lines += ["", f"Target: cached rebuild at least {TARGET:.0f}x faster; worst measured {worst:.1f}x.", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-int8", action="store_true", help="time only the fp32 build")
    args = parser.parse_args()
    source = models.minilm()
    rows: dict[str, list[dict[str, Any]]] = {}
    for precision in ("fp32",) if args.no_int8 else ("fp32", "int8"):
        rows[precision] = []
        for i in range(args.rounds):
            rows[precision].append(_round(source, precision))
            print(precision, i, rows[precision][-1], flush=True)
    text = render(rows)
    print(text)
    write_section(BEGIN, END, text)


if __name__ == "__main__":
    main()
