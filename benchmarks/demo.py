"""`make demo`: export all-MiniLM-L6-v2 (real weights) with the default torch exporter, build it
for ONNX Runtime, and print a before/after table (latency, node count, max error)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import llmc
from benchmarks.models import minilm
from llmc.cli.render import print_build
from llmc.model.feeds import make_feeds, resolve_shapes
from llmc.model.io import load_model
from llmc.runtime.bench import resolve_bench_model, run_benchmark

SHAPE = {"input_ids": (1, 128)}


def main() -> None:
    console = Console()
    start = time.perf_counter()
    with console.status("exporting all-MiniLM-L6-v2 with torch.onnx.export(dynamo=True)"):
        source = minilm(dynamo=True)
    console.print(f"source: {source} ({time.perf_counter() - start:.1f} s)")
    out = Path(source).parent.parent / "demo" / "minilm.llmc-ort"
    with console.status("llmc build --target ort"):
        artifact = llmc.build(source, target="ort", output=out, shapes=SHAPE)
    print_build(artifact.manifest, artifact.path)

    model = load_model(source)
    feeds = make_feeds(model, resolve_shapes(model, SHAPE)[0])
    targets = [
        resolve_bench_model(source, label="before: ONNX Runtime ORT_ENABLE_ALL"),
        resolve_bench_model(artifact.path, label="after: llmc artifact"),
    ]
    with console.status("timing both, interleaved (batch 1, sequence 128)"):
        before, after = run_benchmark(targets, feeds, runs=100, warmup=10, measure_rss=False)
    nodes = artifact.manifest["nodes"]
    table = Table(title="all-MiniLM-L6-v2, batch 1, sequence 128, CPU")
    for col in ("", "p50 latency ms", "nodes", "max abs error vs source"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("before (raw export)", f"{before.p50_ms:.2f}", str(nodes["before"]), "-")
    table.add_row(
        "after (llmc)", f"{after.p50_ms:.2f}", str(nodes["after"]),
        f"{artifact.manifest['verification']['max_abs_error']:.2e}",
    )
    console.print(table)
    console.print(f"after / before p50: {after.p50_ms / before.p50_ms:.3f}")


if __name__ == "__main__":
    main()
