"""The ``llmc`` command line (typer + rich).

Every command maps an :class:`LlmcError` to one line on stderr and exit code 1; any other
exception is a bug and keeps its traceback. Heavy imports happen inside commands so that
``llmc --help`` stays fast and works without optional dependencies.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmc.errors import LlmcError

app = typer.Typer(
    name="llmc",
    help="Compile exported ONNX transformer models into the fastest artifact that gives the same answers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def user_errors(fn):
    """Print LlmcError as one line and exit 1; let bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LlmcError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


ShapeOpt = Annotated[
    Optional[list[str]],
    typer.Option("--shape", help="Concrete input shape NAME=DxD (repeatable), e.g. input_ids=1x128."),
]
InputsOpt = Annotated[
    Optional[Path], typer.Option("--inputs", help="An .npz file of inputs to use instead of seeded ones.")
]


@app.command()
@user_errors
def build(
    model: Annotated[Path, typer.Argument(help="The ONNX model to compile.")],
    target: Annotated[
        str, typer.Option("--target", "-t", help="ort (ONNX Runtime) or trt (TensorRT).")
    ] = "ort",
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output", "-o", help="Artifact directory [default: MODEL.llmc-TARGET beside the model]."
        ),
    ] = None,
    precision: Annotated[
        str,
        typer.Option(
            help="fp32, fp16 (trt, or ort on --device cuda/tensorrt; float32 islands kept) or int8 "
            "(needs --calibration-data; trt runs the rest in fp16)."
        ),
    ] = "fp32",
    shape: ShapeOpt = None,
    inputs: InputsOpt = None,
    passes: Annotated[
        Optional[str],
        typer.Option("--passes", help='Pipeline text, e.g. "prune,(fold,cse)*3" (see `llmc passes`).'),
    ] = None,
    disable_pass: Annotated[
        Optional[list[str]],
        typer.Option("--disable-pass", help="Remove a pass from the pipeline (repeatable)."),
    ] = None,
    device: Annotated[
        str, typer.Option(help="cpu, cuda or tensorrt (ONNX Runtime execution provider).")
    ] = "cpu",
    threads: Annotated[
        int, typer.Option(help="ONNX Runtime intra-op threads recorded in the artifact (0: ORT default).")
    ] = 0,
    verify_each: Annotated[
        bool,
        typer.Option(
            "--verify-each", help="Run the ONNX checker and strict shape inference after every pass."
        ),
    ] = False,
    diff_each: Annotated[
        bool,
        typer.Option(
            "--diff-each",
            help="Run the model in ONNX Runtime after every pass; name the first that changes outputs.",
        ),
    ] = False,
    dump_ir_after: Annotated[
        Optional[tuple[str, Path]],
        typer.Option(
            "--dump-ir-after",
            metavar="NAME|all DIR",
            help="Write the IR as text after pass NAME (or all) into DIR.",
        ),
    ] = None,
    tolerance: Annotated[
        Optional[float],
        typer.Option(help="Max abs error allowed, relative to each output's scale [default: 1e-4; fp16: 1e-2]."),
    ] = None,
    external_data: Annotated[
        Optional[bool],
        typer.Option(
            "--external-data/--no-external-data",
            help="Force weights into model.onnx.data (default: only over 2 GB).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated verification inputs.")] = 0,
    enable_fusion: Annotated[
        Optional[list[str]],
        typer.Option(
            "--enable-fusion",
            help="Turn on a fusion family that is off by default for the target (repeatable; see `llmc passes`).",
        ),
    ] = None,
    disable_fusion: Annotated[
        Optional[list[str]], typer.Option("--disable-fusion", help="Turn off a fusion family (repeatable).")
    ] = None,
    explain_fusion: Annotated[
        bool,
        typer.Option(
            "--explain-fusion",
            help="List every candidate that did not fuse: family, node, closest rule, failed check.",
        ),
    ] = False,
    calibration_data: Annotated[
        Optional[Path],
        typer.Option(
            "--calibration-data",
            help="int8: a directory of .npz feeds, one .npz of stacked samples, or a text file (with --tokenizer).",
        ),
    ] = None,
    tokenizer: Annotated[
        Optional[Path],
        typer.Option("--tokenizer", help="Hugging Face tokenizer directory for text calibration data."),
    ] = None,
    calibration_samples: Annotated[
        int, typer.Option("--calibration-samples", help="Samples to calibrate on; the next ones are held out.")
    ] = 256,
    holdout_samples: Annotated[
        int, typer.Option("--holdout-samples", help="Held-out samples checking the accuracy budget (at most).")
    ] = 128,
    calibration_method: Annotated[
        str, typer.Option("--calibration-method", help="max, percentile, entropy or mse.")
    ] = "entropy",
    max_accuracy_loss: Annotated[
        float,
        typer.Option(
            "--max-accuracy-loss",
            help="1 - the mean cosine to fp32 to keep on held-out samples; nodes fall back to float until it holds.",
        ),
    ] = 0.005,
    exclude_nodes: Annotated[
        Optional[list[str]],
        typer.Option("--exclude-nodes", help="Keep these nodes in float (names or globs; repeatable)."),
    ] = None,
    exclude_op_types: Annotated[
        Optional[list[str]],
        typer.Option("--exclude-op-types", help="Keep every node of this op type in float (repeatable)."),
    ] = None,
    smooth_quant: Annotated[
        bool,
        typer.Option("--smooth-quant/--no-smooth-quant", help="SmoothQuant outlier migration (alpha per node)."),
    ] = True,
    no_engine: Annotated[
        bool,
        typer.Option("--no-engine", help="trt: write the TensorRT-ready ONNX without building an engine."),
    ] = False,
    alignment: Annotated[
        int, typer.Option(help="Arena alignment in bytes of the memory plan (manifest 'memory').")
    ] = 64,
    keep_fp32: Annotated[
        Optional[list[str]],
        typer.Option("--keep-fp32", help="fp16: keep these nodes in float32 (names or globs; repeatable)."),
    ] = None,
    fp16_io: Annotated[
        bool, typer.Option("--fp16-io", help="fp16: float graph inputs/outputs (e.g. a KV cache) in float16; logits stay float32 unless --fp16-logits.")
    ] = False,
    fp16_logits: Annotated[
        bool, typer.Option("--fp16-logits", help="fp16: run the final logits head in float16 too.")
    ] = False,
    shapes: Annotated[
        Optional[list[str]],
        typer.Option(
            "--shapes",
            help="trt: optimization profile NAME:MIN:OPT:MAX per dynamic input (repeatable), "
            "e.g. --shapes input_ids:1x1:1x128:8x512.",
        ),
    ] = None,
    workspace_mb: Annotated[
        Optional[int], typer.Option("--workspace", help="trt: builder workspace limit in MiB [default: TensorRT's].")
    ] = None,
    opt_level: Annotated[
        int, typer.Option("--opt-level", help="trt: builder optimization level 0..5 (higher: longer build).")
    ] = 3,
    version_compatible: Annotated[
        bool, typer.Option("--version-compatible", help="trt: an engine later TensorRT versions can run.")
    ] = False,
    hardware_compatibility: Annotated[
        str,
        typer.Option("--hardware-compatibility", help="trt: none, ampere_plus or same_compute_capability."),
    ] = "none",
    timing_cache: Annotated[
        Optional[Path],
        typer.Option("--timing-cache", help="trt: timing cache file [default: ~/.cache/llmc/trt/timing.cache]."),
    ] = None,
    engine_cache: Annotated[
        Optional[Path],
        typer.Option("--engine-cache", help="trt: engine cache directory [default: ~/.cache/llmc/trt]."),
    ] = None,
    no_engine_cache: Annotated[
        bool, typer.Option("--no-engine-cache", help="trt: always build, never reuse a cached engine.")
    ] = False,
) -> None:
    """Compile MODEL for a target and verify the result against the original."""
    from llmc.compiler.build import build as build_model
    from llmc.model.feeds import parse_shape_specs

    dump_names: list[str] = []
    dump_dir = None
    if dump_ir_after:
        dump_names = [n for n in dump_ir_after[0].split(",") if n]
        dump_dir = dump_ir_after[1]
    from llmc.int8.quantize import QuantizeOptions

    quantization = QuantizeOptions(
        method=calibration_method,
        samples=calibration_samples,
        holdout=holdout_samples,
        max_accuracy_loss=max_accuracy_loss,
        exclude_nodes=tuple(exclude_nodes or ()),
        exclude_op_types=tuple(exclude_op_types or ()),
        smooth_quant=smooth_quant,
        threads=threads,
    )
    from llmc.backends.trt.profiles import parse_profile_specs
    from llmc.compiler.engine import EngineSettings
    from llmc.fp16.convert import Fp16Options

    if workspace_mb is not None and workspace_mb <= 0:
        raise LlmcError(f"--workspace must be a positive number of MiB, not {workspace_mb}")
    engine = EngineSettings(
        profiles=parse_profile_specs(shapes),
        workspace_bytes=workspace_mb << 20 if workspace_mb else None,
        optimization_level=opt_level,
        version_compatible=version_compatible,
        hardware_compatibility=hardware_compatibility,
        timing_cache=timing_cache,
        engine_cache=engine_cache,
        use_engine_cache=not no_engine_cache,
    )
    fp16 = Fp16Options(io_fp16=fp16_io, fp16_head=fp16_logits, keep_fp32=tuple(keep_fp32 or ()))
    with _Progress() as progress, console.status("compiling") as status:
        artifact = build_model(
            model,
            target=target,
            precision=precision,
            output=output,
            shapes=parse_shape_specs(shape),
            inputs=inputs,
            passes=passes,
            disable_passes=disable_pass or [],
            device=device,
            threads=threads,
            verify_each=verify_each,
            diff_each=diff_each,
            dump_ir_after=dump_names,
            dump_dir=dump_dir,
            tolerance=tolerance,
            external_data=external_data,
            seed=seed,
            fusions=_fusion_overrides(enable_fusion, disable_fusion),
            calibration_data=calibration_data,
            tokenizer=tokenizer,
            quantization=quantization,
            no_engine=no_engine,
            fp16=fp16,
            engine=engine,
            alignment=alignment,
            log=lambda msg: status.update(msg),
            progress=progress.update,
        )
    _print_build(artifact.manifest, artifact.path, explain_fusion=explain_fusion)


