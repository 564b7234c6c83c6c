"""FP16 accuracy benchmark (`make bench`): ``--target trt --precision fp16`` on the CPU emulation.

For MiniLM (real weights, real sentences and seeded ids), BERT-base, GPT-2 and the LLaMA-style
decoder (random weights; decoders at prefill and at a decode step with a 128-token cache), builds
the TensorRT-ready float16 ONNX (``--no-engine``) and records what the build verified against
the float32 source model: max error over each output's scale (the issue's "1e-2 relative"),
cosine, NaN/Inf, on the faithful float16 emulation and on ONNX Runtime's own CPU run of the
float16 graph; the float16 / float32 node split, the numeric check's fallbacks and the build
time. Writes the "FP16" section of benchmarks/RESULTS.md. No GPU is involved: engine latency is
``python -m benchmarks.gpu``.

    python -m benchmarks.fp16 [--models minilm,bert-base,gpt2,llama]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import llmc
from benchmarks import models
from benchmarks.harness import machine, sentences, tokenize, write_section

BEGIN, END = "<!-- fp16:begin -->", "<!-- fp16:end -->"
CACHE = models.CACHE.parent / "fp16"
NAMES = {"minilm": "all-MiniLM-L6-v2", "bert-base": "BERT-base", "gpt2": "GPT-2 small", "llama": "LLaMA-style 100M"}


def _cases(key: str) -> list[tuple[str, dict[str, Any]]]:
    if key in ("minilm", "bert-base"):
        cases = [("seeded ids 1x128", {"shapes": {"input_ids": (1, 128), "attention_mask": (1, 128)}}),
                 ("seeded ids 8x128", {"shapes": {"input_ids": (8, 128), "attention_mask": (8, 128)}})]
        if key == "minilm":
            cases.append(("8 real sentences x128", {"inputs": _sentences()}))
        return cases
    return [
        ("prefill 1x128", {"shapes": {"input_ids": (1, 128), "attention_mask": (1, 128)}}),
        ("decode 1x1, cache 128", {"shapes": {"input_ids": (1, 1), "attention_mask": (1, 129)}}),
    ]


def _sentences() -> Path:
    ids, mask = tokenize(sentences(256, 264))
    path = CACHE / "sentences.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, input_ids=ids, attention_mask=mask)
    return path


def bench(key: str) -> list[dict[str, Any]]:
    source = {"minilm": models.minilm, "bert-base": models.bert_base, "gpt2": models.gpt2, "llama": models.llama}[key]()
    rows = []
    for label, kwargs in _cases(key):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            artifact = llmc.build(source, target="trt", precision="fp16", no_engine=True, output=out, **kwargs)
            seconds = time.perf_counter() - start
        m = artifact.manifest
        f = m["fp16"]
        rows.append({
            "model": key, "case": label,
            "emulated_rel": m["verification"]["max_rel_error"], "emulated_cos": m["verification"]["cosine_min"],
            "ort_cpu_rel": f["check"]["ort_cpu"]["max_rel_error"], # compare_outputs fails an output whose NaN/Inf differ from the reference's
            "finite": bool(m["verification"]["passed"] and np.isfinite(m["verification"]["max_abs_error"])),
            "fp16_nodes": f["nodes"]["fp16"], "fp32_nodes": f["nodes"]["fp32"], "casts": f["casts"],
            "fallback": len(f["fallback"]), "worst_layer": f["check"]["worst_layer_error"],
            "seconds": seconds,
        })
        print(json.dumps(rows[-1]))
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    import onnxruntime

    lines = [
        BEGIN,
        "## FP16 with float32 islands (`python -m benchmarks.fp16`, part of `make bench`)",
        "",
        f"Machine: {machine()}; onnxruntime {onnxruntime.__version__}. CPU only: accuracy of the "
        "TensorRT-ready float16 graph (`llmc build --target trt --precision fp16 --no-engine`) against the "
        "float32 source model, as the build verifies it. *emulated*: float32 compute with float16 rounding "
        "after every float16 node (what a GPU does; the build's check); *ORT CPU*: ONNX Runtime running the "
        "float16 file itself (it keeps float32 between nodes, so it is optimistic). Error = max abs error / "
        "max |reference| per output, worst output. The target is 1e-2 with no NaN/Inf.",
        "",
        "| model | inputs | error (emulated) | cosine min | error (ORT CPU) | NaN/Inf | fp16 / fp32 nodes | casts | layers moved to fp32 | build s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {NAMES[r['model']]} | {r['case']} | {r['emulated_rel']:.2e} | {r['emulated_cos']:.6f} | "
            f"{r['ort_cpu_rel']:.2e} | {'none' if r['finite'] else 'yes'} | {r['fp16_nodes']} / {r['fp32_nodes']} | "
            f"{r['casts']} | {r['fallback']} | {r['seconds']:.1f} |"
        )
    worst = max(r["emulated_rel"] for r in rows)
    lines += ["", f"Worst error over all cases: {worst:.2e} (target 1e-2).", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,bert-base,gpt2,llama")
    args = parser.parse_args()
    rows = [row for key in args.models.split(",") for row in bench(key)]
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "results.json").write_text(json.dumps(rows, indent=1))
    write_section(BEGIN, END, render(rows))


if __name__ == "__main__":
    main()
