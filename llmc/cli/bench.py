"""``llmc bench``: interleaved latency of models and artifacts, or a decoder's decode roofline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmc.cli.app import (
    InputsOpt,
    JsonOpt,
    SeedOpt,
    ShapeOpt,
    ThreadsOpt,
    app,
    check_png,
    console,
    user_errors,
)
from llmc.cli.render import print_benchmark
from llmc.errors import LlmcError

DECODE_ONLY = ("--context", "--steps", "--bandwidth", "--plot")
DEFAULT_CONTEXT, DEFAULT_STEPS = 128, 100  # llmc.generation.roofline's (not imported: `llmc --help` stays light)


@app.command()
@user_errors
def bench(
    models: Annotated[list[Path], typer.Argument(help="ONNX models and/or artifact directories.")],
    shape: ShapeOpt = None,
    inputs: InputsOpt = None,
    runs: Annotated[int, typer.Option(help="Timed runs per model (--decode: see --steps).")] = 100,
    warmup: Annotated[int, typer.Option(help="Untimed runs per model first (--decode: untimed steps).")] = 10,
    threads: ThreadsOpt = 0,
    level: Annotated[str, typer.Option(help="ORT graph optimization level for plain ONNX files.")] = "all",
    rss: Annotated[
        bool, typer.Option("--rss/--no-rss", help="Measure peak RSS in a child process per model.")
    ] = True,
    as_json: JsonOpt = False,
    seed: SeedOpt = 0,
    padding: Annotated[
        str,
        typer.Option(
            help="Artifacts of encoders: auto (skip padding as the build measured safe), trim, bucket, pack or off "
            "(compute every position). Give padded inputs with --inputs to see it."
        ),
    ] = "auto",
    decode: Annotated[
        bool,
        typer.Option(
            "--decode",
            help="One decoder (artifact or .onnx): its decode roofline instead of latency: ms/token, bytes read per "
            "token, achieved GB/s against the measured bandwidth, % of the floor, nodes per step and time per op "
            "type (ONNX Runtime's profiler), at batch 1.",
        ),
    ] = False,
    context: Annotated[int, typer.Option(help="With --decode: cached tokens before the timed step.")] = 128,
    steps: Annotated[int, typer.Option(help="With --decode: timed decode steps (their median is ms/token).")] = 100,
    bandwidth: Annotated[
        Optional[float],
        typer.Option(
            help="With --decode: the read bandwidth in GB/s, instead of measuring it.",
            show_default="measured: ReduceSum over 512 MiB, same threads",
        ),
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            "--plot",
            help="With --decode: draw each op type's time per step against its bytes at the bandwidth, and the "
            "step's against the floor, to FILE.png.",
        ),
    ] = None,
) -> None:
    """Time models interleaved in one process; print p50/p90/p99 and ratios against the first.
    With --decode: one decoder's decode step against its memory-bandwidth floor, op type by op type."""
    if decode:
        _check_decode(models, shape, inputs, padding, plot)
        _bench_decode(models[0], warmup, threads, level, as_json, context, steps, bandwidth, plot)
        return
    values = (context != DEFAULT_CONTEXT, steps != DEFAULT_STEPS, bandwidth is not None, plot is not None)
    given = [flag for flag, value in zip(DECODE_ONLY, values, strict=True) if value]
    if given:
        raise LlmcError(f"{given[0]} is used with --decode")
    from llmc.model.feeds import feeds_for, parse_shape_specs
    from llmc.model.io import load_model
    from llmc.runtime.bench import resolve_bench_model, run_benchmark
    from llmc.spec.task import task_shapes

    targets = [resolve_bench_model(m, threads=threads, level=level, padding=padding) for m in models]
    first = load_model(targets[0].model_path)
    feeds = feeds_for(first, task_shapes(first, parse_shape_specs(shape))[0], inputs, seed)
    results = run_benchmark(targets, feeds, runs=runs, warmup=warmup, measure_rss=rss)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    print_benchmark(results, runs)


def _check_decode(models: list[Path], shape: object, inputs: object, padding: str, plot: Path | None) -> None:
    """The flags --decode cannot take, each one line before any work."""
    if len(models) != 1:
        raise LlmcError(f"--decode takes one decoder (artifact or .onnx), got {len(models)}; bench them one at a time")
    if shape or inputs is not None:
        raise LlmcError(
            f"{'--shape' if shape else '--inputs'} does not apply to --decode: its step is batch 1, one new "
            "token after --context cached tokens"
        )
    if padding != "auto":
        raise LlmcError("--padding is for encoders; --decode times a decoder's step")
    if plot is not None:
        check_png(plot)


def _bench_decode(
    model: Path, warmup: int, threads: int, level: str, as_json: bool, context: int, steps: int,
    bandwidth: float | None, plot: Path | None,
) -> None:
    from llmc.generation.roofline import decode_roofline
    from llmc.generation.roofline_report import plot_roofline, render_roofline

    if bandwidth is not None and bandwidth <= 0:
        raise LlmcError(f"--bandwidth {bandwidth}: give GB/s > 0, or leave it out to measure it")
    report = decode_roofline(
        model, context=context, steps=steps, warmup=warmup, threads=threads, level=level, bandwidth_gbs=bandwidth,
    )
    if plot is not None:
        plot_roofline(report, plot)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    typer.echo(render_roofline(report), nl=False)
    if plot is not None:
        console.print(f"plot: {plot}", markup=False, highlight=False)
