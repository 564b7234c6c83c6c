"""Concrete input shapes and seeded inputs for verification, benchmarks and memory planning.

``--shape name=1x128`` binds an input's dims (and the symbols they carry, so an
``attention_mask`` sharing ``batch``/``sequence`` with ``input_ids`` follows it). A symbolic
dim still unbound takes 1 on axis 0 (batch) and 128 elsewhere; those choices are returned as
"assumed" so the CLI and the manifest can say which were guessed.

Seeded feeds: integer inputs used as indices of a Gather over a constant table are drawn from
``[0, table rows)``, other integers are 1, booleans True, floats standard normal.

Decoders with a KV cache (inputs ``past_key_values.*`` / ``past_*`` of rank 4, the Hugging Face
and ONNX Runtime GenAI convention) get consistent feeds: the attention mask's length is
``past + sequence`` and ``position_ids`` count on from the cache, ``past .. past + sequence - 1``,
which is what a generation loop feeds and what fused attention kernels assume.

Refused before anything runs: a generated input over ``FEED_LIMIT_BYTES`` (16 GiB) or over the
memory available at the time, before numpy allocates it; given inputs (``--inputs``) whose
fixed dims or shared symbols disagree with the model; and any input with no elements (the
outputs would be empty, so verification would prove nothing), except a decoder's empty KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from llmc.errors import LlmcError
from llmc.model import decoder
from llmc.model.decoder import DecoderLayout
from llmc.model.shape_specs import parse_shape_sets, parse_shape_specs  # noqa: F401  (re-exported)

DEFAULT_BATCH = 1
DEFAULT_DIM = 128
# A generated input over this many bytes (or over the memory available now, if less) is refused
# before numpy allocates it: real transformer inputs are kilobytes to megabytes, and a declared
# dim such as 2**40 would otherwise ask for terabytes.
FEED_LIMIT_BYTES = 16 * 2**30


def resolve_shapes(
    model: ir.Model, given: dict[str, tuple[int, ...]] | None = None, longest: int | None = None,
) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Concrete shapes for every graph input, and the symbolic dims that were assumed (``longest``:
    at most this for a dim past the batch axis, e.g. an encoder's position table)."""
    given = dict(given or {})
    inputs = _runtime_inputs(model)
    unknown = [name for name in given if name not in inputs]
    if unknown:
        raise LlmcError(f"--shape names unknown input(s) {', '.join(unknown)}; inputs: {', '.join(inputs)}")
    symbols: dict[str, int] = {}
    for name, dims in given.items():
        declared = inputs[name].shape
        if declared is not None and len(declared) != len(dims):
            raise LlmcError(
                f"--shape {name}: {len(dims)} dims given but the input has rank {len(declared)} "
                f"({_format_shape(declared)})"
            )
        for axis, dim in enumerate(declared or ()):
            if _fixed(dim) and dim != dims[axis]:
                raise LlmcError(
                    f"--shape {name}: axis {axis} is fixed to {dim} in the model, not {dims[axis]}"
                )
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                symbols.setdefault(dim.value, dims[axis])
    assumed: dict[str, int] = {}
    layout = _decoder_layout(inputs)
    if layout is not None:
        _bind_total_sequence(layout, symbols, assumed)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, value in inputs.items():
        if name in given:
            shapes[name] = given[name]
            continue
        if value.shape is None:
            raise LlmcError(f"input '{name}' has no declared rank; give it with --shape {name}=...")
        dims = []
        for axis, dim in enumerate(value.shape):
            if _fixed(dim):
                dims.append(dim)
                continue
            symbol = (dim.value if isinstance(dim, ir.SymbolicDim) else None) or f"{name}[{axis}]"
            if symbol not in symbols:
                symbols[symbol] = DEFAULT_BATCH if axis == 0 else min(DEFAULT_DIM, longest or DEFAULT_DIM)
                assumed[symbol] = symbols[symbol]
            dims.append(symbols[symbol])
        shapes[name] = tuple(dims)
    return shapes, assumed


def _fixed(dim: object) -> bool:
    """A declared dim of fixed size; a negative one (-1, as some exporters write) is dynamic, as
    ONNX Runtime reads it."""
    return isinstance(dim, int) and dim >= 0


