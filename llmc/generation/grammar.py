"""Grammar-constrained decoding for the OpenAI ``response_format`` field, through llguidance.

``{"type": "text"}`` (or no field) constrains nothing; ``{"type": "json_object"}`` allows any JSON
object; ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}``
allows the JSON values the schema accepts, as llguidance enforces it. :func:`response_constraint`
turns the field into a :class:`Constraint`, one sequence's state: the tokens that may come next,
as a mask over the logits, and the token chosen, consumed.

Why llguidance (not a JSON parser of our own, nor outlines-core): it compiles a JSON schema to a
grammar lazily, so a new schema costs about a millisecond rather than an index over the
vocabulary, and it computes each step's mask by walking a trie of the tokenizer's token bytes
(SmolLM2's 49k vocabulary, 2-core CPU: median 0.02 ms a step, p99 0.12 ms, a few ms at worst when
a new lexer state is built); it reads ``tokenizer.json`` itself (no ``transformers``),
marks special tokens so no grammar produces them, and is the engine vLLM, SGLang and llama.cpp
use for structured output. It refuses, with a reason, the schema features it cannot enforce.

Layout: JSON is constrained to one space after ``,`` and ``:`` and no other whitespace (the layout
``json.dumps`` writes, which models see most), so no model can loop on blanks; a schema's own
``"x-guidance"`` options override that. ``strict: true`` refuses schema keywords llguidance cannot
enforce; without it they are ignored, as OpenAI's non-strict mode does not promise them either.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np

from llmc.errors import LlmcError, first_line

TYPES = ("text", "json_object", "json_schema")
_LAYOUT = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
_ANY_OBJECT = '{"type": "object"}'


class Constraint:
    """One sequence's grammar state, over logits ``vocab_size`` wide.

    Contract: call :meth:`allowed` before each step and choose among the tokens it allows, then
    :meth:`advance` with the token chosen. Ids past the tokenizer's vocabulary are never allowed;
    once :attr:`done` only the EOS ids are (an EOS is accepted and changes nothing). A token it
    did not allow raises ValueError and ends the constraint (done, only EOS allowed). Not
    thread-safe: one Constraint belongs to one sequence.
    """

    def __init__(self, matcher: Any, vocab_size: int, eos: frozenset[int], words: int) -> None:
        from llguidance.numpy import allocate_token_bitmask

        self._matcher = matcher
        self._vocab_size = vocab_size
        self._eos = eos
        self._eos_ids = np.array(sorted(e for e in eos if e < vocab_size), dtype=np.int64)
        self._words = min(words, vocab_size)  # the ids the tokenizer knows, within the logits
        self._bitmask = allocate_token_bitmask(1, words)
        self._ended = False

    @property
    def done(self) -> bool:
        """Whether the grammar is complete: a full value was produced (or an EOS ended it)."""
        return self._ended or self._matcher.is_stopped()

    def allowed(self) -> np.ndarray:
        """The tokens that may come next: bool ``[vocab_size]``, at least one True."""
        out = np.zeros(self._vocab_size, dtype=bool)
        if self.done:
            out[self._eos_ids] = True
            return out
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self._matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little", count=self._words)
        out[: self._words] = bits.view(bool)
        return out

    def advance(self, token: int) -> None:
        """Consume ``token``, which :meth:`allowed` allowed; any other raises ValueError (the
        caller did not mask: a bug, not the user's input)."""
        token = int(token)
        if token in self._eos and self.done:
            self._ended = True
            return
        if self.done:
            reason = "the grammar is complete: only EOS may follow"
        elif token >= self._words:
            reason = "past the tokenizer's vocabulary"
        elif self._matcher.consume_token(token):
            self._ended = token in self._eos
            return
        else:
            reason = first_line(self._matcher.get_error())
        self._ended = True
        raise ValueError(f"token {token} is not allowed here ({reason}); choose among allowed()")


def response_constraint(
    response_format: Any, tokenizer_path: Path, vocab_size: int, eos: set[int]
) -> Optional[Constraint]:
    """The constraint ``response_format`` asks for, for a model whose logits are ``vocab_size``
    wide, tokenized by ``tokenizer_path`` (a ``tokenizer.json``), ending on any id of ``eos``.

    None when the field is absent or ``{"type": "text"}``. Raises :class:`LlmcError`, one line
    naming the field and the fix, for anything invalid, a schema llguidance refuses included (its
    reason quoted). The tokenizer is built once per file and a schema compiled once (cached);
    each call then copies the compiled matcher, which is cheap.
    """
    request = _request(response_format)
    if request is None:
        return None
    schema, strict = request
    if not eos:
        raise LlmcError(
            "response_format: the model names no end-of-sequence token (eos_token_id in "
            "generation_config.json), so a constrained answer could not end; add one and rebuild"
        )
    try:  # the file's identity is part of the cache key: a rebuilt artifact is read again
        stat = Path(tokenizer_path).stat()
    except OSError as exc:
        raise LlmcError(
            f"response_format: the tokenizer {tokenizer_path} cannot be read ({exc.strerror}); "
            "build the artifact from `llmc export` output (which carries tokenizer.json)"
        ) from None
    key = (str(tokenizer_path), stat.st_mtime_ns, stat.st_size, tuple(sorted(eos)))
    prototype = _compiled(key, schema, not strict)
    return Constraint(prototype.deep_copy(), vocab_size, frozenset(eos), _tokenizer(key).vocab_size)


def _request(response_format: Any) -> Optional[tuple[str, bool]]:
    """``(schema as JSON text, strict)`` for a JSON ``response_format``, None for text/absent."""
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise LlmcError(
            f"response_format must be an object such as {{\"type\": \"json_object\"}}, "
            f"not {type(response_format).__name__}"
        )
    kind = response_format.get("type")
    if kind not in TYPES:
        raise LlmcError(f"response_format.type {kind!r}: unknown; use one of {', '.join(TYPES)}")
    if kind == "text":
        return None
    if kind == "json_object":
        return _ANY_OBJECT, False
    spec = response_format.get("json_schema")
    if not isinstance(spec, Mapping):
        raise LlmcError(
            'response_format.json_schema: missing or not an object; pass {"name": ..., "schema": {...}}'
        )
    schema, strict = spec.get("schema"), spec.get("strict")
    if not isinstance(schema, Mapping):
        raise LlmcError(
            "response_format.json_schema.schema: missing or not a JSON schema object; pass the schema "
            'the answer must match, e.g. {"type": "object", "properties": {...}}'
        )
    if strict is not None and not isinstance(strict, bool):
        raise LlmcError(f"response_format.json_schema.strict {strict!r}: must be true or false")
    try:  # keys keep their order: llguidance writes properties in the schema's order
        return json.dumps(schema), bool(strict)
    except (TypeError, ValueError) as exc:
        raise LlmcError(f"response_format.json_schema.schema: not JSON ({exc}); pass a JSON object") from None


_Key = tuple[str, int, int, tuple[int, ...]]  # a tokenizer.json's path, mtime, size; the EOS ids


@functools.lru_cache(maxsize=8)
def _tokenizer(key: _Key) -> Any:
    """llguidance's view of a tokenizer.json (slow to build: 0.36 s for SmolLM2's 49k tokens)."""
    path, _, _, eos = key
    try:
        import llguidance
    except ImportError:
        raise LlmcError(
            "response_format needs the llguidance package: pip install 'llmc[serve]' (or llguidance)"
        ) from None
    try:
        text = Path(path).read_text(encoding="utf-8")
        return llguidance.LLTokenizer(text, eos_token=list(eos))
    except Exception as exc:  # OSError, or llguidance's ValueError for a tokenizer it cannot read
        raise LlmcError(
            f"response_format: {path} cannot be used for constrained decoding ({first_line(exc, 200)}); "
            "rebuild the artifact from `llmc export` output, or drop response_format"
        ) from None


@functools.lru_cache(maxsize=64)
def _compiled(key: _Key, schema: str, lenient: bool) -> Any:
    """A matcher for ``schema`` in its initial state, never advanced: requests copy it."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={**_LAYOUT, "lenient": lenient}
        )
    except ValueError as exc:
        raise _refused(exc) from None
    matcher = llguidance.LLMatcher(_tokenizer(key), grammar, log_level=0)
    if matcher.is_error():
        raise _refused(matcher.get_error())
    return matcher


def _refused(reason: object) -> LlmcError:
    """The one-line error for a schema llguidance refuses; its reason (which may span lines, as a
    regex error's caret does) collapsed onto one line and shortened."""
    short = " ".join(str(reason).split())
    short = short if len(short) <= 200 else short[:197] + "..."
    return LlmcError(
        f"response_format.json_schema.schema: llguidance cannot enforce it ({short}); "
        "fix the schema (JSON Schema draft 2020-12, local $refs only)"
    )
