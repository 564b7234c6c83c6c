"""``fill_mask``: the likeliest tokens at each mask token of a text, as transformers'
``pipeline("fill-mask")`` gives them: the softmax of the logits at the mask's position, the
``top_k`` best with their token, its text and the text with the mask replaced by it (special
tokens dropped when the text has one mask, kept when it has several)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmc.errors import LlmcError
from llmc.spec.task import FILL_MASK
from llmc.tasks.model import TaskModel
from llmc.tasks.scores import softmax

Candidate = dict[str, Any]  # score, token, token_str, sequence


def fill_mask(model: TaskModel, texts: Sequence[str], *, top_k: int = 5, batch_size: int = 8) -> list[list[list[Candidate]]]:
    """Per text, per mask token (in text order), the ``top_k`` best candidates, best first.
    Batches are small by default: the logits are [batch, sequence, vocabulary]."""
    model.require("fill masks", FILL_MASK)
    if top_k < 1:
        raise LlmcError(f"top_k must be at least 1, not {top_k}")
    tokenizer = model.tokenizer
    mask_id = tokenizer.token_id(tokenizer.mask_token)
    if mask_id is None:
        raise LlmcError(f"{model.where}: its tokenizer names no mask token (special_tokens_map.json); re-export it")
    encodings = tokenizer.encode(texts)
    for number, encoding in enumerate(encodings, 1):
        if mask_id not in encoding.ids:
            raise LlmcError(f"text {number} has no {tokenizer.mask_token}; put it where the token to fill goes")
    rows = model.rows(encodings, batch_size)
    return [_fill(model, np.array(e.ids), row["logits"], mask_id, top_k) for e, row in zip(encodings, rows, strict=True)]


def _sequence(model: TaskModel, ids: np.ndarray, single: bool) -> str:
    pad_id = model.tokenizer.token_id(model.tokenizer.special.get("pad_token"))
    kept = [int(i) for i in ids if i != pad_id]  # transformers drops pad tokens (a pad candidate too)
    return model.tokenizer.decode(kept, skip_special=single)


def _fill(model: TaskModel, ids: np.ndarray, logits: np.ndarray, mask_id: int, top_k: int) -> list[list[Candidate]]:
    positions = np.flatnonzero(ids == mask_id)
    single = len(positions) == 1
    result = []
    for position in positions:
        probs = softmax(logits[position].astype(np.float32))
        best = np.argsort(-probs, kind="stable")[:top_k]
        candidates = []
        for token in best:
            filled = ids.copy()
            filled[position] = token
            candidates.append({
                "score": float(probs[token]), "token": int(token),
                "token_str": model.tokenizer.decode([int(token)], skip_special=False),
                "sequence": _sequence(model, filled, single),
            })
        result.append(candidates)
    return result
