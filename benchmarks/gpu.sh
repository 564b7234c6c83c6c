#!/usr/bin/env bash
# benchmarks/gpu.sh: llmc on an NVIDIA GPU, written to benchmarks/results-gpu.md.
#
# The benchmark is the module benchmarks/gpu.py (what it measures, its prerequisites: see its
# docstring or `python -m benchmarks.gpu --help`); this wrapper only picks the interpreter and maps
# the environment variables it has always taken to the module's flags. Extra arguments pass through.
#
# Usage: benchmarks/gpu.sh [ARGS...]   (env: PYTHON, LLMC, RUNS=200, WARMUP=20, OUT=.cache/gpu)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || { echo "gpu.sh: no Python at $PY; run \`make install\` or set PYTHON" >&2; exit 1; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0

args=(--runs "${RUNS:-200}" --warmup "${WARMUP:-20}" --out "${OUT:-$ROOT/.cache/gpu}")
[[ -n "${LLMC:-}" ]] && args+=(--llmc "$LLMC")
exec "$PY" -m benchmarks.gpu "${args[@]}" "$@"
