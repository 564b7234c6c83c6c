"""What ``llmc predict`` does with an artifact: the reading its task calls for, as JSON-ready data.

- text-classification: the labels of each text (or text + ``pair``); with a ``question``, the texts
  reranked as documents for it (a cross-encoder);
- sentence-embedding / feature-extraction: each text's vector; with a ``question``, the texts
  reranked by cosine;
- token-classification: each text's entities;
- question-answering: the answer to ``question`` in each text (a context);
- fill-mask: the likeliest tokens at each mask token of each text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmc.errors import LlmcError
from llmc.spec.task import (
    FEATURE_EXTRACTION,
    FILL_MASK,
    QUESTION_ANSWERING,
    SENTENCE_EMBEDDING,
    TEXT_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
)


def predict(
    runner: Any, texts: Sequence[str], *, pairs: Sequence[str] = (), question: str | None = None,
    top_k: int | None = None,
) -> dict[str, Any]:
    """``{"task", "reading", "results"}`` for ``texts`` on a loaded runner (``llmc.load``)."""
    model = runner._task_model()
    spec = model.require(
        "predict", TEXT_CLASSIFICATION, SENTENCE_EMBEDDING, FEATURE_EXTRACTION, TOKEN_CLASSIFICATION,
        QUESTION_ANSWERING, FILL_MASK,
    )
    if not texts:
        raise LlmcError("give the text(s) to read with --text (repeatable) or --file (one text per line)")
    task, embeds = spec.task, spec.task is SENTENCE_EMBEDDING or spec.task is FEATURE_EXTRACTION
    if pairs and task is not TEXT_CLASSIFICATION:
        raise LlmcError(f"--pair: {model.where} is a {task} model, which reads no text pairs; drop --pair")
    if question is not None and not (task is TEXT_CLASSIFICATION or embeds or task is QUESTION_ANSWERING):
        raise LlmcError(f"--question: {model.where} is a {task} model, which answers no question; drop --question")
    if question is not None and pairs:
        raise LlmcError("--question ranks the texts as documents for it; drop --pair")
    if top_k is not None and top_k < 1:
        raise LlmcError(f"--top-k {top_k}: must be at least 1")
    ranks = task is FILL_MASK or question is not None or task is TEXT_CLASSIFICATION
    if top_k is not None and not (ranks and task is not QUESTION_ANSWERING):
        raise LlmcError(f"--top-k: {model.where} is a {task} model, which ranks no labels, tokens or documents "
                        "here; drop --top-k")
    if task is QUESTION_ANSWERING:
        if question is None:
            raise LlmcError(f"{model.where} is a question-answering model: give --question (each --text is a context)")
        return _result(spec, "answer", [_answer(runner, question, text) for text in texts])
    if question is not None:
        ranking = runner.rerank(question, texts)
        return _result(spec, "rerank", {"query": question, "ranking": [
            {"index": i, "score": score, "text": texts[i]} for i, score in ranking[:top_k]]})
    if embeds:
        vectors = runner.embed(texts)
        return _result(spec, "embed", [
            {"text": text, "dimension": int(v.shape[0]), "embedding": [float(x) for x in v]}
            for text, v in zip(texts, vectors, strict=True)])
    if task is FILL_MASK:
        filled = runner.fill_mask(texts, top_k=top_k or 5)
        return _result(spec, "fill", [{"text": t, "masks": m} for t, m in zip(texts, filled, strict=True)])
    if task is TOKEN_CLASSIFICATION:
        return _result(spec, "extract", [
            {"text": text, "entities": entities} for text, entities in zip(texts, runner.extract(texts), strict=True)])
    return _result(spec, "classify", _classify(runner, texts, pairs, top_k))


def _result(spec: Any, reading: str, results: Any) -> dict[str, Any]:
    return {"task": spec.task.name, "reading": reading, "results": results}


def _answer(runner: Any, question: str, context: str) -> dict[str, Any]:
    return {"question": question, "context": context, **runner.answer(question, context)}


def _classify(runner: Any, texts: Sequence[str], pairs: Sequence[str], top_k: int | None) -> list[dict[str, Any]]:
    if pairs and len(pairs) not in (1, len(texts)):
        raise LlmcError(f"--pair: give one (for every text) or one per --text ({len(texts)}), not {len(pairs)}")
    second = (list(pairs) * len(texts) if len(pairs) == 1 else list(pairs)) if pairs else None
    labelled = runner.classify(texts, second, top_k=top_k)
    return [
        {"text": text, **({"pair": second[i]} if second else {}),
         "labels": [{"label": label, "score": score} for label, score in labelled[i]]}
        for i, text in enumerate(texts)
    ]