class _Progress:
    """A rich progress bar (with ETA) per long stage: calibration, accuracy budget."""

    def __enter__(self) -> _Progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
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


def _fusion_overrides(enable: list[str] | None, disable: list[str] | None) -> dict[str, bool]:
    overrides = {name: True for name in enable or []}
    for name in disable or []:
        if overrides.get(name):
            raise LlmcError(f"fusion '{name}' is both enabled and disabled; pick one")
        overrides[name] = False
    return overrides


def _print_build(manifest: dict[str, Any], path: Path, explain_fusion: bool = False) -> None:
    table = Table(title=f"passes ({manifest['pipeline']})")
    for col in ("pass", "iter", "ms", "nodes", "rewrites"):
        table.add_column(col, justify="right" if col in ("iter", "ms") else "left")
    for rec in manifest["passes"]:
        nodes = (
            f"{rec['nodes_before']} -> {rec['nodes_after']}" if rec["modified"] else str(rec["nodes_after"])
        )
        stats = ", ".join(f"{k}={v}" for k, v in rec["stats"].items())
        table.add_row(rec["name"], str(rec["iteration"]), f"{rec['seconds'] * 1e3:.1f}", nodes, stats)
    console.print(table)
    shapes = manifest["shapes"]
    if shapes["assumed"]:
        assumed = ", ".join(f"{k}={v}" for k, v in shapes["assumed"].items())
        console.print(f"assumed symbolic dims: {assumed} (set them with --shape NAME=DxD)")
    v = manifest["verification"]
    console.print(
        f"nodes {manifest['nodes']['before']} -> {manifest['nodes']['after']}; "
        f"verified against the source: max abs error {v['max_abs_error']:.3g}, "
        f"max rel error {v['max_rel_error']:.3g}, cosine min {v['cosine_min']:.6f}"
    )
    _print_fusion(manifest, explain_fusion)
    _print_build_memory(manifest.get("memory"))
    if "quantization" in manifest:
        _print_quantization(manifest["quantization"])
    if "fp16" in manifest:
        _print_fp16(manifest["fp16"])
    if "engine" in manifest:
        _print_engine(manifest["engine"])
    console.print(f"artifact: {escape(str(path))}")


