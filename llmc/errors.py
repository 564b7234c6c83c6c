"""The one exception type that means "the user's input is wrong", not "llmc has a bug".

The CLI prints an :class:`LlmcError` as a single line and exits with code 1; every other
exception keeps its traceback because it is a bug.
"""

from __future__ import annotations


class LlmcError(Exception):
    """A user-facing error: the message names the file/node/tensor and says what to do.

    The message is one line whatever it quotes: a line break inside a name from the model
    (a tensor called "a\\nb") is shown escaped, as ``a\\nb``.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(_escape_line_breaks(a) if isinstance(a, str) else a for a in args))


def _escape_line_breaks(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def first_line(message: object, limit: int = 300) -> str:
    """The first non-blank line of an error message (an exception or text), for one-line errors."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if lines:
        return lines[0][:limit]
    return type(message).__name__ if isinstance(message, BaseException) else "unknown error"
