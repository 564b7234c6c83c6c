"""``llmc bench``: interleaved latency of models and artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from llmc.cli.app import InputsOpt, JsonOpt, SeedOpt, ShapeOpt, ThreadsOpt, app, user_errors
from llmc.cli.render import print_benchmark


@app.command()
@user_errors
def bench(
    models: Annotated[list[Path], typer.Argument(help="ONNX models and/or artifact directories.")],
    shape: ShapeOpt = None,
    inputs: InputsOpt = None,
    runs: Annotated[int, typer.Option(help="Timed runs per model.")] = 100,
    warmup: Annotated[int, typer.Option(help="Untimed runs per model first.")] = 10,
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
            help="Artifacts of encoders: auto (skip padding as the build measured safe), trim, bucket or off "
            "(compute every position). Give padded inputs with --inputs to see it."
        ),
    ] = "auto",
) -> None:
    """Time models interleaved in one process; print p50/p90/p99 and ratios against the first."""
    from llmc.model.feeds import feeds_for, parse_shape_specs, resolve_shapes
    from llmc.model.io import load_model
    from llmc.runtime.bench import resolve_bench_model, run_benchmark

    targets = [resolve_bench_model(m, threads=threads, level=level, padding=padding) for m in models]
    first = load_model(targets[0].model_path)
    feeds = feeds_for(first, resolve_shapes(first, parse_shape_specs(shape))[0], inputs, seed)
    results = run_benchmark(targets, feeds, runs=runs, warmup=warmup, measure_rss=rss)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    print_benchmark(results, runs)
