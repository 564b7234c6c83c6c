"""The task methods of the runner ``llmc.load`` returns: ``embed``, ``classify``, ``rerank``,
``extract``, ``answer`` and ``fill_mask``. Each reads the artifact's task spec (once) and refuses, in one line,
a task the artifact's model was not exported for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmc.errors import LlmcError

Texts = str | Sequence[str]


def as_texts(texts: Any, name: str) -> list[str]:
    """A text or a sequence of texts as a list, else one line naming the argument."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, Sequence) and all(isinstance(t, str) for t in texts):
        return list(texts)
    raise LlmcError(f"{name}: give a text or a list of texts (strings)")


def as_pairs(texts: Any, text_pair: Any, pairs: Any) -> tuple[list[str], list[str] | None]:
    """(texts, second texts or None) from ``texts`` [+ ``text_pair``: one per text, or one text on
    either side paired with every text of the other] or ``pairs`` ([(a, b), ...])."""
    if pairs is not None:
        if texts is not None or text_pair is not None:
            raise LlmcError("classify: give pairs=[(a, b), ...] or texts (with text_pair), not both")
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise LlmcError("pairs: give a list of (text, text_pair) tuples")
        return as_texts([p[0] for p in pairs], "pairs"), as_texts([p[1] for p in pairs], "pairs")
    if texts is None:
        raise LlmcError("classify: give texts (or pairs=[(a, b), ...])")
    first = as_texts(texts, "texts")
    if text_pair is None:
        return first, None
    second = as_texts(text_pair, "text_pair")
    if len(second) == 1:
        second = second * len(first)
    elif len(first) == 1:
        first = first * len(second)
    if len(second) != len(first):
        raise LlmcError(f"text_pair: give one text, or one per text ({len(first)}), not {len(second)}")
    return first, second


class TaskMethods:
    """Mixed into the runner ``llmc.load`` returns (which provides ``artifact``, ``session``,
    ``input_names``, ``output_names`` and ``run``)."""

    @property
    def task(self) -> Any:
        """The artifact's :class:`llmc.spec.task.TaskSpec` (None: exported without one)."""
        return self._task_model().spec

    def _task_model(self) -> Any:
        model = getattr(self, "_llmc_task_model", None)
        if model is None:
            from llmc.tasks.model import task_model

            model = self._llmc_task_model = task_model(self)
        return model

    def embed(self, texts: Texts, *, batch_size: int = 32) -> np.ndarray:
        """[N, D] float32: a sentence-embedding model's vectors (pooled and normalised in its graph),
        or a feature-extraction model's token states mean-pooled over the attention mask."""
        from llmc.tasks.embed import embed

        return embed(self._task_model(), as_texts(texts, "texts"), batch_size)

    def classify(
        self, texts: Texts | None = None, text_pair: Texts | None = None, *, pairs: Any = None,
        top_k: int | None = None, batch_size: int = 32,
    ) -> list[list[tuple[str, float]]]:
        """Per text (or text pair), ``(label, score)`` best first (all labels, or the ``top_k``
        best): softmax for single-label models, sigmoid for multi-label ones (or one label), the raw
        value for regression. Pairs: ``text_pair`` (one per text; one text on either side pairs
        with every text of the other) or ``pairs=[(a, b), ...]``."""
        from llmc.tasks.classify import classify

        first, second = as_pairs(texts, text_pair, pairs)
        return classify(self._task_model(), first, second, top_k=top_k, batch_size=batch_size)

    def rerank(self, query: str, documents: Sequence[str], *, batch_size: int = 32) -> list[tuple[int, float]]:
        """``(index in documents, score)``, most relevant first: a cross-encoder's score of (query,
        document), or the cosine of a sentence-embedding model's vectors."""
        from llmc.tasks.classify import rerank

        if not isinstance(query, str):
            raise LlmcError("rerank: the query is one text (a string)")
        return rerank(self._task_model(), query, as_texts(documents, "documents"), batch_size=batch_size)

    def extract(self, texts: Texts, *, batch_size: int = 32) -> list[list[dict[str, Any]]]:
        """Per text, its entities: ``entity_group``, ``score``, ``word``, ``start``, ``end``
        (characters), merged as transformers' token-classification pipeline's "simple" aggregation."""
        from llmc.tasks.extract import extract

        return extract(self._task_model(), as_texts(texts, "texts"), batch_size=batch_size)

    def fill_mask(self, texts: Texts, *, top_k: int = 5, batch_size: int = 8) -> list[list[list[dict[str, Any]]]]:
        """Per text, per mask token, the ``top_k`` likeliest tokens: ``score``, ``token``,
        ``token_str``, ``sequence`` (transformers' fill-mask pipeline's candidates)."""
        from llmc.tasks.fill import fill_mask

        return fill_mask(self._task_model(), as_texts(texts, "texts"), top_k=top_k, batch_size=batch_size)

    def answer(self, question: str, context: str, *, max_answer_len: int = 15) -> dict[str, Any]:
        """``{"answer", "score", "start", "end"}``: the span of ``context`` that best answers
        ``question`` (transformers' question-answering pipeline's choice)."""
        from llmc.tasks.answer import answer

        if not isinstance(question, str) or not isinstance(context, str):
            raise LlmcError("answer: the question and the context are texts (strings)")
        return answer(self._task_model(), question, context, max_answer_len=max_answer_len)
