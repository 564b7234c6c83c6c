"""The decode roofline of SmolLM2-135M int4, op type by op type: llmc's builds beside
onnxruntime-genai's (``python -m benchmarks.roofline``, part of ``make bench``).

Systems: llmc int4 at the defaults, llmc int4 fast (``--accuracy-level 4``), llmc's build of
GenAI's quantization (``benchmarks.decode``'s ``llmc-int4-genai``: rtn b32 symmetric, level 4,
an int4 head; gate opened) and GenAI int4 (its model builder's ``model.onnx``: a plain ONNX file in the same
decoder contract, so the same profiler runs it in a plain ONNX Runtime session, 2 threads, level
all; GenAI's own loop is not involved). Each runs
:func:`llmc.generation.roofline.decode_roofline` in a fresh process (batch 1, 128 cached
tokens, 100 timed steps after 10 warm-up, 20 profiled), against one bandwidth measured first
(:func:`llmc.runtime.bandwidth.measure_bandwidth`, 2 threads); 3 rounds (``LLMC_BENCH_ROUNDS``),
the systems in turn, and per system the round with the median ms/token. GenAI's row is "n/a" without
onnxruntime-genai (``make bench-anchors``).
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any

from benchmarks import decode
from benchmarks import decode_anchors as anchors
from benchmarks.harness import job, machine_line, write_section

MODEL, CONTEXT, STEPS = "smollm2", 128, 100
BEGIN, END = "<!-- roofline:begin -->", "<!-- roofline:end -->"
SYSTEMS = {
    "llmc-int4": "llmc int4 (defaults)",
    "llmc-int4-fast": "llmc int4 fast",
    "llmc-int4-genai": "llmc, GenAI's quantization",
    "genai-int4": "GenAI int4",
}
SMALL_MS = 0.05  # op types under this everywhere share one row


def model_path(system: str) -> str:
    """What ``system`` profiles: an llmc artifact directory or GenAI's model file."""
    if system == "genai-int4":
        if importlib.util.find_spec("onnxruntime_genai") is None:
            raise anchors.Unavailable("n/a: onnxruntime-genai is not installed (make bench-anchors)")
        return str(anchors.genai_dir(MODEL, "int4") / "model.onnx")
    return str(decode.artifact(MODEL, system))


def _roofline(path: str, bandwidth: float) -> dict[str, Any]:
    from llmc.generation.roofline import decode_roofline

    report = decode_roofline(path, context=CONTEXT, steps=STEPS, threads=decode.THREADS, bandwidth_gbs=bandwidth)
    return report.to_dict()


