"""``llmc compress``: a smaller encoder, pruned and distilled on the user's text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmc.cli.app import app, console, user_errors


@app.command()
@user_errors
def compress(
    source: Annotated[Path, typer.Argument(help="A Hugging Face encoder directory (BERT-style).")],
    data: Annotated[Path, typer.Option("--data", help="Unlabeled text, one sentence per line (a tenth is held out).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output directory (new or empty).")],
    ffn: Annotated[float, typer.Option("--ffn", help="Fraction of every layer's FFN neurons removed (0-0.95).")] = 0.5,
    layers: Annotated[Optional[int], typer.Option("--layers", help="Layers kept, the least important dropped.")] = None,
    minutes: Annotated[float, typer.Option("--minutes", help="Distillation budget (CPU minutes).")] = 5.0,
) -> None:
    """Prune FFN neurons and layers by importance on --data, distill against the original, export."""
    from llmc.compression import CompressOptions
    from llmc.compression import compress as run

    report = run(source, data, output, CompressOptions(ffn, layers, minutes), console.print)
    agree = report["held_out_agreement"]["distilled"]
    params = report["parameters"]
    console.print(
        f"compressed: {params['before'] / 1e6:.1f}M -> {params['after'] / 1e6:.1f}M parameters, held-out cosine "
        f"{agree['cosine_mean']:.4f} (worst {agree['cosine_worst']:.4f}); {output}/model.onnx, {output}/hf, "
        f"{output}/compress_report.json"
    )
