"""The one exception type that means "the user's input is wrong", not "llmc has a bug".

The CLI prints an :class:`LlmcError` as a single line and exits with code 1; every other
exception keeps its traceback because it is a bug.
"""

from __future__ import annotations


class LlmcError(Exception):
    """A user-facing error: the message names the file/node/tensor and says what to do."""
