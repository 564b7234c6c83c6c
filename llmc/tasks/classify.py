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
    batch_size: int = 32,
) -> list[Labelled]:
    """Per text (or pair), ``(label, score)`` best first: all labels, or the ``top_k`` best."""
    spec = model.require("classify", TEXT_CLASSIFICATION)
    if top_k is not None and top_k < 1:
        raise LlmcError(f"top_k must be at least 1, not {top_k}")
    logits = _logits(model, texts, pairs, batch_size)
    if logits.size == 0:
        return []
    labels = model.labels(logits.shape[-1])
    results = []
    for row in label_scores(logits, spec):
        order = sorted(range(len(row)), key=lambda i: -row[i])  # stable: ties keep label order
        results.append([(labels[i], float(row[i])) for i in order[:top_k]])
    return results


def rerank(
    model: TaskModel, query: str, documents: Sequence[str], *, batch_size: int = 32
) -> list[tuple[int, float]]:
    """``(document index, score)`` for every document, most relevant first."""
    spec = model.require("rerank", TEXT_CLASSIFICATION, SENTENCE_EMBEDDING, FEATURE_EXTRACTION)
    if not documents:
        return []
    if spec.task is TEXT_CLASSIFICATION:
        scores = _pair_scores(model, _logits(model, [query] * len(documents), documents, batch_size))
    else:
        from llmc.tasks.embed import cosine, embed

        vectors = embed(model, [query, *documents], batch_size)
        scores = cosine(vectors[:1], vectors[1:])[0]
    order = sorted(range(len(documents)), key=lambda i: -scores[i])
    return [(i, float(scores[i])) for i in order]


def _pair_scores(model: TaskModel, logits: np.ndarray) -> np.ndarray:
    """One logit: the CrossEncoder's own score of it (``CrossEncoder.predict``'s: sigmoid, tanh or
    the logit, as recorded at export; the logit where nothing was recorded); two: the probability
    of the second label."""
    if logits.shape[-1] == 1:
        return cross_encoder_scores(logits[:, 0], model.spec)
    if logits.shape[-1] == 2:
        return softmax(logits)[:, 1]
    raise LlmcError(
        f"{model.where}: a text-classification model with {logits.shape[-1]} labels is not a reranker "
        "(a cross-encoder has one score, or two labels); classify with it "
        "(runner.classify, or `llmc predict` without --question)"
    )
