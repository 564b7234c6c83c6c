"""Choosing the next token from last-position logits: greedy, temperature, top-k, top-p.

Sampling draws from one seeded ``numpy.random.Generator`` per generation, so the same seed and
settings give the same tokens. Temperature 0 is greedy (argmax) and draws nothing.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from llmc.errors import LlmcError


@dataclasses.dataclass(frozen=True)
class Sampling:
    """``temperature`` 0: greedy; ``top_k`` 0: no cut; ``top_p`` 1.0: no nucleus cut."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise LlmcError(f"--temperature {self.temperature}: must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise LlmcError(f"--top-k {self.top_k}: must be >= 0 (0 keeps every token)")
        if not 0 < self.top_p <= 1:
            raise LlmcError(f"--top-p {self.top_p}: must be in (0, 1] (1 keeps every token)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def choose(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    """The next token of each row of ``logits`` [batch, vocab], as int64 [batch]."""
    if sampling.greedy:
        return np.argmax(logits, axis=-1).astype(np.int64)
    scores = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k:
        scores = _top_k(scores, sampling.top_k)
    probs = _softmax(scores)
    if sampling.top_p < 1:
        probs = _top_p(probs, sampling.top_p)
    cumulative = np.cumsum(probs, axis=-1)
    draws = rng.random((probs.shape[0], 1)) * cumulative[:, -1:]
    picks = (cumulative <= draws).sum(axis=-1)
    return np.minimum(picks, probs.shape[-1] - 1).astype(np.int64)


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    if k >= scores.shape[-1]:
        return scores
    kth = np.partition(scores, -k, axis=-1)[:, -k][:, None]
    return np.where(scores < kth, -np.inf, scores)


def _top_p(probs: np.ndarray, p: float) -> np.ndarray:
    """Keep the most probable tokens whose mass first reaches ``p`` (the top one always)."""
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    before = np.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass of the tokens ranked above
    keep_sorted = before < p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, probs, 0.0)
