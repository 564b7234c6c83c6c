"""The one exception type that means "the user's input is wrong", not "llmc has a bug".

The CLI prints an :class:`LlmcError` as a single line and exits with code 1; every other
exception keeps its traceback because it is a bug.
"""

from __future__ import annotations


class LlmcError(Exception):
    """A user-facing error: the message names the file/node/tensor and says what to do."""


def first_line(message: object, limit: int = 300) -> str:
    """The first non-blank line of an error message (an exception or text), for one-line errors."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if lines:
        return lines[0][:limit]
    return type(message).__name__ if isinstance(message, BaseException) else "unknown error"
