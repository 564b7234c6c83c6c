"""What a request may ask of the model, checked before any work: bodies, JSON, token ids, positions.

A small body can still ask for a large allocation: a position id of a billion makes a RoPE graph
compute a billion-row rotation table, a KV-cache input may claim a past of a million positions,
a negative token id gathers the vocabulary's last row silently. So the server bounds, before
parsing or running anything:

* the body: at most ``max_body_mb`` (``Content-Length`` refused at once, a stream cut off), JSON
  nested at most :data:`MAX_DEPTH` deep, no ``NaN``/``Infinity`` (they are not JSON), no lone
  UTF-16 surrogates in any string (they cannot be encoded for a tokenizer);
* ``/v1/infer`` inputs of a decoder or encoder artifact (:class:`Bounds`): every integer input
  that indexes a table in the graph (``input_ids``, ``token_type_ids``: a ``Gather`` of an
  initializer) within ``[0, rows)``; ``position_ids`` within ``[0, positions)``, and
  ``attention_mask`` and a KV cache's past no longer than ``positions`` (the model's context,
  :func:`llmc.model.text.context_length`: the tokenizer's ``model_max_length`` or the context the
  export recorded, else :data:`DEFAULT_POSITIONS`); ``attention_mask`` 0 or 1.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from llmc.model.decoder import ATTENTION_MASK, POSITION_IDS, is_cache_input
from llmc.serving.errors import BadRequest

MAX_DEPTH = 64
DEFAULT_POSITIONS = 32768  # a decoder with no known context: the longest sequence served


async def read_body(request: Any, limit: int) -> bytes:
    """The body's bytes, at most ``limit`` of them (413 beyond, before reading when it says so)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"the body is {int(declared)} bytes; at most {limit} are read (--max-body-mb)", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the body is over {limit} bytes (--max-body-mb)", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> Any:
    raise BadRequest(f"the body has {name}, which is not JSON; send finite numbers")


def parse_json(raw: bytes) -> Any:
    """``raw`` as JSON, or one :class:`BadRequest`: not JSON, non-finite numbers, too deep, lone
    surrogates."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest(f"the JSON is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, BadRequest):
            raise
        raise BadRequest("the body is not valid JSON") from None
    _check_tree(value)
    return value


def _check_tree(value: Any) -> None:
    """Depth and strings of a parsed body, walked without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise BadRequest(f"the JSON is nested too deeply (at most {MAX_DEPTH} levels)")
            children = list(item.items()) if isinstance(item, dict) else [(None, v) for v in item]
            for key, child in children:
                if key is not None:
                    _check_text(key)
                stack.append((child, depth + 1))
        elif isinstance(item, str):
            _check_text(item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("a string in the body holds a lone UTF-16 surrogate (invalid Unicode); send valid text") from None


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Value bounds of an artifact's integer inputs (module docstring)."""

    rows: dict[str, int]  # input -> rows of the table it indexes
    positions: Optional[int]  # decoders: the longest sequence (None: an encoder)

    def check(self, feeds: dict[str, np.ndarray]) -> None:
        for name, rows in self.rows.items():
            array = feeds.get(name)
            if array is not None and array.size and (array.min() < 0 or array.max() >= rows):
                raise BadRequest(f"input '{name}' holds values outside [0, {rows}) (the model's table has {rows} rows)")
        if self.positions is None:
            return
        limit = self.positions
        positions = feeds.get(POSITION_IDS)
        if positions is not None and positions.size and (positions.min() < 0 or positions.max() >= limit):
            raise BadRequest(f"input '{POSITION_IDS}' holds values outside [0, {limit}) (the model's context)")
        mask = feeds.get(ATTENTION_MASK)
        if mask is not None and mask.ndim == 2:
            if mask.shape[1] > limit:
                raise BadRequest(f"input '{ATTENTION_MASK}' is {mask.shape[1]} long; the model's context is {limit}")
            if mask.size and not np.isin(mask, (0, 1)).all():
                raise BadRequest(f"input '{ATTENTION_MASK}' must hold only 0 and 1")
        for name, array in feeds.items():
            if is_cache_input(name) and array.ndim == 4 and array.shape[2] > limit:
                raise BadRequest(f"input '{name}' holds a past of {array.shape[2]} positions; the context is {limit}")


def bounds_of(model: Path, decoder: bool, context: Optional[int]) -> Bounds:
    """The :class:`Bounds` of the model at ``model`` (its graph read without weights)."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    inputs = {i.name for i in proto.graph.input}
    shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
    rows: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type in ("Gather", "GatherBlockQuantized") and len(node.input) > 1 and node.input[1] in inputs:
            dims = shapes.get(node.input[0])
            if dims:
                rows[node.input[1]] = min(rows.get(node.input[1], dims[0]), dims[0])
    rows.pop(POSITION_IDS, None)  # bounded by the context below
    return Bounds(rows, (context or DEFAULT_POSITIONS) if decoder else None)
