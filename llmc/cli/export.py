"""``llmc export``: a Hugging Face model directory to ONNX, with its tokenizer and generation config
(``llmc.export.hf``); the output directory is what ``llmc build`` takes next.

The export's phases (loading, exporting to ONNX, optimising, saving) show as they run: the
running one beside a spinner, each finished one as a line with its elapsed seconds. Only finished
phases are printed, so an error in the first phase (a bad config, weights that do not load) is
still the one line every command's errors are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.status import Status

from llmc.cli.app import app, console, user_errors

SourceArg = Annotated[
    Path, typer.Argument(help="A Hugging Face model directory (config.json + weights) or a .gguf file (needs the gguf package), read offline.")
]
ExportOutputOpt = Annotated[
    Path, typer.Option("--output", "-o", help="Directory for model.onnx and the tokenizer files.")
]
TaskOpt = Annotated[
    str,
    typer.Option(
        "--task",
        help=(
            "What to export. auto: from config.json's architectures and a sentence-transformers modules.json. "
            "feature-extraction: token states (last_hidden_state); sentence-embedding: one vector per text "
            "(modules.json's pooling, dense layers, normalisation); text-classification, token-classification, "
            "fill-mask: the head's logits; question-answering: start_logits, end_logits; text-generation: a "
            "causal LM with its KV cache. Aliases: encoder (feature-extraction), decoder (text-generation)."
        ),
    ),
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
        result = export_pretrained(source, output, task=task, dynamo=dynamo, opset=opset, log=_show_phases(status))
    from llmc.export.tasks import describe

    what = describe(result.spec) if result.spec else str(result.task)
    console.print(f"exported {result.model_type} ({what}) to {result.path}", highlight=False, soft_wrap=True)
    console.print(f"  files:   {', '.join(result.files)}", highlight=False, soft_wrap=True)
    inputs = result.inputs if len(result.inputs) <= 5 else [*result.inputs[:4], f"... ({len(result.inputs)} in all)"]
    outputs = result.outputs if len(result.outputs) <= 3 else [*result.outputs[:2], f"... ({len(result.outputs)} in all)"]
    console.print(f"  inputs:  {', '.join(inputs)}", highlight=False, soft_wrap=True)
    console.print(f"  outputs: {', '.join(outputs)}", highlight=False, soft_wrap=True)
    console.print(f"next: llmc build {result.path / 'model.onnx'}", highlight=False, soft_wrap=True)


def _show_phases(status: Status):
    """The ``log`` callback of :func:`~llmc.export.hf.export_pretrained`: a phase that starts
    replaces the spinner's text; one that has finished is printed with its elapsed seconds."""
    from llmc.export.phases import STARTING

    def show(line: str) -> None:
        if line.endswith(STARTING):
            status.update(line)
        else:
            console.print(line, highlight=False, soft_wrap=True)

    return show
