"""``extract``: the entities a token-classification model finds, as transformers'
``pipeline("token-classification", aggregation_strategy="simple")`` gives them.

Each token (special tokens skipped) takes its best label and that label's softmax score; adjacent
tokens join one entity while their tag (the label without its ``B-``/``I-`` prefix) stays the same
and the next is not a ``B-``; an entity's score is its tokens' mean, its word their text as the
tokenizer's decoder joins them (``##`` continuations glued on), its ``start``/``end`` the character
span in the text; entities labelled ``O`` are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmc.spec.task import TOKEN_CLASSIFICATION
from llmc.tasks.model import TaskModel
from llmc.tasks.scores import softmax

Entity = dict[str, Any]  # entity_group, score, word, start, end
IGNORED = ("O",)


def extract(model: TaskModel, texts: Sequence[str], *, batch_size: int = 32) -> list[list[Entity]]:
    """Per text, its entities in text order."""
    model.require("extract entities", TOKEN_CLASSIFICATION)
    encodings = model.tokenizer.encode(texts)
    rows = model.rows(encodings, batch_size)
    results = []
    for text, encoding, row in zip(texts, encodings, rows, strict=True):
        logits = row["logits"]
        tokens = _tokens(model, text, encoding, softmax(logits), model.labels(logits.shape[-1]))
        results.append([e for e in _group(model, tokens) if e["entity_group"] not in IGNORED])
    return results


def _tokens(model: TaskModel, text: str, encoding: Any, scores: np.ndarray, labels: list[str]) -> list[Entity]:
    """Each non-special token with its best label, score, token text and character span."""
    unk = model.tokenizer.unk_id
    tokens = []
    for index, token_id in enumerate(encoding.ids):
        if encoding.special_tokens_mask[index]:
            continue
        start, end = encoding.offsets[index]
        word = text[start:end] if token_id == unk else model.tokenizer.token(token_id)
        best = int(np.argmax(scores[index]))
        tokens.append({"entity": labels[best], "score": float(scores[index, best]), "word": word,
                       "start": start, "end": end})
    return tokens


def _tag(label: str) -> tuple[str, str]:
    """(``B`` or ``I``, the tag): a label without a ``B-``/``I-`` prefix continues (``I``)."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def _group(model: TaskModel, tokens: list[Entity]) -> list[Entity]:
    groups: list[list[Entity]] = []
    for token in tokens:
        bi, tag = _tag(token["entity"])
        if groups and bi != "B" and tag == _tag(groups[-1][-1]["entity"])[1]:
            groups[-1].append(token)
        else:
            groups.append([token])
    return [_entity(model, group) for group in groups]


def _entity(model: TaskModel, group: list[Entity]) -> Entity:
    return {
        "entity_group": group[0]["entity"].split("-", 1)[-1],
        "score": float(np.mean([t["score"] for t in group])),
        "word": model.tokenizer.tokens_to_string([t["word"] for t in group]),
        "start": group[0]["start"],
        "end": group[-1]["end"],
    }
