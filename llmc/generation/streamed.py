"""What of a text being generated a stream may hand out yet, and which tokens' logprobs go with it.

One rule for every stream (a continuous-batching :class:`~llmc.generation.sequence.Sequence`, and
``Runner.generate``'s rows in ``llmc.generation.loop``), so a streamed answer joins to the answer
given whole:

* while the text is still growing, its end that a stop string may yet complete is held back (a
  stop string never reaches the caller, streamed or not), and so is a partial multi-byte
  character (it decodes to U+FFFD until its last byte arrives);
* once generation has finished, the rest of the final text goes, whatever it ends with (an answer
  cut by its length mid-character ends in U+FFFD both ways);
* a piece carries the logprobs of the tokens whose text starts before the piece's end; a token
  half in the text that a stop string cut counts (its characters are in the answer), the
  tokens of the stop string after it do not, nor an end-of-sequence token (it adds no text).
"""

from __future__ import annotations

from typing import Any

from llmc.model.text import decode

PARTIAL = "\ufffd"  # what a partial multi-byte character decodes to


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may be the start of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                longest = max(longest, size)
                break
    return longest


def ready(text: str, stops: tuple[str, ...], finished: bool) -> str:
    """The part of ``text`` (already cut before any stop string found) a stream may have handed
    out by now."""
    if finished:
        return text
    whole = text.rstrip(PARTIAL)  # before the stop check: a stop string may begin with the split character
    return whole[: len(whole) - held_back(whole, stops)]


def covering(tokenizer: Any, tokens: list[int], length: int) -> int:
    """How many of ``tokens`` (from the first) have text starting before character ``length``: a
    token that ends a split character starts where that character does (the text before it ends in
    U+FFFD, one or one per byte, which is not counted)."""
    count = len(tokens)
    while count and len(decode(tokenizer, tokens[: count - 1]).rstrip(PARTIAL)) >= length:
        count -= 1
    return count


def piece(text: str, emitted: str) -> str:
    """What of ``text`` follows what was ``emitted`` ("" when nothing new)."""
    return text[len(emitted) :] if len(text) > len(emitted) and text.startswith(emitted) else ""
