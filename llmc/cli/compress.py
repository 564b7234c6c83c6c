"""``llmc compress``: a smaller model, pruned and distilled on the user's text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmc.cli.app import app, console, user_errors
from llmc.errors import LlmcError


@app.command()
@user_errors
def compress(
    source: Annotated[Path, typer.Argument(help="A Hugging Face model directory (BERT-style encoder or "
                                                "LLaMA-style decoder) or a LLaMA .gguf file.")],
    data: Annotated[Path, typer.Option("--data", help="Unlabeled text, one sentence per line (a tenth is held out).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output directory (new or empty).")],
    ffn: Annotated[Optional[float], typer.Option(
        "--ffn", help="Fraction of every layer's FFN neurons removed (0-0.95; with another cut flag default 0.5, "
                      "0 with --sparsity).")] = None,
    heads: Annotated[float, typer.Option("--heads", help="Fraction of every layer's attention heads removed "
                                                         "(0-0.95; whole heads per key/value group).")] = 0.0,
    layers: Annotated[Optional[int], typer.Option("--layers", help="Layers kept, the least important dropped.")] = None,
    target_speedup: Annotated[Optional[float], typer.Option(
        "--target-speedup", help="Search --ffn/--heads/--layers for this measured speed-up of the built "
                                 "fp32 artifact (encoders).")] = None,
    sparsity: Annotated[Optional[str], typer.Option(
        "--sparsity", help="2:4: keep 2 of every 4 weights of the layer projections (TensorRT sparse weights).")] = None,
    minutes: Annotated[float, typer.Option("--minutes", help="Distillation budget (CPU minutes), the search's "
                                                            "probes included.")] = 5.0,
    importance: Annotated[str, typer.Option("--importance", help="activation, or taylor (decoders).")] = "activation",
    max_loss: Annotated[Optional[float], typer.Option(
        "--max-loss", help="Held-out loss allowed after distillation: encoders 1 - mean cosine (default 0.02), "
                           "decoders the perplexity increase (default 0.05 = +5%).")] = None,
    allow_loss: Annotated[bool, typer.Option(
        "--allow-loss", help="Write the model even when it loses more than --max-loss.")] = False,
) -> None:
    """Without a cut flag: the largest measured speed-up whose held-out loss stays within --max-loss.
    With --ffn/--heads/--layers/--sparsity/--target-speedup: that cut, judged against --max-loss.
    Pruned by importance on --data, distilled against the original (a tenth held out, never
    trained on), exported; over the budget nothing is written."""
    from llmc.compression import CompressOptions
    from llmc.compression import compress as run

    if target_speedup is not None and (ffn is not None or heads or layers is not None):
        raise LlmcError("--target-speedup chooses --ffn/--heads/--layers itself: give one or the others, not both")
    options = CompressOptions(ffn=ffn, heads=heads, layers=layers, minutes=minutes, sparsity=sparsity,
                              target_speedup=target_speedup, importance=importance, max_loss=max_loss,
                              allow_loss=allow_loss)
    options.check(None)  # a bad value (--minutes nan...) is one line before the model is read
    report = run(source, data, output, options, console.print)
    agree = report["held_out_agreement"]["distilled"]
    params, ms = report["parameters"], report["latency_ms"]
    kept = (f"perplexity {agree['perplexity']:.2f} (original {agree['teacher_perplexity']:.2f})" if "perplexity" in agree
            else f"cosine {agree['cosine_mean']:.4f} (worst {agree['cosine_worst']:.4f})")
    budget = report["budget"]
    verdict = "within" if budget["within"] else "OVER (--allow-loss)"
    console.print(
        f"held-out loss {budget['loss_distilled']:.4f} ({budget['metric']}; {budget['loss_pruned']:.4f} before "
        f"distillation), {verdict} --max-loss {budget['max_loss']:g}"
    )
    console.print(
        f"compressed: {params['before'] / 1e6:.1f}M -> {params['after'] / 1e6:.1f}M parameters, {ms['speedup']:.2f}x "
        f"faster on ONNX Runtime, held-out {kept}; {output}/model.onnx, {output}/hf, {output}/compress_report.json"
    )
