"""``classify`` (a text-classification model's labels for texts or text pairs) and ``rerank``
(documents ordered by relevance to a query).

Scores are transformers' text-classification pipeline's (``llmc.tasks.scores``). ``rerank`` runs
a text-classification model as a cross-encoder on (query, document) pairs, its score being the
single logit of a one-label model or the positive (second) label's probability of a two-label
one; with a sentence-embedding (or feature-extraction) model it is the cosine of the embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmc.errors import LlmcError
from llmc.spec.task import FEATURE_EXTRACTION, SENTENCE_EMBEDDING, TEXT_CLASSIFICATION
from llmc.tasks.model import TaskModel
from llmc.tasks.scores import cross_encoder_scores, label_scores, softmax

Labelled = list[tuple[str, float]]


def _logits(model: TaskModel, texts: Sequence[str], pairs: Sequence[str] | None, batch_size: int) -> np.ndarray:
    encodings = model.tokenizer.encode(texts, pairs)
    rows = model.rows(encodings, batch_size)
    return np.stack([row["logits"] for row in rows]).astype(np.float64) if rows else np.zeros((0, 0))


def classify(
    model: TaskModel, texts: Sequence[str], pairs: Sequence[str] | None = None, *, top_k: int | None = None,
    batch_size: int = 32, raw: bool = False,
) -> list[Labelled]:
    """Per text (or pair), ``(label, score)`` best first: all labels, or the ``top_k`` best;
    ``raw``: the logits instead of the scores (text-embeddings-inference's ``raw_scores``)."""
    spec = model.require("classify", TEXT_CLASSIFICATION)
    if top_k is not None and top_k < 1:
        raise LlmcError(f"top_k must be at least 1, not {top_k}")
    logits = _logits(model, texts, pairs, batch_size)
    if logits.size == 0:
        return []
    labels = model.labels(logits.shape[-1])
    results = []
    for row in logits if raw else label_scores(logits, spec):
        order = sorted(range(len(row)), key=lambda i: -row[i])  # stable: ties keep label order
        results.append([(labels[i], float(row[i])) for i in order[:top_k]])
    return results


def rerank(
    model: TaskModel, query: str, documents: Sequence[str], *, batch_size: int = 32
) -> list[tuple[int, float]]:
    """``(document index, score)`` for every document, most relevant first."""
    return rerank_many(model, [(query, documents)], batch_size=batch_size)[0]


def rerank_many(
    model: TaskModel, requests: Sequence[tuple[str, Sequence[str]]], *, batch_size: int = 32, raw: bool = False
) -> list[list[tuple[int, float]]]:
    """:func:`rerank` of several (query, documents) requests in one pass over the model (a server
    merges concurrent requests); ``raw``: a cross-encoder's logit, without its activation."""
    spec = model.require("rerank", TEXT_CLASSIFICATION, SENTENCE_EMBEDDING, FEATURE_EXTRACTION)
    sizes = [len(documents) for _, documents in requests]
    if not sum(sizes):
        return [[] for _ in requests]
    if spec.task is TEXT_CLASSIFICATION:
        queries = [query for query, documents in requests for _ in documents]
        logits = _logits(model, queries, [d for _, documents in requests for d in documents], batch_size)
        flat = _pair_scores(model, logits, raw)
        bounds = np.cumsum([0, *sizes])
        scores = [flat[bounds[i] : bounds[i + 1]] for i in range(len(requests))]
    else:
        from llmc.tasks.embed import cosine, embed

        vectors = embed(model, [text for query, documents in requests for text in (query, *documents)], batch_size)
        bounds = np.cumsum([0, *(n + 1 for n in sizes)])
        scores = [cosine(vectors[b : b + 1], vectors[b + 1 : e])[0] for b, e in zip(bounds[:-1], bounds[1:], strict=True)]
    results = []
    for row in scores:
        order = sorted(range(len(row)), key=lambda i: -row[i])
        results.append([(i, float(row[i])) for i in order])
    return results


def _pair_scores(model: TaskModel, logits: np.ndarray, raw: bool = False) -> np.ndarray:
    """One logit: the CrossEncoder's own score of it (``CrossEncoder.predict``'s: sigmoid, tanh or
    the logit, as recorded at export; the logit where nothing was recorded); two: the probability
    of the second label. ``raw``: the (second label's) logit."""
    if logits.shape[-1] == 1:
        return logits[:, 0] if raw else cross_encoder_scores(logits[:, 0], model.spec)
    if logits.shape[-1] == 2:
        return logits[:, 1] if raw else softmax(logits)[:, 1]
    raise LlmcError(
        f"{model.where}: a text-classification model with {logits.shape[-1]} labels is not a reranker "
        "(a cross-encoder has one score, or two labels); classify with it "
        "(runner.classify, or `llmc predict` without --question)"
    )
