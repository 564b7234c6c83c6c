"""``answer``: the span of a context that answers a question, as transformers' question-answering
pipeline finds it (its defaults: one answer, at most 15 tokens, no empty answer).

The question and context are encoded together in windows over the context (``TextEncoder.windows``).
In each window, positions outside the context (the question, special tokens, but the leading
``[CLS]``) get a logit of -10000; start and end logits go through a softmax each; a span's score is
``p(start) * p(end)`` over spans with ``start <= end < start + max_answer_len`` inside the context
(``[CLS]`` itself never starts or ends one). A span's characters run from the start of the word
holding its first token to the end of the word holding its last. Each window's best span is a
candidate; candidates with the same text (case aside) are one answer whose score is their sum, at
the first one's characters (the pipeline's ``get_answer``: a name a long document repeats is found
in several windows); the answer with the highest score wins.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmc.errors import LlmcError
from llmc.spec.task import QUESTION_ANSWERING
from llmc.tasks.model import TaskModel
from llmc.tasks.scores import softmax

MASKED = -10000.0
CONTEXT = 1  # the context's sequence index in a (question, context) encoding


def answer(
    model: TaskModel, question: str, context: str, *, max_answer_len: int = 15, batch_size: int = 32
) -> dict[str, Any]:
    """``{"answer", "score", "start", "end"}``: the best span (characters of ``context``)."""
    model.require("answer questions", QUESTION_ANSWERING)
    if not question.strip() or not context.strip():
        raise LlmcError("answer needs a question and a context that are not empty")
    if max_answer_len < 1:
        raise LlmcError(f"max_answer_len must be at least 1, not {max_answer_len}")
    windows = model.tokenizer.windows(question, context)
    rows = model.rows(windows, batch_size)
    found: dict[str, dict[str, Any]] = {}  # by lower-cased text, in the order first found
    for encoding, row in zip(windows, rows, strict=True):
        span = best_span(encoding, row["start_logits"], row["end_logits"], max_answer_len)
        if span is None:
            continue
        start, end = _characters(encoding, span[0], span[1])
        text = context[start:end]
        if text.lower() in found:
            found[text.lower()]["score"] += span[2]
        else:
            found[text.lower()] = {"answer": text, "score": span[2], "start": start, "end": end}
    if not found:
        raise LlmcError("the context has no tokens to answer from; give a longer context")
    return max(found.values(), key=lambda a: a["score"])  # the first of equal scores, as a stable sort


def candidates(encoding: Any) -> np.ndarray:
    """Whether each position may hold the answer: a context token, or the leading special token
    (``[CLS]``: kept in the softmax as transformers keeps it)."""
    allowed = np.array([sequence == CONTEXT for sequence in encoding.sequence_ids])
    if len(allowed) and encoding.special_tokens_mask[0]:
        allowed |= np.array(encoding.ids) == encoding.ids[0]
    return allowed


def best_span(encoding: Any, start_logits: np.ndarray, end_logits: np.ndarray, max_len: int) -> tuple[int, int, float] | None:
    """(first token, last token, score) of the best span of one window, or None."""
    allowed = candidates(encoding)
    start = softmax(np.where(allowed, start_logits, MASKED))
    end = softmax(np.where(allowed, end_logits, MASKED))
    start[0] = end[0] = 0.0
    scores = np.tril(np.triu(np.outer(start, end)), max_len - 1)
    first, last = np.unravel_index(int(np.argmax(scores)), scores.shape)
    if not (allowed[first] and allowed[last]):
        return None
    return int(first), int(last), float(scores[first, last])


def _characters(encoding: Any, first: int, last: int) -> tuple[int, int]:
    """The span's characters in the context, widened to whole words (offsets where a token has no word)."""
    start_word, end_word = encoding.token_to_word(first), encoding.token_to_word(last)
    if start_word is None or end_word is None:
        return encoding.offsets[first][0], encoding.offsets[last][1]
    return (encoding.word_to_chars(start_word, CONTEXT)[0], encoding.word_to_chars(end_word, CONTEXT)[1])