def _print_fp16(f: dict[str, Any]) -> None:
    check = f["check"]
    console.print(
        f"float16: {f['nodes']['fp16']} node(s) in float16, {f['nodes']['fp32']} in float32, {f['casts']} cast(s); "
        f"worst layer drift {check['worst_layer_error']:.3g} over {check['layers']} layers (CPU emulation)"
    )
    for reason, group in f["fp32_islands"].items():
        if not reason.startswith("fed only") and not reason.startswith("layout op"):
            console.print(f"  float32 x{group['count']}: {escape(reason)}")
    for r in f["fallback"]:
        console.print(f"  numeric check: layer {r['layer']} ({r['nodes']} nodes) back to float32: {escape(r['finding'])}")
    w = f["weights"]
    if w["clamped"] or w["flushed"]:
        console.print(f"  weights: {w['clamped']} value(s) clamped to float16's range, {w['flushed']} flushed to 0")


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
        f"reordered ({memory['scheduler']}): lower bound {_mib(memory['lower_bound_before_reorder_bytes'])} -> "
        f"{_mib(memory['lower_bound_bytes'])}"
        if memory["order_changed"]
        else "graph order kept (no schedule lowers the peak)"
    )
    console.print(
        f"memory at the verification shapes: activation arena {_mib(memory['arena_bytes'])} (lower bound "
        f"{_mib(memory['lower_bound_bytes'])}, no reuse {_mib(memory['naive_bytes'])}), weights "
        f"{_mib(memory['weights_bytes'])}; peak at {escape(str(memory['peak_node']))}; {order}"
    )


