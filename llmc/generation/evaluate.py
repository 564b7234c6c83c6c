"""Perplexity of a token sequence over sliding windows of full-sequence logits.

Each window of at most ``max_length`` tokens is one prefill (``Runner.logits``); windows start
every ``stride`` tokens and score only the tokens the previous window did not, so every token
after the first is scored once, with up to ``max_length - stride`` tokens of context before it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import numpy as np

from llmc.errors import LlmcError
from llmc.model.compare import token_nll


@dataclasses.dataclass
class Perplexity:
    perplexity: float
    nll: float
    tokens: int
    windows: int


def perplexity(
    logits_of: Callable[[np.ndarray], np.ndarray],
    ids: Sequence[int],
    max_length: int = 512,
    stride: Optional[int] = None,
) -> Perplexity:
    """exp(mean negative log-likelihood) of ``ids[1:]``; ``logits_of`` maps [sequence] ids to
    [sequence, vocab] logits."""
    stride = stride or max_length
    if max_length < 2 or not 0 < stride <= max_length:
        raise LlmcError(f"--max-length {max_length} / --stride {stride}: need max-length >= 2, 0 < stride <= max-length")
    tokens = np.asarray(ids, dtype=np.int64)
    if tokens.size < 2:
        raise LlmcError(f"the text is {tokens.size} token(s); perplexity needs at least 2")
    total, count, windows, scored_to = 0.0, 0, 0, 1  # token 0 has nothing before it
    for begin in range(0, tokens.size - 1, stride):
        end = min(begin + max_length, tokens.size)
        window = tokens[begin:end]
        nll = token_nll(logits_of(window), window)  # nll[j] scores token begin+j+1
        new = nll[max(scored_to - begin - 1, 0) :]  # stride == max_length skips token `begin`
        total += float(new.sum())
        count += new.size
        scored_to, windows = end, windows + 1
        if end == tokens.size:
            break
    return Perplexity(math.exp(total / count), total / count, count, windows)
