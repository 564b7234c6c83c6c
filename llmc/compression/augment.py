"""Variants of a batch of text for distillation: the teacher labels each variant anew, so the
student sees more of the teacher's function than the user's few sentences show.

Every variant keeps a row's first and last real token (``[CLS]``/``[SEP]``, or a decoder's
first token) and its padding (right padding); only inner real tokens change:
- ``replace``: a fraction of them replaced by tokens drawn from the batch's own inner tokens;
- ``mask``: a fraction of them replaced by the tokenizer's mask token (BERT's pre-training noise);
- ``shuffle``: one span of each row (up to :data:`SPAN_FRACTION` of its inner tokens) permuted;
- ``vocabulary``: a fraction of them replaced by tokens drawn from the whole vocabulary (its
  special tokens left out), so the student also sees words the user's text never holds; the
  teacher's answers on them keep the student close to the original beyond the user's domain.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RATE, SPAN_FRACTION, VOCABULARY_RATE = 0.15, 0.3, 0.3


def inner_tokens(batch: dict[str, Any]) -> Any:
    """Boolean [rows, tokens]: the real tokens that are neither the first nor the last of their row."""
    import torch

    mask = batch["attention_mask"].bool()
    inner = mask.clone()
    inner[:, 0] = False
    inner[torch.arange(len(mask)), mask.sum(1) - 1] = False
    return inner


def replace_tokens(batch: dict[str, Any], rng: np.random.Generator, rate: float = RATE) -> dict[str, Any]:
    """``batch`` with ``rate`` of its inner real tokens replaced by tokens drawn from the batch's
    own inner tokens."""
    import torch

    ids, inner = batch["input_ids"].clone(), inner_tokens(batch)
    pool = ids[inner]
    chosen = inner & torch.from_numpy(rng.random(tuple(ids.shape)) < rate)
    if pool.numel() and chosen.any():
        ids[chosen] = pool[torch.from_numpy(rng.integers(0, pool.numel(), int(chosen.sum())))]
    return {**batch, "input_ids": ids}


def mask_tokens(batch: dict[str, Any], rng: np.random.Generator, mask_id: int, rate: float = RATE) -> dict[str, Any]:
    """``batch`` with ``rate`` of its inner real tokens replaced by ``mask_id``."""
    import torch

    ids, inner = batch["input_ids"].clone(), inner_tokens(batch)
    ids[inner & torch.from_numpy(rng.random(tuple(ids.shape)) < rate)] = mask_id
    return {**batch, "input_ids": ids}


def shuffle_span(batch: dict[str, Any], rng: np.random.Generator, fraction: float = SPAN_FRACTION) -> dict[str, Any]:
    """``batch`` with one span of each row's inner tokens (2 tokens to ``fraction`` of them) in a
    random order."""
    import torch

    ids = batch["input_ids"].clone()
    inner = inner_tokens(batch).sum(1).tolist()
    for row, count in enumerate(inner):
        width = max(2, int(count * fraction))
        if count < 2:
            continue
        width = min(width, count)
        start = 1 + int(rng.integers(0, count - width + 1))
        order = torch.from_numpy(rng.permutation(width)) + start
        ids[row, start : start + width] = ids[row, order]
    return {**batch, "input_ids": ids}


def vocabulary_tokens(batch: dict[str, Any], rng: np.random.Generator, vocabulary: np.ndarray,
                      rate: float = VOCABULARY_RATE) -> dict[str, Any]:
    """``batch`` with ``rate`` of its inner real tokens replaced by ids drawn from ``vocabulary``."""
    import torch

    ids, inner = batch["input_ids"].clone(), inner_tokens(batch)
    chosen = inner & torch.from_numpy(rng.random(tuple(ids.shape)) < rate)
    if chosen.any():
        ids[chosen] = torch.from_numpy(rng.choice(vocabulary, int(chosen.sum()))).to(ids.dtype)
    return {**batch, "input_ids": ids}


def ordinary_ids(tokenizer: Any) -> np.ndarray:
    """The tokenizer's ids that are neither special (``[CLS]``, ``<s>``...) nor reserved
    (``[unused12]``, ``<extra_id_3>``-style placeholders)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = [i for token, i in tokenizer.get_vocab().items()
           if i not in special and not (token.startswith(("[", "<")) and token.endswith(("]", ">")))]
    return np.array(sorted(ids), dtype=np.int64)


def variant(batch: dict[str, Any], kind: str, rng: np.random.Generator, mask_id: int | None = None,
            vocabulary: np.ndarray | None = None) -> dict[str, Any]:
    """One variant of ``batch`` (see the module)."""
    if kind == "replace":
        return replace_tokens(batch, rng)
    if kind == "mask":
        if mask_id is None:
            raise ValueError("mask augmentation needs the tokenizer's mask token id")
        return mask_tokens(batch, rng, mask_id)
    if kind == "shuffle":
        return shuffle_span(batch, rng)
    if kind == "vocabulary":
        if vocabulary is None or not len(vocabulary):
            raise ValueError("vocabulary augmentation needs the tokenizer's ordinary token ids")
        return vocabulary_tokens(batch, rng, vocabulary)
    raise ValueError(f"unknown augmentation {kind!r}")