def measure(bandwidth: float, rounds: int = 3) -> dict[str, dict[str, Any]]:
    """Each system's report (as a dict), or ``{"error": why}``: ``rounds`` rounds, the systems in
    turn in each, and per system the round whose ms/token is the median."""
    runs: dict[str, list[dict[str, Any]]] = {system: [] for system in SYSTEMS}
    for _ in range(rounds):
        for system in SYSTEMS:
            if runs[system] and "error" in runs[system][-1]:
                continue
            try:
                result = job(_roofline, model_path(system), bandwidth)
            except anchors.Unavailable as exc:
                result = {"error": str(exc)}
            except Exception as exc:  # a build that fails: a row that says so
                result = {"error": f"n/a: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            runs[system].append(result)
            print(system, result.get("ms_per_token", result.get("error")), flush=True)
    return {system: _median_run(results) for system, results in runs.items()}


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    good = sorted((r for r in results if "error" not in r), key=lambda r: r["ms_per_token"])
    return good[(len(good) - 1) // 2] if good else results[-1]


def summary(reports: dict[str, dict[str, Any]]) -> str:
    header = [
        "system", "ms/token", "MB read/token (weights + KV)", "gathered table left out (MB)", "achieved GB/s",
        "floor ms", "% of floor", "nodes: file / after ORT / kernels run", "profiled step ms", "between kernels ms",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system, label in SYSTEMS.items():
        r = reports[system]
        if "error" in r:
            lines.append(f"| {label} | {r['error']} |" + " |" * (len(header) - 2))
            continue
        lines.append(
            f"| {label} | {r['ms_per_token']:.2f} | {r['bytes_per_token'] / 1e6:.1f} ({r['weight_bytes'] / 1e6:.1f} + "
            f"{r['kv_bytes'] / 1e6:.1f}) | {r['gathered_out'] / 1e6:.1f} | {r['achieved_gbs']:.2f} | "
            f"{r['floor_ms']:.2f} | {r['floor_pct']:.0f}% | {r['file_nodes']} / {r['session_nodes']} / "
            f"{r['kernels_per_step']:.0f} | {r['profiled_ms']:.2f} | {r['between_kernels_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def by_op(reports: dict[str, dict[str, Any]]) -> str:
    """Op types (slowest anywhere first) x systems: ms per profiled step, nodes, MB, % of its floor."""
    good = {s: r for s, r in reports.items() if "error" not in r}
    ops: dict[str, dict[str, dict[str, Any]]] = {}
    for system, report in good.items():
        for row in report["ops"]:
            ops.setdefault(row["op_type"], {})[system] = row
    order = sorted(ops, key=lambda op: -max(row["ms"] for row in ops[op].values()))
    small = [op for op in order if max(row["ms"] for row in ops[op].values()) < SMALL_MS]
    header = ["op type", *(SYSTEMS[s] for s in good)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for op in order:
        if op in small:
            continue
        cells = [op]
        for system in good:
            row = ops[op].get(system)
            if row is None:
                cells.append("")
                continue
            read = f", {row['bytes'] / 1e6:.1f} MB at {row['gbs']:.1f} GB/s ({row['floor_pct']:.0f}% of floor)" if row["bytes"] >= 1e5 else ""
            cells.append(f"{row['ms']:.2f} ms x{row['nodes']}{read}")
        lines.append("| " + " | ".join(cells) + " |")
    if small:
        rest = [sum(ops[op][s]["ms"] for op in small if s in ops[op]) for s in good]
        lines.append("| " + " | ".join([f"{len(small)} op types under {SMALL_MS} ms each", *(f"{ms:.2f} ms" for ms in rest)]) + " |")
    for key, label in (("between_kernels_ms", "(between kernels)"), ("profiled_ms", "**profiled step**")):
        lines.append("| " + " | ".join([label, *(f"{good[s][key]:.2f} ms" for s in good)]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    started, load = time.perf_counter(), os.getloadavg()
    bandwidth = float(os.environ.get("LLMC_BANDWIDTH_GBS", 0)) or decode.bandwidth_gbs()
    rounds = int(os.environ.get("LLMC_BENCH_ROUNDS", 3))
    reports = measure(bandwidth, rounds)
    text = "\n".join([
        BEGIN,
        f"{machine_line()} Measured read bandwidth {bandwidth:.1f} GB/s (`llmc.runtime.bandwidth`, ReduceSum over "
        f"512 MiB, {decode.THREADS} threads). Batch 1, {CONTEXT} cached tokens, {decode.THREADS} threads; ms/token "
        f"is the median of {STEPS} timed steps, op times are kernel time per step over 20 profiled steps; each system "
        f"in a fresh process, {rounds} rounds in turn, the round with the median ms/token shown. Load average "
        f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after. `python -m benchmarks.roofline` "
        f"({time.perf_counter() - started:.0f} s).\n",
        summary(reports),
        "Op by op (ms per profiled step, x nodes; for op types reading over 0.1 MB: what they read per step, the "
        "GB/s it was read at and the share of the op's own floor):\n",
        by_op(reports),
        END,
    ])
    write_section(BEGIN, END, text)


if __name__ == "__main__":
    main()
