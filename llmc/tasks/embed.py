"""``embed``: one vector per text.

A sentence-embedding model's graph already pools (and normalises, if its model does): its
``sentence_embedding`` output is returned as is. A feature-extraction model gives token states
(``last_hidden_state``); they are mean-pooled over the attention mask (sentence-transformers'
``mean`` pooling, without normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmc.spec.task import FEATURE_EXTRACTION, SENTENCE_EMBEDDING
from llmc.tasks.model import TaskModel


def mean_pool(states: np.ndarray) -> np.ndarray:
    """The mean of one text's token states ([tokens, hidden], padding already cut off)."""
    return states.astype(np.float32).sum(axis=0) / max(states.shape[0], 1e-9)


def embed(model: TaskModel, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """[len(texts), dimension] float32 vectors, in input order."""
    model.require("embed", SENTENCE_EMBEDDING, FEATURE_EXTRACTION)
    return embed_encodings(model, model.tokenizer.encode(texts), batch_size)


def embed_encodings(model: TaskModel, encodings: Sequence[Any], batch_size: int = 32) -> np.ndarray:
    """:func:`embed` of texts already tokenized (``model.tokenizer.encode``; a server counts
    their tokens)."""
    spec = model.require("embed", SENTENCE_EMBEDDING, FEATURE_EXTRACTION)
    if not encodings:
        return np.zeros((0, spec.dimension or 0), dtype=np.float32)
    rows = model.rows(encodings, batch_size)
    if spec.task is SENTENCE_EMBEDDING:
        return np.stack([row["sentence_embedding"] for row in rows]).astype(np.float32)
    return np.stack([mean_pool(row["last_hidden_state"]) for row in rows])


def cosine(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """[len(queries), len(documents)] cosine similarities."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    return unit(queries) @ unit(documents).T
