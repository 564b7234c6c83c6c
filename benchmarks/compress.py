"""``llmc compress`` on all-MiniLM-L6-v2 (real weights), distilled on ../shared/data/sentences.txt.

The compressed model (half of every layer's FFN neurons, the 4 most important of 6 layers,
distilled for ``--minutes``, 24 by default) is built by ``llmc build`` in fp32 and int8 and timed interleaved
against llmc's fp32 build of the original and ONNX Runtime on the original export (batch 1, the
sentences 1000-1031 each padded to 128, padding computed: the compute of a fixed-length server).
Agreement: mean-pooled embedding cosine with the original on those held-out sentences (the
compress run holds out its own last tenth of the file as well).

    python -m benchmarks.compress [--minutes 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from typing import Any

import numpy as np

from benchmarks import harness, models
from benchmarks.harness import machine_line, sentences, tokenize, tokenizer_dir, write_section

CACHE = harness.ROOT / ".cache" / "compress"
THREADS = 2


def _compress(minutes: float) -> dict[str, Any]:
    from llmc.compression import CompressOptions, compress

    out = CACHE / "minilm-compressed"
    report_path = out / "compress_report.json"
    if report_path.exists() and json.loads(report_path.read_text())["distillation"]["seconds"] >= 60 * minutes * 0.95:
        return json.loads(report_path.read_text())
    shutil.rmtree(out, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    data = CACHE / "train.txt"  # the file minus the rows the timing and agreement use
    data.write_text("\n".join(sentences(0, 1000) + sentences(1100, 2000)) + "\n")
    start = time.perf_counter()
    report = compress(tokenizer_dir(), data, out, CompressOptions(ffn=0.5, layers=4, minutes=minutes), print)
    report["wall_s"] = time.perf_counter() - start
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report_path.write_text(json.dumps(report, indent=2))
    return report


def _builds() -> dict[str, Any]:
    import llmc
    from llmc.int8.quantize import QuantizeOptions

    calibration = CACHE / "calibration.txt"
    calibration.write_text("\n".join(sentences(0, 256)) + "\n")
    paths = {"ORT fp32 (original)": models.minilm()}
    for label, source, precision in (("llmc fp32 (original)", models.minilm(), "fp32"),
                                     ("llmc fp32 (compressed)", CACHE / "minilm-compressed" / "model.onnx", "fp32"),
                                     ("llmc int8 (compressed)", CACHE / "minilm-compressed" / "model.onnx", "int8")):
        out = CACHE / label.replace(" ", "-").replace("(", "").replace(")", "")
        if not (out / "manifest.json").exists():
            extra = {} if precision == "fp32" else {
                "calibration_data": calibration, "tokenizer": tokenizer_dir(),
                "quantization": QuantizeOptions(samples=256, holdout=128, threads=THREADS)}
            llmc.build(source, precision=precision, output=out, threads=THREADS, shapes={"input_ids": (1, 128)}, **extra)
        paths[label] = out
    return paths


def _runner(path: Any) -> Any:
    import llmc
    from llmc.backends.ort import OrtRunner, SessionConfig, create_session

    if str(path).endswith(".onnx"):
        return OrtRunner(create_session(path, SessionConfig(intra_op_num_threads=THREADS))).run
    return llmc.load(path, threads=THREADS, padding="off").run


def measure(rounds: int) -> dict[str, Any]:
    paths = _builds()
    ids, mask = tokenize(sentences(1000, 1032), 128)
    calls = [{"input_ids": ids[i : i + 1], "attention_mask": mask[i : i + 1]} for i in range(len(ids))]
    times: dict[str, list[float]] = {label: [] for label in paths}
    for index in range(rounds):
        runners = {label: _runner(path) for label, path in paths.items()}
        order = list(paths)[index % len(paths) :] + list(paths)[: index % len(paths)]
        for label in order:
            run = runners[label]
            run(calls[0])
            per = []
            for feeds in calls:
                samples = []
                for _ in range(3):
                    start = time.perf_counter()
                    run(feeds)
                    samples.append(time.perf_counter() - start)
                per.append(np.median(samples))
            times[label].append(1e3 * float(np.mean(per)))
    runners = {label: _runner(path) for label, path in paths.items()}
    reference = [_pooled(runners["ORT fp32 (original)"], f) for f in calls]
    cosine = {}
    for label, run in runners.items():
        values = [float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in
                  zip(reference, (_pooled(run, f) for f in calls), strict=True)]
        cosine[label] = (float(np.mean(values)), float(np.min(values)))
    return {"ms": {k: float(np.median(v)) for k, v in times.items()}, "cosine": cosine}


def _pooled(run: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    hidden = run(feeds)["last_hidden_state"][0].astype(np.float64)
    mask = feeds["attention_mask"][0][:, None]
    return (hidden * mask).sum(0) / mask.sum()


def render(report: dict[str, Any], result: dict[str, Any], rounds: int) -> str:
    base, ours = result["ms"]["ORT fp32 (original)"], result["ms"]["llmc fp32 (original)"]
    lines = ["<!-- compress:begin -->", f"{machine_line()} `python -m benchmarks.compress`, {rounds} rounds.\n",
             "| model | ms (batch 1, 128) | vs ORT fp32 | vs llmc fp32 original | cosine mean | worst |", "|---|---|---|---|---|---|"]
    for label, ms in result["ms"].items():
        mean, worst = result["cosine"][label]
        lines.append(f"| {label} | {ms:.2f} | {ms / base:.2f}x | {ours / ms:.2f}x faster | {mean:.4f} | {worst:.4f} |")
    agree = report["held_out_agreement"]
    lines.append(
        f"\nCompression: layers {report['layers_kept']} of 6, FFN {report['ffn_neurons']['before']} -> "
        f"{report['ffn_neurons']['after']}, parameters {report['parameters']['before'] / 1e6:.1f}M -> "
        f"{report['parameters']['after'] / 1e6:.1f}M, GEMM FLOPs per token {report['gemm_flops_per_token']['before'] / 1e6:.1f}M -> "
        f"{report['gemm_flops_per_token']['after'] / 1e6:.1f}M; its own held-out cosine {agree['pruned']['cosine_mean']:.4f} "
        f"pruned -> {agree['distilled']['cosine_mean']:.4f} distilled ({report['distillation']['steps']} steps, "
        f"{report['distillation']['seconds']:.0f} s); `llmc compress` wall {report.get('wall_s', 0):.0f} s, peak RSS "
        f"{report.get('peak_rss_mb', 0):.0f} MB."
    )
    lines.append("<!-- compress:end -->")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=24.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    report = _compress(args.minutes)
    result = measure(args.rounds)
    text = render(report, result, args.rounds)
    write_section("<!-- compress:begin -->", "<!-- compress:end -->", text)
    print(text)


if __name__ == "__main__":
    main()
