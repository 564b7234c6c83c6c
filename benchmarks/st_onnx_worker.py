"""sentence-transformers' own ONNX backend, for benchmarks.embeddings (issue 31).

Run by the python of the side virtual environment that ``make bench-st-onnx`` creates
(.cache/venv-st-onnx: sentence-transformers with optimum-onnx, which needs transformers<4.58,
so it cannot share the project's .venv). It imports nothing from llmc or benchmarks. One JSON
argument, one JSON line on stdout (the last line):

    export: {"mode": "export", "source": DIR, "model": COPY, "threads": 2}
        copies the sentence-transformers directory DIR to COPY and lets the ONNX backend export
        it (optimum), saved into COPY/onnx/model.onnx so that later loads only load; prints the
        side environment's versions.
    encode: {"mode": "encode", "model": COPY, "texts": JSON_FILE, "batch": 32, "threads": 2,
             "out": NPY}
        loads COPY with ``backend="onnx"`` on the CPU execution provider, ``threads`` intra-op
        threads (onnxruntime's session options; torch's too, which pools and normalises), encodes
        the texts in calls of ``batch`` sentences after one warm-up call, writes the vectors to
        NPY and prints sentences/s.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("sentence-transformers", "optimum", "optimum-onnx", "transformers", "onnxruntime", "torch", "numpy")


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _load(model: str, threads: int) -> Any:
    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return SentenceTransformer(
        model, device="cpu", backend="onnx",
        model_kwargs={"provider": "CPUExecutionProvider", "session_options": options},
    )


def export(source: str, model: str, threads: int) -> dict[str, Any]:
    """Copy ``source`` to ``model`` with the exported ONNX model inside (written to a temporary
    folder first, renamed when complete)."""
    target = Path(model)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    _load(str(partial), threads).save_pretrained(str(partial))
    if not (partial / "onnx" / "model.onnx").exists():
        raise SystemExit(f"the ONNX backend saved no onnx/model.onnx in {partial}")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return {"versions": _versions()}


def encode(model: str, texts: str, batch: int, threads: int, out: str) -> dict[str, Any]:
    import numpy as np

    lines = json.loads(Path(texts).read_text())
    st = _load(model, threads)

    def run(chunk: list[str]) -> Any:
        return st.encode(chunk, batch_size=batch, convert_to_numpy=True, show_progress_bar=False)

    calls = [lines[i : i + batch] for i in range(0, len(lines), batch)]
    run(calls[0])  # warm-up
    start = time.perf_counter()
    vectors = np.concatenate([run(c) for c in calls])
    seconds = time.perf_counter() - start
    np.save(out, vectors)
    return {"sentences_per_s": len(lines) / seconds, "versions": _versions()}


def main() -> None:
    args = json.loads(sys.argv[1])
    if args["mode"] == "export":
        result = export(args["source"], args["model"], args["threads"])
    else:
        result = encode(args["model"], args["texts"], args["batch"], args["threads"], args["out"])
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
