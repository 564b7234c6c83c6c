"""``llmc export``: a Hugging Face model directory to ONNX, with its tokenizer and generation config
(``llmc.export.hf``); the output directory is what ``llmc build`` takes next."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmc.cli.app import app, console, user_errors

SourceArg = Annotated[
    Path, typer.Argument(help="A Hugging Face model directory (config.json + weights) or a .gguf file (needs the gguf package), read offline.")
]
ExportOutputOpt = Annotated[
    Path, typer.Option("--output", "-o", help="Directory for model.onnx and the tokenizer files.")
]
TaskOpt = Annotated[
    str,
    typer.Option("--task", help="auto (from config.json), encoder or decoder (a causal LM with its KV cache)."),
]
DynamoOpt = Annotated[
    bool, typer.Option("--dynamo/--legacy", help="torch.onnx's dynamo exporter, or the legacy TorchScript one.")
]
OpsetOpt = Annotated[
    Optional[int], typer.Option("--opset", help="ONNX opset version.", show_default="the exporter's")
]


@app.command()
@user_errors
def export(
    source: SourceArg,
    output: ExportOutputOpt,
    task: TaskOpt = "auto",
    dynamo: DynamoOpt = True,
    opset: OpsetOpt = None,
) -> None:
    """Export a Hugging Face model to ONNX with its tokenizer, ready for `llmc build`."""
    from llmc.export.hf import export_pretrained

    with console.status("exporting") as status:
        result = export_pretrained(
            source, output, task=task, dynamo=dynamo, opset=opset, log=lambda msg: status.update(msg)
        )
    console.print(f"exported {result.model_type} ({result.task}) to {result.path}", highlight=False, soft_wrap=True)
    console.print(f"  files:   {', '.join(result.files)}", highlight=False, soft_wrap=True)
    inputs = result.inputs if len(result.inputs) <= 5 else [*result.inputs[:4], f"... ({len(result.inputs)} in all)"]
    outputs = result.outputs if len(result.outputs) <= 3 else [*result.outputs[:2], f"... ({len(result.outputs)} in all)"]
    console.print(f"  inputs:  {', '.join(inputs)}", highlight=False, soft_wrap=True)
    console.print(f"  outputs: {', '.join(outputs)}", highlight=False, soft_wrap=True)
    console.print(f"next: llmc build {result.path / 'model.onnx'}", highlight=False, soft_wrap=True)
