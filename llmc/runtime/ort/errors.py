"""ONNX Runtime's run-time failures as one :class:`LlmcError` line.

Every session :func:`llmc.runtime.ort.loader.create_session` makes is a
:func:`checked_session_type` session: its ``run`` and ``run_with_iobinding`` turn ONNX Runtime's
own exceptions (``onnxruntime.capi.onnxruntime_pybind11_state.Fail``, ``InvalidArgument``,
``RuntimeException``...) into one line that names the model (its file when the session was made
from one), the node ONNX Runtime names, its message without the C++ source prefix, and a fix.

What the fix is depends on who runs the model, so callers say it with :func:`run_context`: the
source model on the verification inputs (fix the model or the inputs), the compiled model after
the source ran on the same inputs (a pass broke it: ``--verify-each``/``--diff-each``),
calibration samples (fix the calibration data)... Without a context the hint is about inputs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
from collections.abc import Iterator
from typing import Any

from llmc.errors import LlmcError, first_line

DEFAULT_HINT = "check that the inputs' shapes and values suit the model (--shape, --inputs)"
# ONNX Runtime's GroupQueryAttention (the gqa fusion) on several rows of several new tokens after a past.
GQA_CHUNK = "past context is given"
GQA_HINT = (
    "GroupQueryAttention (the gqa fusion) of an artifact built before llmc passed it query_seqlens takes "
    "several rows only from an empty cache or one token at a time: rebuild it with this llmc, or run "
    "such rows one at a time"
)


@dataclasses.dataclass(frozen=True)
class RunContext:
    hint: str
    model: str | None = None  # names the model instead of its file ("the compiled model")


_CONTEXT: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("llmc_ort_run", default=None)


@contextlib.contextmanager
def run_context(hint: str, model: str | None = None) -> Iterator[None]:
    """Within the block, ONNX Runtime failures end with ``hint`` and name ``model`` (if given)."""
    token = _CONTEXT.set(RunContext(hint, model))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


# What a failure of the compiled graph means once the source model ran on the same inputs.
COMPILED_HINT = (
    "the source model ran on the same inputs, so a pass broke the graph (an llmc bug): rebuild with "
    "--verify-each --diff-each to name the pass, then --disable-pass it"
)


def compiled_runs() -> Iterator[None]:
    """Context for running a build's compiled graph: ONNX Runtime failures say a pass broke it."""
    return run_context(COMPILED_HINT, "the compiled model")


def current_context() -> RunContext | None:
    return _CONTEXT.get()


def is_ort_error(exc: BaseException) -> bool:
    """An exception type of ONNX Runtime itself (its pybind module), not a Python error."""
    return type(exc).__module__.startswith("onnxruntime")


_NODE = re.compile(r"running (\S+) node\. Name:'([^']*)'")
_STATUS = re.compile(r"Status Message: (.*)")
_CODE = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
# "/onnxruntime_src/.../reshape_helper.h:91 onnxruntime::ReshapeHelper::ReshapeHelper(...) cond was false. "
_SOURCE = re.compile(r"^\S+\.(?:h|cc|cpp|cu):\d+ (?:[\w:~<>,*& ]+?\(.*?\)(?: const)? )?(?:[^.]*? was false\. )?")


def explain_run_error(exc: BaseException, origin: str | None = None) -> LlmcError:
    """One line for an ONNX Runtime run failure of the model from ``origin`` (a file, if any)."""
    text = " ".join(str(exc).split())
    context = current_context()
    where = (context.model if context and context.model else None) or origin or "the model"
    hint = context.hint if context else DEFAULT_HINT
    if GQA_CHUNK in text:
        hint = GQA_HINT
    node = _NODE.search(text)
    status = _STATUS.search(text)
    detail = status.group(1) if status else _CODE.sub("", text)
    detail = first_line(_SOURCE.sub("", detail), 240).removesuffix(" Please fix either the inputs/outputs or the model.")
    if node is None:
        return LlmcError(f"{where}: onnxruntime cannot run it: {detail}; {hint}")
    op, name = node.groups()
    who = f"node '{name}' ({op})" if name else f"a {op} node (unnamed)"
    return LlmcError(f"{where}: {who} fails in onnxruntime: {detail}; {hint}")


def located(error: LlmcError, origin: str | None) -> LlmcError:
    """A session-creation error with the model's file (or the context's name for it) in front."""
    context = current_context()
    where = (context.model if context and context.model else None) or origin
    return LlmcError(f"{where}: {error}") if where else error


_SESSION_TYPES: dict[type, type] = {}


def checked_session_type() -> type:
    """``onnxruntime.InferenceSession`` (as it is now: tests may replace it) whose runs raise
    :func:`explain_run_error`'s line."""
    import onnxruntime as ort

    base = ort.InferenceSession
    if base not in _SESSION_TYPES:
        _SESSION_TYPES[base] = _checked(base)
    return _SESSION_TYPES[base]


def _checked(base: type) -> type:
    class CheckedSession(base):  # type: ignore[misc, valid-type]
        llmc_origin: str | None = None  # the model file, when the session was made from one

        def run(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().run(*args, **kwargs)
            except Exception as exc:
                if not is_ort_error(exc):
                    raise
                raise explain_run_error(exc, self.llmc_origin) from None

        def run_with_iobinding(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().run_with_iobinding(*args, **kwargs)
            except Exception as exc:
                if not is_ort_error(exc):
                    raise
                raise explain_run_error(exc, self.llmc_origin) from None

    CheckedSession.__name__ = CheckedSession.__qualname__ = f"Checked{base.__name__}"
    return CheckedSession
