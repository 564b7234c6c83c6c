"""Pipelines are data: a textual form, parsed into steps and bounded fixed-point groups.

Grammar::

    pipeline := item ("," item)*
    item     := NAME | "(" pipeline ")" ["*" N]

A parenthesised group repeats until no pass in it changes the model, at most N times
(default ``DEFAULT_MAX_ITERATIONS``). ``"prune,(fold,cse)*3"`` is a valid pipeline.
"""

from __future__ import annotations

import dataclasses
import re

from llmc.errors import LlmcError
from llmc.passes.registry import get_pass

DEFAULT_MAX_ITERATIONS = 4


@dataclasses.dataclass(frozen=True)
class Step:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class FixedPoint:
    items: tuple[Step | FixedPoint, ...]
    max_iterations: int = DEFAULT_MAX_ITERATIONS

    def __str__(self) -> str:
        return f"({','.join(map(str, self.items))})*{self.max_iterations}"


@dataclasses.dataclass(frozen=True)
class Pipeline:
    items: tuple[Step | FixedPoint, ...]

    def __str__(self) -> str:
        return ",".join(map(str, self.items))

    def names(self) -> list[str]:
        return _names(self.items)

    def without(self, disabled: list[str] | tuple[str, ...]) -> Pipeline:
        """This pipeline with every occurrence of the ``disabled`` passes removed."""
        for name in disabled:
            get_pass(name)  # an unknown name is an error listing the valid ones
        return Pipeline(_drop(self.items, frozenset(disabled)))


_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][\w\-]*)|(?P<num>\d+)|(?P<sym>[(),*]))")


def parse_pipeline(text: str) -> Pipeline:
    """Parse ``text``; every name must be a registered pass (a target's default pipeline is its
    ``pipeline`` text: ``llmc.spec.target.Target``)."""
    tokens = _tokenize(text)
    items, pos = _parse_items(tokens, 0, text)
    if pos != len(tokens):
        raise LlmcError(f"pipeline '{text}': unexpected '{tokens[pos][1]}'")
    pipeline = Pipeline(items)
    for name in pipeline.names():
        get_pass(name)
    return pipeline


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise LlmcError(f"pipeline '{text}': cannot parse at '{text[pos:]}'")
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    if not tokens:
        raise LlmcError("empty pipeline: name at least one pass (see `llmc passes`)")
    return tokens


def _parse_items(tokens, pos: int, text: str) -> tuple[tuple[Step | FixedPoint, ...], int]:
    items: list[Step | FixedPoint] = []
    while True:
        if pos >= len(tokens):
            raise LlmcError(f"pipeline '{text}': ends where a pass name is expected")
        kind, value = tokens[pos]
        if kind == "name":
            items.append(Step(value))
            pos += 1
        elif value == "(":
            inner, pos = _parse_items(tokens, pos + 1, text)
            if pos >= len(tokens) or tokens[pos][1] != ")":
                raise LlmcError(f"pipeline '{text}': missing ')'")
            pos += 1
            bound = DEFAULT_MAX_ITERATIONS
            if pos < len(tokens) and tokens[pos][1] == "*":
                if pos + 1 >= len(tokens) or tokens[pos + 1][0] != "num":
                    raise LlmcError(f"pipeline '{text}': '*' must be followed by a number")
                bound = int(tokens[pos + 1][1])
                if bound < 1:
                    raise LlmcError(f"pipeline '{text}': a group repeats at least once")
                pos += 2
            items.append(FixedPoint(inner, bound))
        else:
            raise LlmcError(f"pipeline '{text}': unexpected '{value}'")
        if pos < len(tokens) and tokens[pos][1] == ",":
            pos += 1
            continue
        return tuple(items), pos


def _names(items) -> list[str]:
    out: list[str] = []
    for item in items:
        out.extend([item.name] if isinstance(item, Step) else _names(item.items))
    return out


def _drop(items, disabled: frozenset[str]) -> tuple[Step | FixedPoint, ...]:
    kept: list[Step | FixedPoint] = []
    for item in items:
        if isinstance(item, Step):
            if item.name not in disabled:
                kept.append(item)
        else:
            inner = _drop(item.items, disabled)
            if inner:
                kept.append(FixedPoint(inner, item.max_iterations))
    return tuple(kept)