def _print_quantization(q: dict[str, Any]) -> None:
    acc = q["accuracy"]
    console.print(
        f"int8 ({q['method']} calibration, {q['samples']['calibration']} samples"
        f"{', statistics reused' if q['statistics']['reused'] else ''}; activations {q['activations']}, "
        f"weights {q['weights']}): {q['nodes_quantized']} node(s) quantized, {q['nodes_float']} in float"
    )
    if acc.get("holdout"):
        console.print(
            f"  accuracy on {acc['holdout']} held-out samples: cosine mean {acc['cosine_mean']:.5f}, "
            f"worst {acc['cosine_worst']:.5f} (budget: mean >= {acc['budget']})"
        )
    else:
        console.print(f"  accuracy: {acc['note']}")
    for node in q["nodes"]:
        if node["precision"] == "float":
            console.print(f"  float: {escape(node['node'])} ({node['op_type']}): {escape(node['reason'])}")
    modes: dict[str, int] = {}
    for node in q["nodes"]:
        if node["precision"] == "int8":
            key = f"{node['activations']}" + (f", smooth alpha {node['smooth_alpha']}" if node["smooth_alpha"] else "")
            modes[key] = modes.get(key, 0) + 1
    if modes:
        console.print("  int8 nodes: " + "; ".join(f"{k} x{n}" for k, n in modes.items()))
    console.print(
        f"  calibration {q['calibration_seconds']:.1f} s, accuracy budget {q['budget_seconds']:.1f} s, "
        f"peak RSS {q['peak_rss_mb']:.0f} MB"
    )


def _print_fusion(manifest: dict[str, Any], explain: bool) -> None:
    if manifest.get("fusions"):
        console.print("fused: " + ", ".join(f"{k} x{n}" for k, n in manifest["fusions"].items()))
    if manifest.get("fused_ops"):
        console.print(
            "fused ops in the artifact: " + ", ".join(f"{k} x{n}" for k, n in manifest["fused_ops"].items())
        )
    records = manifest.get("not_fused", [])
    if not records:
        if "fusion_families" in manifest:
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


@app.command()
@user_errors
def inspect(
    model: Annotated[Path, typer.Argument(help="An ONNX model or an artifact directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    top: Annotated[int, typer.Option(help="Op types to list.")] = 25,
    memory: Annotated[
        bool,
        typer.Option(
            "--memory",
            help="Plan activation memory at --shape: arena, lower bound, no-reuse total, weights, peak "
            "node, memory-aware order, KV cache.",
        ),
    ] = False,
    shape: Annotated[
        Optional[list[str]],
        typer.Option(
            "--shape",
            help="With --memory: NAME=DxD (repeatable); naming an input again starts another shape set, "
            "e.g. --shape input_ids=1x128 --shape input_ids=8x512.",
        ),
    ] = None,
    alignment: Annotated[int, typer.Option(help="With --memory: arena alignment in bytes.")] = 64,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="With --memory: draw live bytes and the arena of the first shape set to FILE.png."),
    ] = None,
) -> None:
    """Show inputs/outputs (with symbolic dims), opsets, op histogram, size and external data; --memory plans memory."""
    if memory or plot is not None:
        _inspect_memory(model, shape, alignment, plot, as_json)
        return
    if shape:
        raise LlmcError("--shape is used with --memory")
    from llmc.model.summary import summarize_model

    info = summarize_model(model)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
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