def make_feeds(model: ir.Model, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs of the given shapes, with valid index ranges for embedding lookups."""
    rng = np.random.default_rng(seed)
    inputs = _runtime_inputs(model)
    limit = _feed_limit()
    shapes = {**{n: () for n, v in inputs.items() if v.shape is not None and len(v.shape) == 0}, **shapes}
    for name, value in inputs.items():
        _check_feed_size(value, shapes[name], limit)
    feeds = {}
    for name, value in inputs.items():
        feeds[name] = _make_array(value, shapes[name], rng)
    if decoder.LOGITS_TO_KEEP in feeds:  # every position's logits: what a graph without it gives
        feeds[decoder.LOGITS_TO_KEEP] = np.zeros(shapes[decoder.LOGITS_TO_KEEP], dtype=np.int64)
    layout = _decoder_layout(inputs)
    if layout is not None and decoder.POSITION_IDS in feeds:
        past = shapes[layout.past_input][decoder.LENGTH_AXIS]
        array = feeds[decoder.POSITION_IDS]
        if array.ndim >= 1:
            positions = np.arange(past, past + array.shape[-1], dtype=array.dtype)
            feeds[decoder.POSITION_IDS] = np.broadcast_to(positions, array.shape).copy()
    return feeds


class CachePrefill(NamedTuple):
    """How to give a decoder's seeded feeds a KV cache its own model computed: run ``feeds`` (a
    seeded prefill of the cached length, on an empty cache) and put each ``present`` output of
    ``outputs`` (present name -> past input name) in place of the random cache."""

    feeds: dict[str, np.ndarray]
    outputs: dict[str, str]
    tokens: int


def cache_prefill(model: ir.Model, feeds: dict[str, np.ndarray], seed: int = 0) -> CachePrefill | None:
    """The prefill that computes ``feeds``' KV cache, or None (no cache, an empty one, or cache
    inputs whose ``present`` outputs the model does not have).

    A standard-normal cache is a state no prefill produces; on real weights the model amplifies
    rounding on it (SmolLM2: one float32 ulp of cache noise moves the logits by 1e-3 of their
    scale, ten times the fp32 tolerance), so verification on it would judge noise, not the passes.
    """
    inputs = _runtime_inputs(model)
    layout = _decoder_layout(inputs)
    if layout is None or feeds[layout.past_input].shape[decoder.LENGTH_AXIS] == 0:
        return None
    produced = {v.name for v in model.graph.outputs}
    outputs = {decoder.present_for(n): n for n in layout.cache_inputs}
    if not set(outputs) <= produced:
        return None
    batch, _, past, _ = feeds[layout.past_input].shape
    ids = _make_array(inputs[decoder.INPUT_IDS], (batch, past), np.random.default_rng(seed + 1))
    prefill = prefill_feeds(model, ids, like=feeds)
    return None if prefill is None else CachePrefill(prefill, outputs, past)


def with_computed_cache(
    feeds: dict[str, np.ndarray],
    prefill: CachePrefill,
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """``feeds`` with each cache input replaced by what ``run`` (the model) computes on the
    prefill; ``feeds`` as they were if an output is not the layout its input declares."""
    outputs = run(prefill.feeds)
    result = dict(feeds)
    for present, past in prefill.outputs.items():
        if outputs[present].shape != feeds[past].shape or outputs[present].dtype != feeds[past].dtype:
            return feeds
        result[past] = outputs[present]
    return result


def prefill_feeds(
    model: ir.Model, ids: np.ndarray, like: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray] | None:
    """Feeds that run the token ids ``ids`` [batch, sequence] from an empty KV cache (all-ones
    mask, positions from 0), or None when ``model`` takes inputs this cannot fill in (no
    ``input_ids``, or another input than mask, positions and a rank-4 cache). Shapes and dtypes
    (the cache's heads and head size) come from ``like``'s arrays, else from the model."""
    inputs = _runtime_inputs(model)
    if decoder.INPUT_IDS not in inputs or ids.ndim != 2:
        return None
    shapes = {k: tuple(v.shape) for k, v in like.items()} if like is not None else resolve_shapes(model)[0]
    batch, length = ids.shape
    feeds: dict[str, np.ndarray] = {}
    for name, value in inputs.items():
        dtype = like[name].dtype if like is not None else value.dtype.numpy() if value.dtype is not None else None
        shape = shapes[name]
        if name == decoder.INPUT_IDS:
            feeds[name] = ids.astype(dtype)
        elif name in (decoder.ATTENTION_MASK, decoder.POSITION_IDS) and len(shape) == 2:
            row = np.ones(length) if name == decoder.ATTENTION_MASK else np.arange(length)
            feeds[name] = np.broadcast_to(row, (batch, length)).astype(dtype)
        elif decoder.is_cache_input(name) and len(shape) == decoder.CACHE_RANK and dtype is not None:
            feeds[name] = np.zeros((batch, shape[decoder.HEADS_AXIS], 0, shape[decoder.HEAD_SIZE_AXIS]), dtype)
        elif name == decoder.LOGITS_TO_KEEP:
            feeds[name] = np.zeros((), np.int64)  # every position
        else:
            return None
    return feeds


def with_defaults(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` (a source model's, or its build's) for ``model`` (:func:`decoder.every_position`)."""
    return decoder.every_position({v.name for v in model.graph.inputs}, feeds)


def feeds_for(
    model: ir.Model,
    shapes: dict[str, tuple[int, ...]],
    inputs: str | Path | dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The given inputs (an .npz path or a dict, checked against ``model``) or seeded ones;
    an input with no elements is refused (verification on it would prove nothing)."""
    if inputs is None:
        feeds = make_feeds(model, shapes, seed)
        origin = ""
    elif isinstance(inputs, dict):
        feeds, origin = with_defaults(model, inputs), "inputs: "
        check_feeds(model, feeds, "inputs")
    else:
        feeds, origin = load_feeds(inputs, model), f"{inputs}: "
    check_not_empty(model, feeds, origin)
    return feeds


def load_feeds(path: str | Path, model: ir.Model | None = None) -> dict[str, np.ndarray]:
    """Read feeds from an ``.npz``; check names, ranks and dtypes against ``model``."""
    path = Path(path)
    if not path.is_file():
        raise LlmcError(f"{path}: no such inputs file")
    feeds = read_npz(path)
    if model is not None:
        feeds = with_defaults(model, feeds)
        check_feeds(model, feeds, str(path))
    return feeds


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (no pickles); an unreadable file is one error line."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise LlmcError(f"{path}: not a readable .npz file ({' '.join(str(exc).split())})") from None
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):  # a member that is not an .npy file comes back as bytes
            raise LlmcError(f"{path}: member '{name}' is not a numpy array (.npy); write the file with np.savez")
    return arrays


def check_feeds(model: ir.Model, feeds: dict[str, np.ndarray], origin: str) -> None:
    inputs = _runtime_inputs(model)
    check_input_names(inputs, feeds, origin)
    for name, value in inputs.items():
        array = feeds[name]
        expected = value.dtype.numpy() if value.dtype is not None else None
        if expected is not None and array.dtype != expected:
            raise LlmcError(f"{origin}: input '{name}' is {array.dtype} but the model expects {expected}")
        if value.shape is not None and len(value.shape) != array.ndim:
            raise LlmcError(
                f"{origin}: input '{name}' has rank {array.ndim} but the model expects "
                f"{len(value.shape)} ({_format_shape(value.shape)})"
            )
    _check_dims(inputs, feeds, origin)


def _check_dims(inputs: dict[str, ir.Value], feeds: dict[str, np.ndarray], origin: str) -> None:
    """Fixed dims must match; a symbol (dim_param) names one size across every input."""
    symbols: dict[str, tuple[int, str]] = {}
    for name, value in inputs.items():
        given = feeds[name].shape
        for axis, dim in enumerate(value.shape or ()):
            if _fixed(dim) and given[axis] != dim:
                raise LlmcError(
                    f"{origin}: input '{name}' has shape {_format_dims(given)} but the model expects "
                    f"{_format_shape(value.shape)} (axis {axis} is fixed to {dim})"
                )
            if not isinstance(dim, ir.SymbolicDim) or not dim.value:
                continue
            size, first = symbols.setdefault(dim.value, (given[axis], name))
            if size != given[axis]:
                raise LlmcError(
                    f"{origin}: input '{name}' has shape {_format_dims(given)} but the model expects "
                    f"{_format_shape(value.shape)} with {dim.value}={size}, as in input '{first}'"
                )


def check_not_empty(model: ir.Model, feeds: dict[str, np.ndarray], origin: str = "") -> None:
    """Refuse an input with no elements: outputs computed from it compare nothing. A decoder's
    empty KV cache (0 only on the cache-length axis, the first generation step) is allowed."""
    inputs = _runtime_inputs(model)
    layout = _decoder_layout(inputs)
    for name, array in feeds.items():
        if array.size or (layout is not None and _empty_cache(inputs.get(name), array, layout.past_symbol)):
            continue
        raise LlmcError(
            f"{origin}input '{name}' has no elements (shape {_format_dims(array.shape)}), so verification "
            f"would compare empty outputs and prove nothing; give a non-empty shape with --shape {name}=... "
            "or real data with --inputs FILE.npz"
        )


def _empty_cache(value: ir.Value | None, array: np.ndarray, past: str) -> bool:
    """Whether ``array`` is empty only along the axes the model declares as the cache length."""
    if value is None or value.shape is None or len(value.shape) != array.ndim:
        return False
    zeros = [axis for axis, size in enumerate(array.shape) if size == 0]
    return all(isinstance(value.shape[a], ir.SymbolicDim) and value.shape[a].value == past for a in zeros)


def _feed_limit() -> int:
    """Bytes a generated input may take: FEED_LIMIT_BYTES, or the memory available if less."""
    import psutil

    return min(FEED_LIMIT_BYTES, psutil.virtual_memory().available)


def _check_feed_size(value: ir.Value, shape: tuple[int, ...], limit: int) -> None:
    """Refuse a generated input too large to allocate, before numpy tries."""
    try:
        dtype = np.dtype(value.dtype.numpy())  # type: ignore[union-attr]
    except Exception:  # no or an odd element type: _make_array says so
        return
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes <= limit:
        return
    what = "llmc's limit for a generated input" if limit == FEED_LIMIT_BYTES else "the memory available"
    raise LlmcError(
        f"input '{value.name}' at shape {_format_dims(shape)} ({dtype}) would take {_format_bytes(nbytes)}, "
        f"over {what} ({_format_bytes(limit)}); give it a smaller shape with --shape {value.name}=..."
    )


def _format_bytes(nbytes: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _format_dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def check_input_names(inputs, feeds, origin: str, what: str = "inputs") -> None:
    """One error listing the missing and unknown names when ``feeds`` do not match ``inputs``."""
    missing = [n for n in inputs if n not in feeds]
    extra = [n for n in feeds if n not in inputs]
    if missing or extra:
        raise LlmcError(
            f"{origin}: {what} do not match the model (missing: {', '.join(missing) or '-'}; "
            f"unknown: {', '.join(extra) or '-'}); the model takes {', '.join(inputs)}"
        )


def _decoder_layout(inputs: dict[str, ir.Value]) -> DecoderLayout | None:
    """The KV-cache symbols of a decoder's inputs (llmc.model.decoder: either naming convention),
    or None for a model without a cache whose length and new tokens are named symbols."""
    layout = decoder.parse(decoder.tensor_of(v) for v in inputs.values())
    return layout if layout is not None and layout.symbolic else None


def _bind_total_sequence(layout: DecoderLayout, symbols: dict[str, int], assumed: dict[str, int]) -> None:
    """Keep ``total = past + sequence`` whichever of them was given or assumed."""
    total, past_symbol, sequence_symbol = layout.total_symbol, layout.past_symbol, layout.sequence_symbol
    if total is None:
        return
    if sequence_symbol not in symbols:
        symbols[sequence_symbol] = DEFAULT_DIM
        assumed[sequence_symbol] = DEFAULT_DIM
    if total in symbols and past_symbol not in symbols:
        symbols[past_symbol] = max(symbols[total] - symbols[sequence_symbol], 0)
        assumed[past_symbol] = symbols[past_symbol]
    for symbol in (past_symbol,):
        if symbol not in symbols:
            symbols[symbol] = DEFAULT_DIM
            assumed[symbol] = DEFAULT_DIM
    past, sequence = symbols[past_symbol], symbols[sequence_symbol]
    if total in symbols:
        if symbols[total] != past + sequence:
            raise LlmcError(
                f"--shape: attention_mask length {total}={symbols[total]} must be "
                f"past + sequence = {past} + {sequence} = {past + sequence} for this decoder"
            )
        return
    symbols[total] = past + sequence


def _runtime_inputs(model: ir.Model) -> dict[str, ir.Value]:
    """Graph inputs a caller must feed (initializers listed as inputs are optional)."""
    return {v.name: v for v in model.graph.inputs if v.name and v.name not in model.graph.initializers}


def _make_array(value: ir.Value, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if value.dtype is None:
        raise LlmcError(f"input '{value.name}' has no element type; it cannot be fed")
    try:
        dtype = value.dtype.numpy()
    except Exception:
        raise LlmcError(
            f"input '{value.name}' has type {value.dtype}, which llmc cannot generate; "
            "pass inputs with --inputs file.npz"
        ) from None
    if value.dtype.is_floating_point():
        return rng.standard_normal(shape).astype(dtype)
    if value.dtype == ir.DataType.BOOL:
        return np.ones(shape, dtype=bool)
    if value.dtype == ir.DataType.STRING:
        return np.full(shape, "llmc", dtype=object)
    rows = _gather_table_rows(value)
    if rows:
        return rng.integers(0, rows, size=shape).astype(dtype)
    return np.ones(shape, dtype=dtype)


def _gather_table_rows(value: ir.Value) -> int | None:
    """Rows of the smallest constant table this value indexes through Gather, if any."""
    rows = []
    for use in value.uses():
        node = use.node
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or use.idx != 1:
            continue
        table = node.inputs[0]
        if table is None or table.shape is None or table.const_value is None:
            continue
        axis = node.attributes.get_int("axis", 0)
        dim = table.shape[axis]
        if isinstance(dim, int) and dim > 0:
            rows.append(dim)
    return min(rows) if rows else None


def _format_shape(shape: ir.Shape) -> str:
    return "x".join(str(d) if isinstance(d, int) else (d.value or "?") for d in shape)
