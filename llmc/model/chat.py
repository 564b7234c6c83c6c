"""Chat templates rendered with bounds: a template from a model directory is untrusted code.

transformers renders chat templates in jinja's immutable sandbox (no attribute escapes, no
mutation), but a sandboxed template can still raise, loop for hours (nested ``range`` loops,
recursive macros) or build gigabytes (``'x' * 10**10``, ``'x'|center(10**10)``). :func:`render`
runs the template in the calling thread with:

- the environment transformers uses (its filters, globals, namespace and extensions), compiled
  by a subclass that intercepts ``*``, ``**``, ``%`` and ``+``, every call and every filter:
  a repeat count, padding width or format width past ``max_chars``, a string or list argument
  or result past it, or a power past 4096 bits, is refused before it is built;
- a deadline, checked at every line the template executes and every call it makes (a trace
  function on this thread for the duration of the render, the previous one restored after);
- the output, consumed chunk by chunk, refused past ``max_chars`` characters.

Every failure (a ``raise_exception``, an undefined name, the sandbox's refusal, a bound) is one
:class:`~llmc.errors.LlmcError` line. The time bound holds in pure-template loops; a single
builtin operation runs to its end, which the size checks keep short.

Overhead, measured on a ChatML-style template with a 4-turn chat (Python 3.11, jinja2 3.1.6, a
shared 2-core machine, 3 runs of 3,000 calls): 13-20 µs per call as transformers renders it,
84-124 µs bounded, i.e. about 70-100 µs per call (the trace function sees every Python call of the
render; the argument checks), paid once per request; compilation is cached per template text.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import time
from typing import Any

from llmc.errors import LlmcError, first_line

MAX_SECONDS = 2.0  # a real template renders in well under a millisecond
MAX_CHARS = 8 << 20  # 8 Mi characters: far past any context a prompt has to fit
_MAX_POWER_BITS = 4096
_TEMPLATE_FILE = "<template>"  # the file name jinja compiles a template from a string under
_FORMAT_WIDTH = re.compile(r"\{[^{}]*:[^{}]*?(\d+)")
_WIDTH = re.compile(r"%[-#0 +]*(\d+|\*)?(?:\.(\d+|\*))?")


class ChatTemplateError(LlmcError):
    """A chat template that raised, ran past its time or built past its size."""


class _Bound(Exception):
    """A bound the template reached (turned into a ChatTemplateError by render)."""


@functools.lru_cache(maxsize=16)
def _compiled(source: str) -> Any:
    """``source`` compiled by :class:`_BoundedEnvironment` (cached per template text)."""
    return _environment().from_string(source)


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%", "+"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _check_binop(operator, left, right)
            return _checked(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            _check_arguments(args, kwargs)
            if isinstance(getattr(__obj, "__self__", None), str):
                _check_string_method(__obj.__self__, __obj.__name__, args, kwargs)
            return _checked(super().call(__context, __obj, *args, **kwargs))

        def wrap_str_format(self, value: Any) -> Any:  # str.format / format_map, at attribute access
            wrapped = super().wrap_str_format(value)
            if wrapped is not None and any(len(w) > 7 for w in _FORMAT_WIDTH.findall(value.__self__)):
                raise _Bound("a format width past the bound")
            return wrapped

    base = _transformers_environment()
    env = BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[type(e) for e in base.extensions.values()] if base is not None else ["jinja2.ext.loopcontrols"],
    )
    if base is not None:
        env.filters.update(base.filters)
        env.globals.update(base.globals)
    env.filters.update({name: _bounded_filter(name, f) for name, f in env.filters.items()})
    env.globals["namespace"] = _bounded_namespace(env.globals.get("namespace"))
    return env


def _bounded_namespace(base: Any) -> Any:
    """The template's ``namespace`` whose attributes are size-checked when set (``{% set ns.s =
    ns.s ~ ns.s %}`` in a loop doubles a string each turn)."""
    from jinja2.utils import Namespace

    class BoundedNamespace(base if isinstance(base, type) and issubclass(base, Namespace) else Namespace):
        def __setitem__(self, name: str, value: Any) -> None:
            super().__setitem__(name, _checked(value))

    return BoundedNamespace


def _transformers_environment() -> Any:
    """The environment transformers renders chat templates in (its globals: raise_exception,
    strftime_now, dict, namespace; its tojson filter), or None without transformers."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None
    return _compile_jinja_template("").environment


def _bounded_filter(name: str, function: Any) -> Any:
    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args, kwargs)
        strings = [a for a in args if isinstance(a, str)]
        if name == "replace" and len(strings) >= 3:  # (s, old, new[, count])
            _check_string_method(strings[0], name, (strings[1], strings[2]), {})
        elif strings and name in ("format", "indent"):
            _check_string_method(strings[0], name, tuple(a for a in args if a is not strings[0]), kwargs)
        return _checked(function(*args, **kwargs))

    return bounded


