"""`make bench`: llmc against the anchors, written to benchmarks/RESULTS.md with machine and versions.

For each model (MiniLM real weights, BERT-base, GPT-2 small, a ~100M LLaMA-style decoder; all
default dynamo exports) and case (encoders: batch 1 and 8 at sequence 128; decoders: the same
prefill plus a 1-token decode step over 128 cached tokens), these are timed interleaved in one
process on the same seeded inputs and thread count:

- ORT_ENABLE_ALL on the raw dynamo export (the ratio's denominator);
- the llmc artifact (built once per model; its graph has dynamic shapes);
- ONNX Runtime's transformers optimizer, best of its dynamo- and legacy-export results;
- torch eager (the Hugging Face module, ``torch.inference_mode``).

MatMul/Gemm GFLOP/s of the llmc artifact are put against this machine's MatMul peak, measured in
the same run. A fusion A/B times the default artifact against one built with each fusion family
flipped (on -> off, or off -> on): the evidence behind each family's default.

    python -m benchmarks.run [--runs N] [--threads T] [--models minilm,bert-base,gpt2,llama]
        [--ab-models minilm,gpt2,llama] [--no-conformance]
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path
from typing import Any

import numpy as np

import llmc
from benchmarks import anchors, conformance, models
from benchmarks.harness import RESULTS, isolated, machine, versions_text
from llmc.model.feeds import make_feeds, resolve_shapes
from llmc.model.io import load_model
from llmc.passes.fusion import enabled_families
from llmc.runtime.bench import BenchModel, resolve_bench_model, run_benchmark
from llmc.targets.ort import ORT

BENCH = models.CACHE.parent / "bench"
SEQUENCE, PAST = 128, 128


class Spec:
    def __init__(self, key, title, export, hf_model, decoder, optimizer_type, heads, hidden):
        self.key, self.title, self.export, self.hf_model = key, title, export, hf_model
        self.decoder, self.optimizer_type, self.heads, self.hidden = decoder, optimizer_type, heads, hidden


def _specs() -> dict[str, Spec]:
    from llmc import export

    return {
        "minilm": Spec(
            "minilm",
            "all-MiniLM-L6-v2 (real weights)",
            models.minilm,
            export.minilm_model,
            False,
            "bert",
            12,
            384,
        ),
        "bert-base": Spec(
            "bert-base",
            "BERT-base (random weights)",
            models.bert_base,
            export.bert_model,
            False,
            "bert",
            12,
            768,
        ),
        "gpt2": Spec(
            "gpt2", "GPT-2 small (random weights)", models.gpt2, export.gpt2_model, True, "gpt2", 12, 768
        ),
        "llama": Spec(
            "llama",
            "LLaMA-style 100M, GQA 12/4 (random weights)",
            models.llama,
            export.llama_model,
            True,
            "gpt2",
            12,
            768,
        ),
    }


def cases(spec: Spec) -> list[tuple[str, dict[str, tuple[int, ...]]]]:
    """(label, --shape bindings) per timed case."""
    out = []
    for batch in (1, 8):
        shapes = {"input_ids": (batch, SEQUENCE)}
        if spec.decoder:
            out.append((f"prefill b{batch}", {**shapes, "attention_mask": (batch, SEQUENCE)}))
            out.append(
                (
                    f"decode b{batch} (past {PAST})",
                    {"input_ids": (batch, 1), "attention_mask": (batch, PAST + 1)},
                )
            )
        else:
            out.append((f"b{batch}", shapes))
    return out


def build(spec: Spec, source: Path, fusions: dict[str, bool] | None = None, tag: str = "") -> llmc.Artifact:
    shapes = {"input_ids": (1, 32)}
    if spec.decoder:  # verify a decode step: exercises the KV cache path
        shapes["attention_mask"] = (1, 48)
    return llmc.build(
        source, output=BENCH / f"{spec.key}{tag}.llmc-ort", shapes=shapes, fusions=fusions, threads=2
    )


def optimizer_anchors(spec: Spec) -> tuple[list[tuple[str, Path]], dict[str, Any]]:
    """The transformers optimizer on both exports: [(label, path)] that worked, and notes/counts."""
    paths, notes = [], {}
    for dynamo in (True, False):
        kind = "dynamo" if dynamo else "legacy, eager attention"
        try:
            src = spec.export(dynamo=dynamo, eager=not dynamo)
            dst = BENCH / f"{spec.key}-{'dynamo' if dynamo else 'legacy-eager'}.ortopt.onnx"
            anchors.transformers_optimizer(
                src, dst, model_type=spec.optimizer_type, num_heads=spec.heads, hidden_size=spec.hidden
            )
            paths.append((f"ORT transformers optimizer ({kind})", dst))
            notes[kind] = anchors.fused_op_counts(dst)
        except anchors.AnchorFailed as exc:
            notes[kind] = f"failed: {exc.reason[:160]}"
    return paths, notes


def eager(spec: Spec, threads: int) -> BenchModel:
    from llmc.export import _DecoderWithCache, _HiddenStates, decoder_input_names

    model = spec.hf_model()
    if spec.decoder:
        names = decoder_input_names(model.config.num_hidden_layers)
        return anchors.torch_eager_target(
            "torch eager", _DecoderWithCache(model).eval(), names, threads, positional=True
        )
    return anchors.torch_eager_target(
        "torch eager", _HiddenStates(model).eval(), ["input_ids", "attention_mask"], threads, positional=True
    )


def runs_for(seconds_per_run: float, runs: int, budget_s: float) -> int:
    return max(30, min(runs, int(budget_s / max(seconds_per_run, 1e-4))))


def _probe(target: BenchModel, feeds) -> float:
    run = target.create_runner()
    run(feeds)
    start = time.perf_counter()
    run(feeds)
    return time.perf_counter() - start


def bench_model(spec: Spec, runs: int, threads: int, peak: float) -> tuple[list[dict], dict]:
    source = spec.export(dynamo=True)
    artifact = build(spec, source)
    optimized, opt_notes = optimizer_anchors(spec)
    torch_target = eager(spec, threads)
    model = load_model(source)
    rows = []
    for label, shapes in cases(spec):
        feeds = make_feeds(model, resolve_shapes(model, shapes)[0])
        targets = [
            resolve_bench_model(source, threads=threads, level="all", label="ORT_ENABLE_ALL"),
            resolve_bench_model(artifact.path, threads=threads, label="llmc"),
            *(resolve_bench_model(p, threads=threads, level="all", label=name) for name, p in optimized),
            torch_target,
        ]
        n = runs_for(_probe(targets[0], feeds), runs, budget_s=8.0)
        results = run_benchmark(targets, feeds, runs=n, warmup=3, measure_rss=False)
        ort, ours, *opts, eager_result = results
        best_opt = min(opts, key=lambda r: r.p50_ms) if opts else None
        # From the source: fused ops (Attention's QKV GEMM...) hide MatMuls from the count.
        flops = anchors.matmul_flops(source, feeds)
        row = {
            "model": spec.title,
            "case": label,
            "runs": n,
            "ort": ort.p50_ms,
            "llmc": ours.p50_ms,
            "ratio": ours.p50_ms / ort.p50_ms,
            "opt": best_opt.p50_ms if best_opt else None,
            "opt_label": best_opt.label.split("(")[-1].rstrip(")") if best_opt else "-",
            "vs_opt": ours.p50_ms / best_opt.p50_ms if best_opt else None,
            "torch": eager_result.p50_ms,
            "vs_torch": ours.p50_ms / eager_result.p50_ms,
            "gflops": flops / (ours.p50_ms / 1e3) / 1e9,
            "peak_pct": 100 * flops / (ours.p50_ms / 1e3) / 1e9 / peak,
        }
        rows.append(row)
        print(
            f"{spec.key} {label}: ORT {ort.p50_ms:.2f} llmc {ours.p50_ms:.2f} ({row['ratio']:.3f}x) "
            f"opt {row['opt']} torch {eager_result.p50_ms:.2f} ms; {row['gflops']:.0f} GFLOP/s",
            flush=True,
        )
    info = {
        "model": spec.title,
        "llmc": artifact.manifest["fusions"],
        "not_fused": len(artifact.manifest["not_fused"]),
        "max_abs_error": artifact.manifest["verification"]["max_abs_error"],
        "nodes": f"{artifact.manifest['nodes']['before']} -> {artifact.manifest['nodes']['after']}",
        "compile_s": artifact.manifest["compile_seconds"],
        "optimizer": opt_notes,
    }
    return rows, info


def fusion_ab(spec: Spec, runs: int, threads: int) -> list[dict]:
    """Default artifact vs each relevant family flipped, batch 1 (prefill for decoders)."""
    source = spec.export(dynamo=True)
    default = build(spec, source)
    enabled, disabled = enabled_families(ORT.name, ORT.fusions, "cpu")
    fired = set(
        default.manifest["passes"][[r["name"] for r in default.manifest["passes"]].index("fuse")]["stats"]
    )
    flips = [(f.name, False) for f in enabled if f.name in fired and f.name != "canonical"]
    flips += [(name, True) for name in disabled]
    variants = []
    for name, on in flips:
        variant = build(spec, source, {name: on}, tag=f"-{'on' if on else 'off'}-{name}")
        if variant.manifest["fused_ops"] != default.manifest["fused_ops"]:  # else nothing to time
            variants.append((name, on, variant))
    model = load_model(source)
    rows = []
    for label, shapes in cases(spec)[:2]:  # encoders b1, b8; decoders prefill, decode b1
        feeds = make_feeds(model, resolve_shapes(model, shapes)[0])
        targets = [resolve_bench_model(default.path, threads=threads, label="default")]
        targets += [
            resolve_bench_model(a.path, threads=threads, label=f"{n}={'on' if on else 'off'}")
            for n, on, a in variants
        ]
        n = runs_for(_probe(targets[0], feeds), runs, budget_s=6.0)
        results = run_benchmark(targets, feeds, runs=n, warmup=3, measure_rss=False)
        base = results[0].p50_ms
        for (name, on, _), r in zip(variants, results[1:], strict=True):
            rows.append(
                {
                    "model": spec.title,
                    "case": label,
                    "family": name,
                    "flip": "on" if on else "off",
                    "default_ms": base,
                    "flipped_ms": r.p50_ms,
                    "effect": r.p50_ms / base if on else base / r.p50_ms,  # fused p50 / unfused p50
                }
            )
            print(
                f"A/B {spec.key} {label} {name}={'on' if on else 'off'}: {base:.2f} vs {r.p50_ms:.2f}",
                flush=True,
            )
    return rows


def _f(value, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def render(rows, infos, ab_rows, peak_info, node_cases, threads: int, seconds: float) -> str:
    peak = peak_info["peak"]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`python -m benchmarks.run`) on {datetime.date.today()}, {seconds / 60:.1f} min.",
        "",
        f"- Machine: {machine()}",
        f"- Threads: {threads} intra-op (every target)",
        "- Versions: " + versions_text(),
        f"- fp32 MatMul peak in ONNX Runtime, this run: {peak:.0f} GFLOP/s ("
        + ", ".join(f"{k} {v:.0f}" for k, v in peak_info["shapes"].items())
        + ")",
        "",
        "## Latency: llmc fp32 vs the anchors",
        "",
        f"Sequence {SEQUENCE}; decoders also a decode step (1 new token, {PAST} cached). All targets timed "
        "interleaved in one process on the same seeded inputs, switching target every 10 runs after a "
        "50 ms pause and one untimed run; p50 in ms. ORT = ORT_ENABLE_ALL on the raw dynamo export; "
        "optimizer = ONNX Runtime's transformers optimizer (opt_level 1, then an ORT_ENABLE_ALL "
        "session), the faster of its results on the dynamo export and on a legacy export with eager "
        "attention, the form it was written for (which one in brackets); "
        "ratios are llmc p50 over the other's (below 1: llmc faster). GFLOP/s: MatMul/Gemm FLOPs "
        "of the source model at these shapes over the llmc artifact's p50, and as % of the MatMul peak above.",
        "",
        "| model | case | runs | ORT | llmc | llmc/ORT | optimizer | llmc/optimizer | torch | llmc/torch "
        "| llmc GFLOP/s | % of peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['case']} | {r['runs']} | {r['ort']:.2f} | {r['llmc']:.2f} | {r['ratio']:.3f} "
            f"| {_f(r['opt'])} ({r['opt_label']}) | {_f(r['vs_opt'], '.3f')} | {r['torch']:.2f} "
            f"| {r['vs_torch']:.3f} | {r['gflops']:.0f} | {r['peak_pct']:.0f}% |"
        )
    lines += [
        "",
        "## Fused ops per model",
        "",
        "llmc: ops its fusion created (`manifest.json` `fusions`); unfused candidates left (`not_fused`, "
        "including families off by default); max abs error of the artifact vs the source (ORT_DISABLE_ALL, "
        "seeded inputs; decoders at a decode step with 16 cached tokens). Optimizer: contrib ops in the "
        "transformers optimizer's output per export, or why it failed.",
        "",
        "| model | llmc fused | not fused | max abs error | nodes | compile s | optimizer (dynamo) | optimizer (legacy, eager attention) |",
        "|---|---|---:|---:|---|---:|---|---|",
    ]
    for i in infos:
        fused = ", ".join(f"{k} {v}" for k, v in i["llmc"].items()) or "-"
        opt = [i["optimizer"].get(k, "-") for k in ("dynamo", "legacy, eager attention")]
        opt = [
            ", ".join(f"{k} {v}" for k, v in o.items()) or "none" if isinstance(o, dict) else o for o in opt
        ]
        lines.append(
            f"| {i['model']} | {fused} | {i['not_fused']} | {i['max_abs_error']:.1e} | {i['nodes']} "
            f"| {i['compile_s']:.1f} | {opt[0]} | {opt[1]} |"
        )
    lines += [
        "",
        "## Fusion A/B: each family flipped against the default artifact",
        "",
        "Encoders at batch 1 and 8, decoders prefill and decode at batch 1. A family on by default is turned off, one off by "
        "default is turned on; the two artifacts timed interleaved. effect = the fused variant's p50 "
        "over the unfused one's: below 1 the fusion pays, above 1 it loses (and is off by default).",
        "",
        "| model | case | family | flipped | default p50 | flipped p50 | fused / unfused |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in ab_rows:
        lines.append(
            f"| {r['model']} | {r['case']} | {r['family']} | {r['flip']} | {r['default_ms']:.2f} "
            f"| {r['flipped_ms']:.2f} | {r['effect']:.3f} |"
        )
    if node_cases:
        lines += [
            "",
            "## ONNX backend node cases after the default pipeline",
            "",
            "Each case that ONNX Runtime (ORT_DISABLE_ALL) itself passes is compiled with the default "
            "`ort` pipeline and must still pass with the case's own tolerances "
            "(`tests/test_onnx_node_cases.py`; `python -m benchmarks.conformance`).",
            "",
            f"- cases: {node_cases['cases']}",
            f"- ran: {node_cases['ran']}, passed: {node_cases['passed']}, failed: {node_cases['failed']}",
            f"- skipped: {node_cases['skipped']}",
        ]
        lines += [f"  - {reason}: {n}" for reason, n in node_cases["skip_reasons"].items()]
        lines += [f"  - FAILED {f}" for f in node_cases["failures"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=200, help="most timed runs per case (fewer for slow cases)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="minilm,bert-base,gpt2,llama")
    parser.add_argument("--ab-models", default="minilm,gpt2,llama")
    parser.add_argument("--no-conformance", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the tables")
    args = parser.parse_args()
    specs = _specs()
    start = time.perf_counter()
    peak = anchors.matmul_peak_gflops(threads=args.threads)
    print(f"MatMul peak {peak['peak']:.0f} GFLOP/s", flush=True)
    rows, infos, ab_rows = [], [], []
    for key in filter(None, args.models.split(",")):
        r, info = isolated(bench_model, specs[key], args.runs, args.threads, peak["peak"])
        rows += r
        infos.append(info)
    for key in filter(None, args.ab_models.split(",")):
        ab_rows += isolated(fusion_ab, specs[key], args.runs, args.threads)
    node_cases = None
    if not args.no_conformance:
        conformance.quiet()
        node_cases = conformance.summarize([conformance.check_case(c) for c in conformance.load_cases()])
    args.output.write_text(
        render(rows, infos, ab_rows, peak, node_cases, args.threads, time.perf_counter() - start)
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
