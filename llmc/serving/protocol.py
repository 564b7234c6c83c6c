"""The JSON the server takes and gives, checked before any run: one clear message per bad request.

``/v1/infer``: ``{"inputs": {name: nested list}}`` -> ``{"outputs": {name: nested list}}``. Every
input the artifact takes must be there, no other; each is cast to the input's dtype (integers
stay integers: a float given for an int64 input is refused) and must have the input's rank and
fixed dims, a batch of at least one row, and at most ``max_elements`` values in all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from llmc.model.decoder import LOGITS_TO_KEEP
from llmc.serving.errors import BadRequest

ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: Any
    shape: tuple[int | None, ...]  # None: a dynamic dim


def specs(session: Any) -> list[InputSpec]:
    """The artifact's inputs as the server checks them (from its ONNX Runtime session). A decoder's
    ``logits_to_keep`` is not one: ``/v1/infer`` merges requests into one batch, which one scalar
    cannot serve, so it runs every position (``Runner.run``'s default), as the source model."""
    return [
        InputSpec(i.name, ORT_DTYPES.get(i.type, np.float32), tuple(d if isinstance(d, int) else None for d in i.shape))
        for i in session.get_inputs() if i.name != LOGITS_TO_KEEP
    ]


def parse_inputs(body: Any, inputs: list[InputSpec], max_elements: int) -> dict[str, np.ndarray]:
    """``body["inputs"]`` as feeds, or :class:`BadRequest`."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict):
        raise BadRequest('the body must be a JSON object {"inputs": {name: nested list}}')
    given = body["inputs"]
    names = [spec.name for spec in inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise BadRequest(f"unknown input(s) {', '.join(unknown)}; the model takes {', '.join(names)}")
    missing = [name for name in names if name not in given]
    if missing:
        raise BadRequest(f"missing input(s) {', '.join(missing)}; the model takes {', '.join(names)}")
    feeds, total = {}, 0
    for spec in inputs:
        array = _array(spec, given[spec.name])
        total += array.size
        if total > max_elements:
            raise BadRequest(f"the inputs hold more than {max_elements} values; send smaller batches", 413)
        feeds[spec.name] = array
    batches = {a.shape[0] for a in feeds.values() if a.ndim}
    if len(batches) > 1:
        raise BadRequest(f"the inputs disagree on the batch size ({', '.join(map(str, sorted(batches)))})")
    return feeds


def _array(spec: InputSpec, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise BadRequest(f"input '{spec.name}' is not a rectangular nested list of numbers") from None
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise BadRequest(f"input '{spec.name}' is not a rectangular nested list of numbers")
    want = np.dtype(spec.dtype)
    if want.kind in "iub" and array.dtype.kind == "f":
        raise BadRequest(f"input '{spec.name}' takes integers ({want.name}), not floats")
    if array.ndim != len(spec.shape):
        raise BadRequest(f"input '{spec.name}' has rank {array.ndim}; the model takes rank {len(spec.shape)}")
    for axis, (got, fixed) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if fixed is not None and got != fixed:
            raise BadRequest(f"input '{spec.name}' has {got} on axis {axis}; the model takes {fixed}")
    if array.ndim and array.shape[0] == 0:
        raise BadRequest(f"input '{spec.name}' has an empty batch")
    if want.kind in "iu" and array.size and (array.min() < np.iinfo(want).min or array.max() > np.iinfo(want).max):
        raise BadRequest(f"input '{spec.name}' has values outside {want.name}")
    return np.ascontiguousarray(array, dtype=want)


def outputs_json(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"outputs": {name: array.tolist() for name, array in outputs.items()}}


def shape_key(feeds: dict[str, np.ndarray], layout: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """Requests batch together when every input agrees beyond the batch axis (and, with a padding
    ``layout``, beyond the sequence axis of its ``[batch, sequence]`` inputs)."""
    sequence = set(layout["inputs"]) if layout else set()
    return tuple(sorted(
        (name, array.shape[2:] if name in sequence else array.shape[1:], array.dtype.str) for name, array in feeds.items()
    ))


def pad_to_longest(
    requests: list[dict[str, np.ndarray]], layout: dict[str, Any]
) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    """Each request's ``[batch, sequence]`` inputs padded with zeros (the mask's 0: padding) to
    the longest request's length, and each request's own length."""
    lengths = [int(r[layout["mask"]].shape[1]) for r in requests]
    longest = max(lengths)
    padded = []
    for request, length in zip(requests, lengths, strict=True):
        padded.append({
            name: np.pad(array, [(0, 0), (0, longest - length)] + [(0, 0)] * (array.ndim - 2))
            if name in layout["inputs"] and length < longest else array
            for name, array in request.items()
        })
    return padded, lengths


def cut_to(outputs: dict[str, np.ndarray], length: int, layout: dict[str, Any]) -> dict[str, np.ndarray]:
    """A padded request's outputs back to its own sequence length."""
    result = {}
    for name, array in outputs.items():
        axis = layout["outputs"].get(name, {}).get("sequence_axis")
        result[name] = np.take(array, range(length), axis=axis) if axis is not None else array
    return result


def merge(requests: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Requests of one shape key as one batch, and each one's row count."""
    rows = [next(iter(r.values())).shape[0] for r in requests]
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}, rows


def split(outputs: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
    """A merged run's outputs back per request (rows along axis 0)."""
    bounds = np.cumsum([0, *rows])
    return [{name: array[bounds[i] : bounds[i + 1]] for name, array in outputs.items()} for i in range(len(rows))]
