"""What the commands print: rich tables and one-line summaries, and a progress bar.

Every function takes plain data (a :class:`llmc.runtime.manifest.Manifest`, a summary dict,
result objects) and prints to the shared console; none computes anything the artifact or the
JSON output would lack.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.markup import escape
from rich.table import Table

from llmc.cli.app import console
from llmc.compiler.registry import chain_of, precision_of
from llmc.model.files import mib
from llmc.spec.precision import FP32

if TYPE_CHECKING:
    from llmc.runtime.manifest import Manifest


class Progress:
    """A rich progress bar (with ETA) per long stage: calibration, accuracy budget."""

    def __enter__(self) -> Progress:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self._tasks: dict[str, Any] = {}
        self._bar.__enter__()
        return self

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(stage, total=total)
        self._bar.update(self._tasks[stage], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)


# -- llmc build ------------------------------------------------------------------------------


def print_build(manifest: Manifest, path: Path, explain_fusion: bool = False) -> None:
    """The pass table and one line per feature of ``llmc build``, all from the manifest."""
    table = Table(title=f"passes ({manifest.pipeline})")
    for col in ("pass", "iter", "ms", "nodes", "rewrites"):
        table.add_column(col, justify="right" if col in ("iter", "ms") else "left")
    for rec in manifest.passes:
        nodes = (
            f"{rec['nodes_before']} -> {rec['nodes_after']}" if rec["modified"] else str(rec["nodes_after"])
        )
        stats = ", ".join(f"{k}={v}" for k, v in rec["stats"].items())
        table.add_row(rec["name"], str(rec["iteration"]), f"{rec['seconds'] * 1e3:.1f}", nodes, stats)
    console.print(table)
    if manifest.shapes.assumed:
        assumed = ", ".join(f"{k}={v}" for k, v in manifest.shapes.assumed.items())
        console.print(f"assumed symbolic dims: {assumed} (set them with --shape NAME=DxD)")
    console.print(f"nodes {manifest.nodes.before} -> {manifest.nodes.after}; {_verified(manifest)}")
    _print_fusion(manifest, explain_fusion)
    _print_build_memory(manifest.memory)
    for precision in chain_of(manifest):  # each precision step's own section, in its words
        for line in precision.describe(manifest.report(precision.manifest_section) or {}):
            console.print(line)
    if manifest.engine is not None:
        _print_engine(manifest.engine)
    cache = manifest.cache
    if cache is not None and cache.hit:
        console.print(f"from the build cache (key {cache.key[:12]}, {cache.seconds or 0:.2f} s): an identical build")
    tokenizer = manifest.tokenizer
    if tokenizer is not None:
        carried = [*tokenizer.files, *filter(None, [tokenizer.generation_config])]
        console.print(f"carried from beside the model (hashed): {escape(', '.join(carried))}")
    console.print(f"artifact: {escape(str(path))}")


def _verified(manifest: Manifest) -> str:
    """What the build checked against the source model (the manifest's ``verification``), in its
    precision's words."""
    v = manifest.verification
    errors = (
        f"max abs error {v['max_abs_error']:.3g}, max rel error {v['max_rel_error']:.3g}, "
        f"cosine min {v['cosine_min']:.6f}"
    )
    rounding = v.get("rounding")
    if rounding and v["max_rel_error"] > v.get("tolerance", 0):
        errors += (
            f" (over --tolerance {v['tolerance']:g}; within {rounding['factor']:g}x this model's fp32 rounding: "
            f"ONNX Runtime's own optimizations move it {rounding['ort_optimizations_moved']:.2g})"
        )
    return precision_of(manifest).verified_line(errors)


def _print_engine(e: dict[str, Any]) -> None:
    if not e.get("built"):
        console.print(f"TensorRT engine: not built ({escape(e.get('reason', ''))})")
        return
    source = "from the engine cache" if e.get("from_cache") else "built"
    console.print(
        f"TensorRT engine {source}: {e['file']} for {escape(str(e['gpu']))} (sm {e['compute_capability']}), "
        f"TensorRT {e['tensorrt_version']}, signed (key {e['key_id']})"
    )


def _print_build_memory(memory: dict[str, Any] | None) -> None:
    if not memory:
        return
    if "error" in memory:
        console.print(f"memory: not planned ({escape(memory['error'])})")
        return
    order = (
        f"reordered ({memory['scheduler']}): lower bound {mib(memory['lower_bound_before_reorder_bytes'])} -> "
        f"{mib(memory['lower_bound_bytes'])}"
        if memory["order_changed"]
        else "graph order kept (no schedule lowers the peak)"
    )
    console.print(
        f"memory at the verification shapes: activation arena {mib(memory['arena_bytes'])} (lower bound "
        f"{mib(memory['lower_bound_bytes'])}, no reuse {mib(memory['naive_bytes'])}), weights "
        f"{mib(memory['weights_bytes'])}; peak at {escape(str(memory['peak_node']))}; {order}"
    )


def _print_fusion(manifest: Manifest, explain: bool) -> None:
    if manifest.fusions:
        console.print("fused: " + ", ".join(f"{k} x{n}" for k, n in manifest.fusions.items()))
    if manifest.fused_ops:
        console.print(
            "fused ops in the artifact: " + ", ".join(f"{k} x{n}" for k, n in manifest.fused_ops.items())
        )
    records = manifest.not_fused
    if not records:
        console.print("not fused: nothing (no candidate of any fusion family is left)")
        return
    groups: dict[tuple[str, str], list[str]] = {}
    for r in records:
        groups.setdefault((r["family"], r["reason"]), []).append(r["node"])
    if not explain:
        console.print(f"not fused: {len(records)} candidate(s)")
        for (family, reason), nodes in groups.items():
            console.print(f"  {family} x{len(nodes)}: {escape(_short(reason))}")
        console.print("  (--explain-fusion lists every node and the closest rule)")
        return
    # One line per candidate (not a table): node names stay whole and the output greps.
    console.print(f"not fused (why): {len(records)} candidate(s)")
    for r in records:
        closest = f"closest rule {r['rule']}, {r['matched_nodes']} node(s) matched: " if r["rule"] else ""
        console.print(
            f"  {r['family']}  {escape(r['node'])} ({r['op_type']}): {closest}{escape(r['reason'])}",
            soft_wrap=True,
        )


def _short(text: str, limit: int = 140) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- llmc inspect --memory -------------------------------------------------------------------


def print_memory(analysis: Any, assumed: list[dict[str, int]], path: Path) -> None:
    """One column per shape set of ``llmc inspect --memory`` (llmc.passes.memory.planner)."""
    from llmc.model.decoder import is_cache_input  # numpy: not on `llmc --help`'s path

    table = Table(title=f"memory plan of {escape(str(path))} ({analysis.alignment}-byte alignment)", box=box.SIMPLE_HEAD)
    table.add_column("", no_wrap=True)
    sets = [s.to_dict() for s in analysis.sets]
    for s in analysis.sets:
        dims = [f"{k}={'x'.join(map(str, v))}" for k, v in s.shapes.items() if not is_cache_input(k)]
        table.add_column("\n".join(dims), justify="right")
    scheduler = analysis.choice.scheduler if analysis.choice else "graph"

    def row(label: str, fn) -> None:
        table.add_row(label, *[fn(d) for d in sets])

    row("activation arena", lambda d: mib(d["arena_bytes"]))
    row("lower bound", lambda d: mib(d["lower_bound_bytes"]))
    row("arena / lower bound", lambda d: f"{d['arena_bytes'] / max(d['lower_bound_bytes'], 1):.4f}")
    row("no-reuse total", lambda d: mib(d["naive_bytes"]))
    row("lower bound, graph order", lambda d: mib(d["lower_bound_graph_order_bytes"]))
    row(
        f"reordered ({scheduler}) / graph order",
        lambda d: f"{d['lower_bound_bytes'] / max(d['lower_bound_graph_order_bytes'], 1):.4f}",
    )
    row("lower bound with in-place reuse", lambda d: f"{mib(d['lower_bound_inplace_bytes'])} ({d['inplace_candidates']} ops)")
    row("weights", lambda d: mib(d["weights_bytes"]))
    row("graph inputs", lambda d: mib(d["inputs_bytes"]))
    row("graph outputs", lambda d: mib(d["outputs_bytes"]))
    row(
        "total (weights + inputs + outputs + arena)",
        lambda d: mib(d["weights_bytes"] + d["inputs_bytes"] + d["outputs_bytes"] + d["arena_bytes"]),
    )
    if any("kv_cache" in d for d in sets):
        row("KV cache after this step", lambda d: _kv(d.get("kv_cache")))
        row("KV cache per token and sequence", lambda d: mib(d["kv_cache"].get("bytes_per_token", 0)) if "kv_cache" in d else "-")
    row("peak at node", lambda d: f"{d['peak_node']} ({d['peak_op_type']})")
    console.print(table)
    for s, d in zip(analysis.sets, sets, strict=True):
        top = ", ".join(f"{t['tensor']} [{'x'.join(map(str, t['shape']))}] {mib(t['bytes'])}" for t in d["top_tensors_at_peak"])
        label = " ".join(f"{k}={'x'.join(map(str, v))}" for k, v in s.shapes.items() if not is_cache_input(k))
        console.print(f"largest tensors at the peak ({escape(label)}): {escape(top)}", soft_wrap=True)
    for a in assumed:
        if a:
            console.print("assumed symbolic dims: " + ", ".join(f"{k}={v}" for k, v in a.items()) + " (set them with --shape)")
    order = "unchanged (the graph's order has the lowest peak)" if not analysis.order_changed else f"{scheduler} schedule"
    console.print(f"memory-aware order: {order}; planned in {sum(analysis.seconds.values()):.2f} s")


def _kv(kv: dict[str, int] | None) -> str:
    if kv is None:
        return "-"
    tokens = f" ({kv['tokens']} tokens)" if "tokens" in kv else ""
    return f"{mib(kv['present_bytes'])}{tokens}"


# -- llmc inspect, passes, check, bench ------------------------------------------------------


def print_summary(info: dict[str, Any], top: int) -> None:
    """The model summary of ``llmc inspect`` (llmc.model.summary.summarize_model)."""
    console.print(
        f"[bold]{escape(info['path'])}[/bold]  IR v{info['ir_version']}, producer {info['producer']}"
    )
    console.print("opsets: " + ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in info["opsets"].items()))
    io = Table(title="inputs and outputs")
    for col in ("kind", "name", "dtype", "shape"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            shape_text = f"[{', '.join(map(str, v['shape']))}]" if v["shape"] is not None else "?"
            io.add_row(kind[:-1], escape(v["name"]), v["dtype"] or "?", escape(shape_text))
    console.print(io)
    ops = Table(title=f"ops ({info['nodes']} nodes)")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in list(info["ops"].items())[:top]:
        ops.add_row(op, str(n))
    console.print(ops)
    console.print(
        f"file {info['file_bytes'] / 2**20:.1f} MiB, weights {info['weights_bytes'] / 2**20:.1f} MiB "
        f"in {info['initializers']} initializers; external data: "
        f"{', '.join(info['external_data']) or 'none'}"
    )
    found = info.get("sparsity") or {}
    if found.get("sparse_2_4"):
        dense = f" (dense: {', '.join(map(escape, found['dense'][:5]))})" if found["dense"] else ""
        console.print(f"2:4 sparse matrix-product weights: {found['sparse_2_4']} of {found['weights']}{dense}")
    from llmc.spec.compression import read, summary_line

    record = read(info.get("metadata") or {})
    if record is not None:
        console.print(escape(summary_line(record)))


def print_passes(passes: Any, targets: dict[str, Any], families: Any) -> None:
    """The pass registry, the default pipeline per target and the fusion families."""
    table = Table(title="passes")
    for col in ("name", "description"):
        table.add_column(col)
    for info in passes:
        table.add_row(info.name, info.description)
    console.print(table)
    for target in targets.values():
        console.print(f"default pipeline for {target.name}: {target.pipeline}")
    fusions = Table(title="fusion families (pass 'fuse'; --enable-fusion / --disable-fusion NAME)")
    for col in ("name", "targets", "produces", "off by default on", "description"):
        fusions.add_column(col)
    for family in families:
        uses = {t.name: u for t in targets.values() for u in t.fusions if u.name == family.name}
        off = ", ".join(f"{name}/{device}" for name, use in uses.items() for device in use.off_by_default) or "-"
        produces = ", ".join(p.split("::")[1] for p in family.produces) or "-"
        fusions.add_row(family.name, ",".join(uses), produces, off, family.description)
    console.print(fusions)


def print_agreement(result: Any) -> None:
    """Per-output agreement of ``llmc check`` (llmc.model.compare.compare_outputs)."""
    table = Table(title="output agreement")
    for col in ("output", "max abs", "max rel", "cosine", "result"):
        table.add_column(col)
    for o in result.outputs:
        table.add_row(
            escape(o.name),
            f"{o.max_abs_error:.3g}",
            f"{o.max_rel_error:.3g}",
            f"{o.cosine:.6f}",
            "ok" if o.passed else f"FAIL: {o.reason}",
        )
    console.print(table)


def print_precision_tolerance(precision: str, tolerance: float) -> None:
    """``llmc check`` of an fp16/int8 artifact without --tolerance: which one it uses."""
    console.print(f"tolerance {tolerance:g}: the default for {precision} artifacts (set it with --tolerance)")


def print_precision_hint(manifest: Manifest | None, result: Any) -> None:
    """Why an fp16/int8 artifact can miss the tolerance, what its build measured, what to pass."""
    if manifest is None or precision_of(manifest) is FP32:
        return
    precision = precision_of(manifest)
    worst = max((o.max_rel_error for o in result.outputs), default=0.0)
    loose = 10 ** math.ceil(math.log10(worst)) if worst > 0 else 1e-4
    note = precision.mismatch_note(manifest.report(precision.manifest_section), worst, loose)
    if note is None:
        built = manifest.verification.get("tolerance")
        note = (
            f"ARTIFACT is an {precision.name} build (verified at tolerance {built}); compare it with --tolerance "
            f"{loose:g} (this run's worst max rel error {worst:.3g})"
        )
    console.print(note)


def print_benchmark(results: list[Any], runs: int) -> None:
    """The latency table of ``llmc bench`` (llmc.runtime.bench.run_benchmark)."""
    table = Table(
        title=f"latency ms ({runs} interleaved runs); ratio: p50 / first p50; RSS: peak",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("model", overflow="fold", min_width=12)
    for col in ("p50", "p90", "p99", "mean", "rows/s", "load s", "RSS MB", "ratio"):
        table.add_column(col, justify="right")
    for r in results:
        peak = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-"
        table.add_row(
            escape(r.label),
            f"{r.p50_ms:.2f}",
            f"{r.p90_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.mean_ms:.2f}",
            f"{r.throughput:.1f}",
            f"{r.session_create_s:.2f}",
            peak,
            f"{r.ratio_p50:.3f}",
        )
    console.print(table)
