"""Memory planning benchmark (`make bench`): arena vs lower bound, reordering, planner time, ORT RSS.

For MiniLM, BERT-base, GPT-2 and the LLaMA-style decoder (default dynamo exports), at batch 1/8
and sequence 128/512 (decoders: prefill with an empty cache):

- on the llmc artifact (default pipeline) and on the raw export: arena / lower bound, lower bound
  after / before the memory-aware reorder, no-reuse total / arena, planner time (warm process);
- ONNX Runtime's peak RSS during inference (ORT_ENABLE_ALL, 2 threads, fresh process per
  measurement, VmHWM reset after the session is created, 2 runs): the artifact built without the
  ``memory`` pass against the default one, and for the raw export, the export as is against the
  reordered export run in file order (``priority_based``) and in ONNX Runtime's default order;
- the arena lower bound under the order ONNX Runtime actually executes (its profiler's node
  sequence, ORT_DISABLE_ALL so node names survive), default vs priority_based.

Planner time is also taken on a 32-layer LLaMA-style export. Writes the "Memory planning" section
of benchmarks/RESULTS.md.

    python -m benchmarks.memory [--models minilm,bert-base,gpt2,llama] [--no-rss]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import llmc
from benchmarks import harness, models
from llmc.model.feeds import make_feeds, resolve_shapes
from llmc.model.io import load_model
from llmc.passes.memory.liveness import liveness
from llmc.passes.memory.planner import analyze_memory

BEGIN, END = "<!-- memory:begin -->", "<!-- memory:end -->"
OUT = models.CACHE.parent / "memory"
CASES = [(1, 128), (1, 512), (8, 128), (8, 512)]
TITLES = {
    "minilm": "all-MiniLM-L6-v2",
    "bert-base": "BERT-base",
    "gpt2": "GPT-2 small",
    "llama": "LLaMA-style 100M",
}
MIB = 2**20


def _source(key: str) -> Path:
    return {"minilm": models.minilm, "bert-base": models.bert_base, "gpt2": models.gpt2, "llama": models.llama}[key]()


def _given(model, batch: int, sequence: int) -> dict[str, tuple[int, ...]]:
    given = {"input_ids": (batch, sequence)}
    if any(v.name.startswith("past") for v in model.graph.inputs):
        given["attention_mask"] = (batch, sequence)  # prefill: an empty cache
    return given


def _artifacts(key: str, source: Path) -> dict[str, Path]:
    """llmc default / without the memory pass; the raw export as is / reordered (memory pass only)."""
    model = load_model(source)
    shapes = _given(model, 1, 128)
    out = {}
    for tag, kwargs in (
        ("llmc", {}),
        ("llmc-no-memory", {"disable_passes": ["memory"]}),
        ("raw", {"passes": "prune"}),
        ("raw-reordered", {"passes": "prune,memory"}),
    ):
        art = llmc.build(source, output=OUT / f"{key}.{tag}", shapes=shapes, threads=2, **kwargs)
        out[tag] = art.path
    return out


def _plan_row(path: Path, model, batch: int, sequence: int) -> dict[str, Any]:
    shapes = resolve_shapes(model, _given(model, batch, sequence))[0]
    start = time.perf_counter()
    analysis = analyze_memory(model, [shapes], reorder=True)
    seconds = time.perf_counter() - start
    s = analysis.sets[0]
    d = s.to_dict()
    return {
        "arena": d["arena_bytes"],
        "bound": d["lower_bound_bytes"],
        "bound_before": d["lower_bound_graph_order_bytes"],
        "naive": d["naive_bytes"],
        "weights": d["weights_bytes"],
        "outputs": d["outputs_bytes"],
        "method": d["arena_method"],
        "scheduler": analysis.choice.scheduler,
        "peak_node": d["peak_node"],
        "top": d["top_tensors_at_peak"][0]["tensor"] if d["top_tensors_at_peak"] else None,
        "seconds": seconds,
        "valid": s.plan.problems() == [],
    }


def _rss_child(path: str, config: dict[str, Any], feeds_path: str) -> float:
    """In a fresh process: create the session, reset the high-water mark, run twice; the peak's
    growth over the RSS after session creation (MiB)."""
    from llmc.model.process import current_rss_mb, peak_rss_mb, reset_peak_rss
    from llmc.runtime.ort import OrtRunner, SessionConfig, create_session

    with np.load(feeds_path) as data:
        feeds = {k: data[k] for k in data.files}
    runner = OrtRunner(create_session(path, SessionConfig.from_dict(config)))
    base = current_rss_mb()
    reset_peak_rss()  # VmHWM := current RSS
    for _ in range(2):
        runner.run(feeds)
    return peak_rss_mb() - base


def _rss(artifact: Path, feeds: dict[str, np.ndarray], order: str | None = None) -> float:
    """Peak RSS growth (MiB) while running the artifact, in a fresh process."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    config = dict(manifest["session"]["options"], intra_op_num_threads=2)
    if order is not None:
        config["execution_order"] = order
    with tempfile.TemporaryDirectory() as tmp:
        feeds_path = os.path.join(tmp, "feeds.npz")
        np.savez(feeds_path, **feeds)
        value, _ = harness.run_in_fresh_process(_rss_child, str(artifact / "model.onnx"), config, feeds_path)
    return value