def _check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CHARS:
            raise _Bound(f"an argument of {value} (past the {MAX_CHARS:,}-character bound)")
        _checked(value)


def _checked(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_CHARS:
        raise _Bound(f"a value of {len(value):,} items (past the {MAX_CHARS:,}-character bound)")
    return value


def _check_string_method(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a call on ``text`` whose result would pass the bound: the methods and filters that
    multiply a string's length (replace, join, expandtabs, format's widths, indent)."""
    projected = 0
    if name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        old, new = args[0], args[1]
        projected = len(text) + (text.count(old) if old else len(text) + 1) * (len(new) - len(old))
    elif name == "join" and args and isinstance(args[0], (list, tuple)):
        projected = len(text) * len(args[0]) + sum(len(str(item)) for item in args[0])
    elif name == "expandtabs":
        size = next((a for a in (*args, *kwargs.values()) if isinstance(a, int)), 8)
        projected = len(text) + text.count("\t") * size
    elif name == "format":
        _check_binop("%", text, args)
    elif name == "indent":
        width = next((a for a in (*args, *kwargs.values()) if isinstance(a, (int, str)) and not isinstance(a, bool)), 4)
        projected = len(text) + (text.count("\n") + 1) * (width if isinstance(width, int) else len(width))
    if projected > MAX_CHARS:
        raise _Bound(f"a {name} to {projected:,} characters")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > _MAX_POWER_BITS:
            raise _Bound(f"a product past {_MAX_POWER_BITS} bits")
        sized, count = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(sized, (str, list, tuple)) and isinstance(count, int) and len(sized) * count > MAX_CHARS:
            raise _Bound(f"a repeat to {len(sized) * count:,} items")
    elif operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)):
        if abs(left) > 1 and right * math.log2(abs(left)) > _MAX_POWER_BITS:
            raise _Bound(f"a power past {_MAX_POWER_BITS} bits ({left} ** {right})")
    elif operator == "%" and isinstance(left, str):
        counts = right if isinstance(right, (tuple, list)) else (right,)
        for width, precision in _WIDTH.findall(left):
            for field in (width, precision):
                if field == "*" and any(isinstance(c, int) and abs(c) > MAX_CHARS for c in counts):
                    raise _Bound("a %-format width past the bound")
                if field.isdigit() and int(field) > MAX_CHARS:
                    raise _Bound(f"a %-format width of {field}")


def render(
    source: str, where: str, *, max_seconds: float | None = None, max_chars: int | None = None, **context: Any
) -> str:
    """``source`` (a chat template) rendered with ``context``; one line naming ``where`` when it
    fails, runs past ``max_seconds`` (:data:`MAX_SECONDS`) or writes past ``max_chars``
    (:data:`MAX_CHARS`) characters (see the module)."""
    from jinja2 import TemplateError

    max_seconds = MAX_SECONDS if max_seconds is None else max_seconds
    max_chars = MAX_CHARS if max_chars is None else max_chars

    try:
        template = _compiled(source)
    except TemplateError as exc:
        raise ChatTemplateError(f"{where}: the chat template does not compile ({first_line(exc)}); fix it or drop --chat") from None
    deadline = time.monotonic() + max_seconds
    chunks, size = [], 0
    previous = sys.gettrace()
    sys.settrace(_tracer(deadline))
    try:
        for chunk in template.generate(**context):
            size += len(chunk)
            if size > max_chars:
                raise _Bound(f"output past {max_chars:,} characters")
            chunks.append(chunk)
        if time.monotonic() > deadline:
            raise _Bound(f"a render past {max_seconds:g} s")
    except _Bound as exc:
        raise ChatTemplateError(f"{where}: the chat template was stopped at {exc}; fix the template") from None
    except (TemplateError, RecursionError, MemoryError, ArithmeticError, LookupError, TypeError, ValueError,
            AttributeError) as exc:
        raise ChatTemplateError(
            f"{where}: the chat template failed ({type(exc).__name__}: {first_line(exc)}); fix the template or the messages"
        ) from None
    finally:
        sys.settrace(previous)
    return "".join(chunks)


def _tracer(deadline: float) -> Any:
    """A trace function raising :class:`_Bound` past ``deadline``: at every call on this thread,
    and every line of the template's own code."""

    def line(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _Bound("its time limit (a loop that does not end?)")
        return line

    def call(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _Bound("its time limit (a loop that does not end?)")
        return line if frame.f_code.co_filename == _TEMPLATE_FILE else None

    return call
