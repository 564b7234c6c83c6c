"""``llmc generate`` and ``llmc perplexity``: run a decoder artifact built from ``llmc export`` output.

Both use the artifact's tokenizer and its KV cache (``llmc.generation``); generation runs on
ONNX Runtime (an artifact's TensorRT engine, if any, is not used).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmc.cli.app import JsonOpt, ThreadsOpt, app, read_text_option, user_errors
from llmc.errors import LlmcError

PERPLEXITY_WINDOW = 512  # --max-length's default, capped at the model's context

ArtifactArg = Annotated[Path, typer.Argument(help="An artifact directory built from `llmc export` output.")]


def _load(artifact: Path, threads: int) -> Any:
    from llmc.generation.runner import load

    return load(artifact, threads=threads or None, engine=False)


def _check_text(value: str, flag: str) -> None:
    """One line for text that is not UTF-8 (bytes the shell passed that do not decode arrive as
    lone surrogates, which no tokenizer can encode)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LlmcError(
            f"{flag}: not valid UTF-8 (an undecodable byte at character {exc.start}); pass UTF-8 text"
        ) from None


def _check_generate(prompt: str, stop: list[str], seed: int, temperature: float, top_p: float) -> None:
    """One line, before the artifact is loaded, for values no generation can take."""
    _check_text(prompt, "--prompt")
    for text in stop:
        _check_text(text, "--stop")
    if seed < 0:
        raise LlmcError(f"--seed {seed}: a seed is a whole number >= 0")
    for flag, value in (("--temperature", temperature), ("--top-p", top_p)):
        if not math.isfinite(value):
            raise LlmcError(f"{flag} {value}: must be a finite number")


def _windows(artifact: Path, max_length: Optional[int], stride: Optional[int]) -> tuple[int, int]:
    """``(window, stride)`` of ``llmc perplexity``: one line, before any work, for a stride that is
    not 1 to the window, or a window past the model's context (the tokenizer's model_max_length or
    the context the export recorded: :func:`llmc.model.text.context_limit`, named in the line)."""
    from llmc.model.text import context_limit

    limit = context_limit(artifact)
    context = limit[0] if limit is not None else None
    window = max_length if max_length is not None else min(PERPLEXITY_WINDOW, context or PERPLEXITY_WINDOW)
    if window < 2:
        raise LlmcError(f"--max-length {window}: a window needs at least 2 tokens")
    if limit is not None and window > limit[0]:
        raise LlmcError(
            f"--max-length {window}: windows past the model's context of {limit[0]} tokens ({limit[1]}); "
            f"give --max-length {limit[0]} or less"
        )
    step = window if stride is None else stride
    if not 1 <= step <= window:
        raise LlmcError(f"--stride {step}: tokens between window starts, 1 to --max-length ({window})")
    return window, step


def _stats(result: Any) -> str:
    drafts = f", {result.accepted}/{result.drafted} drafted tokens accepted" if result.drafted else ""
    return (
        f"{result.tokens} tokens ({result.stop_reason}): time to first token {result.ttft_ms:.1f} ms, "
        f"{result.ms_per_token:.2f} ms/token after it{drafts}"
    )


@app.command()
@user_errors
def generate(
    artifact: ArtifactArg,
    prompt: Annotated[str, typer.Option("--prompt", help="The text to continue.")],
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the tokenizer's chat template.")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (0: greedy).")] = 0.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Sample from the k most likely tokens (0: all).")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", help="Sample from the smallest set with this mass.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling.")] = 0,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop at this text (repeatable).")] = None,
    max_length: Annotated[
        Optional[int], typer.Option("--max-length", help="The model's context in tokens, if the tokenizer does not say.")
    ] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print the text as it is generated.")] = False,
    speculative: Annotated[
        str,
        typer.Option(
            "--speculative",
            help="ngram: draft tokens by matching the last 1-3 tokens against the prompt and the text so far, "
            "verify them in one step (same greedy tokens, faster on answers that copy from the prompt; "
            "one prompt, --temperature 0, a GroupQueryAttention artifact); auto: ngram where it can run; off.",
        ),
    ] = "off",
    as_json: JsonOpt = False,
    threads: ThreadsOpt = 0,
) -> None:
    """Continue a prompt with a decoder artifact (KV cache on ONNX Runtime); print the text and its speed."""
    _check_generate(prompt, stop or [], seed, temperature, top_p)
    runner = _load(artifact, threads)
    printer = (lambda piece: typer.echo(piece, nl=False)) if stream and not as_json else None
    result = runner.generate(
        prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        stop=tuple(stop or ()), stream=printer, chat=chat, max_length=max_length, speculative=speculative,
    )
    if as_json:
        typer.echo(json.dumps({"artifact": str(artifact), **result.to_dict()}, indent=2))
        return
    typer.echo("" if printer else result.text)
    typer.echo(_stats(result), err=True)


@app.command()
@user_errors
def perplexity(
    artifact: ArtifactArg,
    text: Annotated[Path, typer.Option("--text", help="A UTF-8 text file to score.")],
    max_length: Annotated[
        Optional[int],
        typer.Option("--max-length", help="Tokens per window (one prefill each).",
                     show_default=f"{PERPLEXITY_WINDOW}, or the model's context if shorter"),
    ] = None,
    stride: Annotated[
        Optional[int], typer.Option("--stride", help="Tokens between window starts.", show_default="--max-length")
    ] = None,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = 0,
) -> None:
    """Perplexity of a text file under a decoder artifact, over sliding windows of its context."""
    from llmc.generation import perplexity as score
    from llmc.model.text import encode, load_tokenizer

    window, step = _windows(artifact, max_length, stride)
    content = read_text_option(text, "--text")
    from llmc.generation.api import open_decoder

    runner = _load(artifact, threads)
    open_decoder(runner.session, artifact, runner.artifact.manifest)  # not a decoder: one line before tokenizing the file
    ids = encode(load_tokenizer(artifact), content)
    result = score(runner.logits, ids, window, step)
    if as_json:
        typer.echo(json.dumps({"artifact": str(artifact), **result.__dict__}, indent=2))
        return
    typer.echo(f"perplexity {result.perplexity:.3f} over {result.tokens} tokens ({result.windows} window(s))")