def _ort_order_bound(artifact: Path, model, feeds, order: str) -> int | None:
    """The arena lower bound of the node sequence ONNX Runtime executes (ORT_DISABLE_ALL)."""
    import onnxruntime as ort

    from llmc.kernels import register

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    register(options)  # llmc's own kernels (ai.llmc), for artifacts that hold them
    options.intra_op_num_threads = 2
    options.enable_profiling = True
    options.profile_file_prefix = str(OUT / "order-profile")
    options.execution_order = getattr(ort.ExecutionOrder, order.upper())
    session = ort.InferenceSession(str(artifact / "model.onnx"), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    ran = [e["name"][: -len("_kernel_time")] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    shapes = {k: v.shape for k, v in feeds.items()}
    analysis = analyze_memory(model, [shapes], reorder=False, feeds=[feeds])
    graph = analysis.sets[0].graph
    index = {op.name: i for i, op in enumerate(graph.ops)}
    steps = [index[n] for n in dict.fromkeys(ran) if n in index]
    # Ops without a kernel event (Constant nodes, which ONNX Runtime turns into initializers) first.
    steps = [i for i in range(len(graph.ops)) if i not in set(steps)] + steps
    try:
        graph.check_order(steps)
    except ValueError:
        return None
    return liveness(graph, steps).lower_bound()


def run(keys: list[str], rss: bool) -> dict[str, Any]:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in keys:
        source = _source(key)
        arts = _artifacts(key, source)
        loaded = {tag: load_model(path / "model.onnx") for tag, path in arts.items()}
        for batch, sequence in CASES:
            row: dict[str, Any] = {"model": key, "batch": batch, "sequence": sequence}
            row["llmc"] = _plan_row(arts["llmc"], loaded["llmc"], batch, sequence)
            row["raw"] = _plan_row(arts["raw"], loaded["raw"], batch, sequence)
            model = loaded["llmc"]
            shapes = resolve_shapes(model, _given(model, batch, sequence))[0]
            feeds = make_feeds(model, shapes)
            row["ort_order_bound"] = {
                order: _ort_order_bound(arts["llmc"], model, feeds, order) for order in ("default", "priority_based")
            }
            if rss:
                row["rss"] = {
                    "llmc-no-memory": _rss(arts["llmc-no-memory"], feeds),
                    "llmc": _rss(arts["llmc"], feeds),
                    "raw": _rss(arts["raw"], feeds),
                    "raw-reordered": _rss(arts["raw-reordered"], feeds),
                    "raw-reordered-default-order": _rss(arts["raw-reordered"], feeds, "default"),
                }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {"rows": rows, "planner_deep": _deep_planner_times(), "manifests": _manifest_notes(keys)}


def _manifest_notes(keys: list[str]) -> dict[str, Any]:
    notes = {}
    for key in keys:
        for tag in ("llmc", "raw-reordered"):
            m = json.loads((OUT / f"{key}.{tag}" / "manifest.json").read_text())
            notes[f"{key}.{tag}"] = {
                "order_changed": m["memory"]["order_changed"],
                "scheduler": m["memory"]["scheduler"],
                "execution_order": m["session"]["options"]["execution_order"],
            }
    return notes


def _deep_planner_times() -> dict[str, Any]:
    """Planner seconds (median of 3, warm) for the 12-layer BERT-base and the 32-layer LLaMA graphs."""
    out = {}
    for label, path in (("BERT-base 12 layers (raw export)", models.bert_base()), ("LLaMA-style 32 layers (raw export)", models.llama32()),
                        ("BERT-base 12 layers (llmc artifact)", OUT / "bert-base.llmc" / "model.onnx")):
        if not Path(path).exists():
            continue
        model = load_model(path)
        shapes = resolve_shapes(model, _given(model, 8, 512))[0]
        times = []
        for _ in range(3):
            start = time.perf_counter()
            analysis = analyze_memory(model, [shapes], reorder=True)
            times.append(time.perf_counter() - start)
        out[label] = {
            "nodes": len(list(model.graph)),
            "seconds": float(np.median(times)),
            "parts": {k: round(v, 3) for k, v in analysis.seconds.items()},
        }
    return out


def render(results: dict[str, Any], header: str) -> str:
    rows = results["rows"]
    out = [BEGIN, "## Memory planning (`python -m benchmarks.memory`, part of `make bench`)", "", header, ""]
    out += [
        "Plans at each case's shapes (decoders: prefill, empty cache), 64-byte alignment. *arena/bound*: "
        "the arena (best of greedy by size and by breadth) over the most bytes live at one step; "
        "*reorder*: the lower bound after the memory-aware reorder over the graph's own order (below 1: "
        "the reorder helps; the scheduler that won in brackets); *naive/arena*: one buffer per tensor "
        "over the arena. Every plan passed the validity checker. llmc = the default artifact; raw = the "
        "dynamo export itself.",
        "",
        "| model | batch x seq | llmc arena MiB | llmc arena/bound | llmc reorder | llmc naive/arena | raw arena MiB | raw arena/bound | raw reorder | raw naive/arena | planner s (llmc, raw) | peak node (llmc) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        a, w = r["llmc"], r["raw"]
        out.append(
            f"| {TITLES[r['model']]} | {r['batch']}x{r['sequence']} | {a['arena'] / MIB:.2f} | {a['arena'] / a['bound']:.4f} "
            f"| {a['bound'] / a['bound_before']:.3f} ({a['scheduler']}) | {a['naive'] / a['arena']:.2f} "
            f"| {w['arena'] / MIB:.2f} | {w['arena'] / w['bound']:.4f} | {w['bound'] / w['bound_before']:.3f} ({w['scheduler']}) "
            f"| {w['naive'] / w['arena']:.2f} | {a['seconds']:.3f}, {w['seconds']:.3f} | {a['peak_node']} ({a['top']}) |"
        )
    worst = max(max(r["llmc"]["arena"] / r["llmc"]["bound"], r["raw"]["arena"] / r["raw"]["bound"]) for r in rows)
    raised = [r for r in rows for k in ("llmc", "raw") if r[k]["bound"] > r[k]["bound_before"]]
    invalid = [r for r in rows for k in ("llmc", "raw") if not r[k]["valid"]]
    out += [
        "",
        "### Targets",
        "",
        f"- arena <= 1.02x the lower bound on every graph: worst {worst:.4f} -> **{'met' if worst <= 1.02 else 'NOT met'}**",
        f"- reordering never raises the bound: {len(raised)} case(s) raised -> **{'met' if not raised else 'NOT met'}**",
        f"- validity checker: {len(invalid)} invalid plan(s)",
    ]
    deep = results.get("planner_deep", {})
    if deep:
        out += ["", "### Planner time (batch 8 x sequence 512, warm process, median of 3)", "",
                "| graph | nodes | seconds | shapes / liveness / schedule / arena s |", "|---|---:|---:|---|"]
        for label, d in deep.items():
            p = d["parts"]
            out.append(f"| {label} | {d['nodes']} | {d['seconds']:.3f} | {p['shapes']} / {p['liveness']} / {p['schedule']} / {p['arena']} |")
        out += ["", f"- planner under 2 s on both: **{'met' if all(d['seconds'] < 2 for d in deep.values()) else 'NOT met'}** "
                "(a cold process adds ~1 s once, importing sympy for ONNX Runtime's symbolic shape inference)"]
    out += [
        "",
        "### Does ONNX Runtime follow the graph order?",
        "",
        "Arena lower bound of the node sequence ONNX Runtime executed (its profiler, ORT_DISABLE_ALL) on the llmc "
        "artifact, with its default execution order (a depth-first walk from the outputs, ties broken by node index) "
        "and with `priority_based` (the file's order); the file order's bound is the llmc arena/bound column's bound.",
        "",
        "| model | batch x seq | file order MiB | ORT default order MiB | ORT priority_based MiB |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        o = r["ort_order_bound"]
        fmt = lambda v: f"{v / MIB:.2f}" if v is not None else "n/a"  # noqa: E731
        out.append(f"| {TITLES[r['model']]} | {r['batch']}x{r['sequence']} | {r['llmc']['bound_before'] / MIB:.2f} | {fmt(o['default'])} | {fmt(o['priority_based'])} |")
    if rows and "rss" in rows[0]:
        out += [
            "",
            "### ONNX Runtime peak RSS during inference (MiB over the RSS after session creation)",
            "",
            "ORT_ENABLE_ALL, 2 threads, fresh process, 2 runs. llmc: the artifact built without the `memory` pass vs "
            "the default one. raw: the export as is (ORT default order) vs the export reordered by the `memory` pass, "
            "run in file order (`priority_based`, what the artifact records when the order changed) and in ORT's "
            "default order.",
            "",
            "| model | batch x seq | llmc without memory pass | llmc | raw | raw reordered, file order | raw reordered, ORT default order |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            x = r["rss"]
            out.append(
                f"| {TITLES[r['model']]} | {r['batch']}x{r['sequence']} | {x['llmc-no-memory']:.0f} | {x['llmc']:.0f} | {x['raw']:.0f} "
                f"| {x['raw-reordered']:.0f} | {x['raw-reordered-default-order']:.0f} |"
            )
    notes = results.get("manifests", {})
    if notes:
        out += ["", "Order recorded by the builds (b1 x 128): " + "; ".join(
            f"{k}: {'reordered (' + v['scheduler'] + ')' if v['order_changed'] else 'graph order kept'}, execution_order {v['execution_order']}"
            for k, v in notes.items()) + "."]
    out += ["", END]
    return "\n".join(out)


def _write(results: dict[str, Any]) -> None:
    harness.write_section(BEGIN, END, render(results, harness.machine_line()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm,bert-base,gpt2,llama")
    parser.add_argument("--no-rss", action="store_true", help="skip the ONNX Runtime RSS runs")
    parser.add_argument("--render-from", type=Path, help="rewrite the RESULTS section from a results.json")
    args = parser.parse_args()
    if args.render_from:
        _write(json.loads(args.render_from.read_text()))
        return
    results = run(args.models.split(","), rss=not args.no_rss)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    _write(results)


if __name__ == "__main__":
    main()