def _inspect_memory(path: Path, specs: list[str] | None, alignment: int, plot: Path | None, as_json: bool) -> None:
    from llmc.compiler.artifact import MODEL_FILE
    from llmc.model.feeds import parse_shape_sets, resolve_shapes
    from llmc.model.io import load_model
    from llmc.passes.memory.planner import analyze_memory

    if alignment < 1:
        raise LlmcError(f"--alignment must be at least 1 byte, not {alignment}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise LlmcError(f"--plot {plot}: write a .png file")
    model_path = path / MODEL_FILE if path.is_dir() and (path / MODEL_FILE).is_file() else path
    model = load_model(model_path)
    resolved = [resolve_shapes(model, given) for given in parse_shape_sets(specs)]
    analysis = analyze_memory(model, [r[0] for r in resolved], alignment=alignment, reorder=True)
    if plot is not None:
        from llmc.passes.memory.plot import plot_memory

        plot_memory(analysis, plot, model_path.name)
    report = analysis.to_dict()
    report["assumed"] = [r[1] for r in resolved]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_memory(analysis, [r[1] for r in resolved], model_path)
    if plot is not None:
        console.print(f"plot: {escape(str(plot))}")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB" if n >= 2**20 or n == 0 else f"{n / 1024:,.1f} KiB"


def _print_memory(analysis: Any, assumed: list[dict[str, int]], path: Path) -> None:
    table = Table(title=f"memory plan of {escape(str(path))} ({analysis.alignment}-byte alignment)", box=box.SIMPLE_HEAD)
    table.add_column("", no_wrap=True)
    sets = [s.to_dict() for s in analysis.sets]
    for s in analysis.sets:
        dims = [f"{k}={'x'.join(map(str, v))}" for k, v in s.shapes.items() if not k.startswith("past")]
        table.add_column("\n".join(dims), justify="right")
    scheduler = analysis.choice.scheduler if analysis.choice else "graph"

    def row(label: str, fn) -> None:
        table.add_row(label, *[fn(d) for d in sets])

    row("activation arena", lambda d: _mib(d["arena_bytes"]))
    row("lower bound", lambda d: _mib(d["lower_bound_bytes"]))
    row("arena / lower bound", lambda d: f"{d['arena_bytes'] / max(d['lower_bound_bytes'], 1):.4f}")
    row("no-reuse total", lambda d: _mib(d["naive_bytes"]))
    row("lower bound, graph order", lambda d: _mib(d["lower_bound_graph_order_bytes"]))
    row(
        f"reordered ({scheduler}) / graph order",
        lambda d: f"{d['lower_bound_bytes'] / max(d['lower_bound_graph_order_bytes'], 1):.4f}",
    )
    row("lower bound with in-place reuse", lambda d: f"{_mib(d['lower_bound_inplace_bytes'])} ({d['inplace_candidates']} ops)")
    row("weights", lambda d: _mib(d["weights_bytes"]))
    row("graph inputs", lambda d: _mib(d["inputs_bytes"]))
    row("graph outputs", lambda d: _mib(d["outputs_bytes"]))
    row(
        "total (weights + inputs + outputs + arena)",
        lambda d: _mib(d["weights_bytes"] + d["inputs_bytes"] + d["outputs_bytes"] + d["arena_bytes"]),
    )
    if any("kv_cache" in d for d in sets):
        row("KV cache after this step", lambda d: _kv(d.get("kv_cache")))
        row("KV cache per token and sequence", lambda d: _mib(d["kv_cache"].get("bytes_per_token", 0)) if "kv_cache" in d else "-")
    row("peak at node", lambda d: f"{d['peak_node']} ({d['peak_op_type']})")
    console.print(table)
    for s, d in zip(analysis.sets, sets, strict=True):
        top = ", ".join(f"{t['tensor']} [{'x'.join(map(str, t['shape']))}] {_mib(t['bytes'])}" for t in d["top_tensors_at_peak"])
        label = " ".join(f"{k}={'x'.join(map(str, v))}" for k, v in s.shapes.items() if not k.startswith("past"))
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
    return f"{_mib(kv['present_bytes'])}{tokens}"


@app.command("passes")
@user_errors
def list_passes() -> None:
    """List the registered passes and the default pipeline of each target."""
    from llmc.passes.pipeline import DEFAULT_PIPELINES
    from llmc.passes.registry import all_passes

    table = Table(title="passes")
    for col in ("name", "targets", "description"):
        table.add_column(col)
    for info in all_passes():
        table.add_row(info.name, ",".join(info.targets), info.description)
    console.print(table)
    for target, text in DEFAULT_PIPELINES.items():
        console.print(f"default pipeline for {target}: {text}")
    from llmc.passes.fusion.families import FAMILIES

    fusions = Table(title="fusion families (pass 'fuse'; --enable-fusion / --disable-fusion NAME)")
    for col in ("name", "targets", "produces", "off by default on", "description"):
        fusions.add_column(col)
    for family in FAMILIES:
        off = ", ".join(f"{t}/{d}" for t, d in family.off_by_default) or "-"
        produces = ", ".join(p.split("::")[1] for p in family.produces) or "-"
        fusions.add_row(family.name, ",".join(family.targets), produces, off, family.description)
    console.print(fusions)


@app.command()
@user_errors
def check(
    original: Annotated[Path, typer.Argument(help="The source ONNX model.")],
    artifact: Annotated[Path, typer.Argument(help="An artifact directory or ONNX model to compare.")],
    shape: ShapeOpt = None,
    inputs: InputsOpt = None,
    tolerance: Annotated[
        float, typer.Option(help="Max abs error allowed, relative to each output's scale.")
    ] = 1e-4,
    seed: Annotated[int, typer.Option(help="Seed of the generated inputs.")] = 0,
) -> None:
    """Compare outputs of ORIGINAL and ARTIFACT (ONNX Runtime, ORT_DISABLE_ALL); exit 1 on mismatch."""
    from llmc.backends.ort import REFERENCE_CONFIG, OrtRunner, create_session
    from llmc.compiler.artifact import MODEL_FILE
    from llmc.model.compare import compare_outputs
    from llmc.model.feeds import feeds_for, parse_shape_specs, resolve_shapes
    from llmc.model.io import load_model

    source = load_model(original)
    candidate_path = artifact / MODEL_FILE if artifact.is_dir() else artifact
    candidate = load_model(candidate_path)
    feeds = feeds_for(source, resolve_shapes(source, parse_shape_specs(shape))[0], inputs, seed)
    ref = OrtRunner(create_session(original, REFERENCE_CONFIG, source)).run(feeds)
    out = OrtRunner(create_session(candidate_path, REFERENCE_CONFIG, candidate)).run(feeds)
    result = compare_outputs(ref, out, tolerance)
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
    if not result.passed:
        raise typer.Exit(1)


@app.command()
@user_errors
def bench(
    models: Annotated[list[Path], typer.Argument(help="ONNX models and/or artifact directories.")],
    shape: ShapeOpt = None,
    inputs: InputsOpt = None,
    runs: Annotated[int, typer.Option(help="Timed runs per model.")] = 100,
    warmup: Annotated[int, typer.Option(help="Untimed runs per model first.")] = 10,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0: default).")] = 0,
    level: Annotated[str, typer.Option(help="ORT graph optimization level for plain ONNX files.")] = "all",
    rss: Annotated[
        bool, typer.Option("--rss/--no-rss", help="Measure peak RSS in a child process per model.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the generated inputs.")] = 0,
) -> None:
    """Time models interleaved in one process; print p50/p90/p99 and ratios against the first."""
    from llmc.compiler.bench import resolve_target, run_benchmark
    from llmc.model.feeds import feeds_for, parse_shape_specs, resolve_shapes
    from llmc.model.io import load_model

    targets = [resolve_target(m, threads=threads, level=level) for m in models]
    first = load_model(targets[0].model_path)
    feeds = feeds_for(first, resolve_shapes(first, parse_shape_specs(shape))[0], inputs, seed)
    results = run_benchmark(targets, feeds, runs=runs, warmup=warmup, measure_rss=rss)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
