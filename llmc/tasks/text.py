"""Tokenizing for the task runtime: the artifact's fast tokenizer (``tokenizer.json``, through the
``tokenizers`` library: no transformers), with character offsets for spans.

The tokenizer file's own padding is turned off (batches are padded by ``llmc.tasks.batching``,
each to its longest row) and its truncation replaced: a text (or text pair, longest first) is cut
to the model's ``max_length``. A question and a long context become several windows, the way
transformers' question-answering pipeline cuts them (:meth:`TextEncoder.windows`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError

# transformers' question-answering pipeline: windows of at most 384 tokens, overlapping by
# half a window (at most 128 tokens).
QA_MAX_LENGTH = 384
QA_STRIDE = 128


class TextEncoder:
    """Encodes texts, text pairs and (question, context) windows into ``tokenizers`` encodings."""

    def __init__(self, tokenizer: Any, max_length: int | None, special: dict[str, str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.special = special or {}  # e.g. {"mask_token": "[MASK]"}
        tokenizer.no_padding()

    @classmethod
    def load(cls, artifact: Path, max_length: int | None) -> TextEncoder:
        from llmc.model.text import load_tokenizer

        return cls(load_tokenizer(artifact), max_length, special_tokens(artifact))

    def _truncate(self, max_length: int | None, *, strategy: str = "longest_first", stride: int = 0) -> None:
        if max_length is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(max_length, stride=stride, strategy=strategy)

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[Any]:
        """One encoding per text (with its pair's text when ``pairs`` is given), truncated."""
        self._truncate(self.max_length)
        if pairs is None:
            return self.tokenizer.encode_batch(list(texts))
        return self.tokenizer.encode_batch(list(zip(texts, pairs, strict=True)))

    def windows(self, question: str, context: str) -> list[Any]:
        """(question, context) encodings covering the whole context: windows of at most
        ``min(max_length, 384)`` tokens whose contexts overlap by ``min(window // 2, 128)`` tokens
        (only the context is cut; transformers' question-answering pipeline's windows)."""
        window = min(self.max_length or QA_MAX_LENGTH, QA_MAX_LENGTH)
        stride = min(window // 2, QA_STRIDE)
        try:
            self._truncate(window, strategy="only_second", stride=stride)
            first = self.tokenizer.encode(question, context)
        except Exception as exc:  # tokenizers raises plain Exception when the question leaves no room
            from llmc.errors import first_line

            raise LlmcError(f"the question does not fit in a {window}-token window ({first_line(exc)}); shorten it") from None
        return [first, *first.overflowing]

    def token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id)

    def token_id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def unk_id(self) -> int | None:
        return self.token_id(getattr(self.tokenizer.model, "unk_token", None))

    @property
    def mask_token(self) -> str | None:
        return self.special.get("mask_token")

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special)

    def tokens_to_string(self, tokens: list[str]) -> str:
        """Tokens joined as the tokenizer's decoder joins them (WordPiece: ``##`` pieces glued on)."""
        decoder = self.tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)


def special_tokens(artifact: Path) -> dict[str, str]:
    """The named special tokens (``mask_token``, ``cls_token``...) of the tokenizer's
    ``special_tokens_map.json``, else its ``tokenizer_config.json`` ({} without either)."""
    found: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the map wins
        try:
            data = json.loads((artifact / name).read_text())
        except (OSError, ValueError):
            continue
        for key, value in data.items() if isinstance(data, dict) else ():
            value = value.get("content") if isinstance(value, dict) else value
            if key.endswith("_token") and isinstance(value, str):
                found[key] = value
    return found
