"""``llmc predict``: read texts with an encoder artifact as its task says (``llmc.tasks``): labels,
entities, answers, embeddings, a reranking or the tokens for a mask."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmc.cli.app import JsonOpt, ThreadsOpt, app, read_text_option, user_errors


@app.command()
@user_errors
def predict(
    artifact: Annotated[Path, typer.Argument(help="An encoder artifact built from `llmc export` output.")],
    text: Annotated[Optional[list[str]], typer.Option("--text", help="A text to read (repeatable).")] = None,
    file: Annotated[
        Optional[Path], typer.Option("--file", help="A UTF-8 file of texts, one per line (blank lines skipped).")
    ] = None,
    pair: Annotated[
        Optional[list[str]],
        typer.Option("--pair", help="Text-classification: the second text of a pair, one for all texts or one per text."),
    ] = None,
    question: Annotated[
        Optional[str],
        typer.Option(
            "--question",
            help="Question-answering: the question, answered in each text; text-classification (cross-encoder) "
            "or embedding models: the query the texts are reranked for.",
        ),
    ] = None,
    top_k: Annotated[
        Optional[int],
        typer.Option(
            "--top-k", help="Text-classification: the best labels to show (with --question: the best documents); "
                            "fill-mask: the tokens per mask.",
            show_default="all labels; 5 tokens",
        ),
    ] = None,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = 0,
) -> None:
    """Read texts with an encoder artifact's task: labels, entities, answers, embeddings, reranking, masks filled."""
    from llmc.generation.runner import load
    from llmc.tasks.predict import predict as read

    texts = list(text or []) + _lines(file)
    runner = load(artifact, threads=threads or None)
    result = read(runner, texts, pairs=pair or (), question=question, top_k=top_k)
    if as_json:
        typer.echo(json.dumps({"artifact": str(artifact), **result}, indent=2))
        return
    _PRINTERS[result["reading"]](result["results"])


def _lines(file: Path | None) -> list[str]:
    if file is None:
        return []
    return [line for line in read_text_option(file, "--file").splitlines() if line.strip()]


def _quote(text: str, limit: int = 60) -> str:
    return json.dumps(text if len(text) <= limit else text[: limit - 3] + "...", ensure_ascii=False)


def _classify(results: list[dict[str, Any]]) -> None:
    for item in results:
        pair = f" + {_quote(item['pair'])}" if "pair" in item else ""
        typer.echo(f"{_quote(item['text'])}{pair}")
        width = max(len(entry["label"]) for entry in item["labels"])
        for entry in item["labels"]:
            typer.echo(f"  {entry['label']:<{width}}  {entry['score']:.4f}")


def _rerank(result: dict[str, Any]) -> None:
    typer.echo(f"query {_quote(result['query'])}:")
    for rank, entry in enumerate(result["ranking"], 1):
        typer.echo(f"  {rank}. {entry['score']:.4f}  {_quote(entry['text'])} (text {entry['index'] + 1})")


def _embed(results: list[dict[str, Any]]) -> None:
    for item in results:
        vector = item["embedding"]
        norm = sum(x * x for x in vector) ** 0.5
        head = ", ".join(f"{x:.4f}" for x in vector[:4])
        typer.echo(f"{_quote(item['text'])}: {item['dimension']}-d vector, norm {norm:.4f}: [{head}, ...]")


def _extract(results: list[dict[str, Any]]) -> None:
    for item in results:
        typer.echo(_quote(item["text"]))
        if not item["entities"]:
            typer.echo("  (no entities)")
        for e in item["entities"]:
            typer.echo(f"  {e['entity_group']}  {_quote(e['word'])}  chars {e['start']}:{e['end']}  {e['score']:.4f}")


def _answer(results: list[dict[str, Any]]) -> None:
    for item in results:
        typer.echo(f"{_quote(item['question'])} in {_quote(item['context'])}")
        typer.echo(f"  answer {_quote(item['answer'])}  chars {item['start']}:{item['end']}  score {item['score']:.4f}")


def _fill(results: list[dict[str, Any]]) -> None:
    for item in results:
        typer.echo(_quote(item["text"]))
        for number, candidates in enumerate(item["masks"], 1):
            tokens = ", ".join(f"{_quote(c['token_str'])} {c['score']:.4f}" for c in candidates)
            typer.echo(f"  mask {number}: {tokens}")


_PRINTERS = {
    "classify": _classify, "rerank": _rerank, "embed": _embed, "extract": _extract, "answer": _answer, "fill": _fill,
}
