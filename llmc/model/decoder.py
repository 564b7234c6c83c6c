"""The decoder I/O contract: what ``llmc export`` writes and every runtime reads.

Inputs (int64 unless said): ``input_ids`` [batch, sequence]; ``attention_mask``
[batch, total_sequence] (past + current tokens, 1 = attend); ``position_ids`` [batch, sequence]
(``llmc export`` always writes it; readers take a decoder without it); and for each layer i
``past_key_values.{i}.key`` / ``.value`` float32 or float16 [batch, kv_heads, past_sequence,
head_size]. Outputs: ``logits`` [batch, sequence, vocab] and ``present.{i}.key`` / ``.value``
[batch, kv_heads, total_sequence, head_size], the next step's past. Prefill feeds a past with a
0-length ``past_sequence`` axis.

``logits_to_keep`` (int64 scalar; ONNX Runtime builds add it, :mod:`llmc.passes.logits`): the LM
head runs for the last ``k`` positions only, ``logits`` is then [batch, min(k, sequence), vocab];
0 keeps every position (Hugging Face's ``logits_to_keep``). Readers feed it where the graph takes
it (:attr:`DecoderLayout.has_logits_to_keep`): generation 1 at prefill, full-sequence readers 0.

Other exporters' legacy convention, which the seeded feeds and the memory plan also read: a rank-4
input ``past_<rest>`` (``past_0``, ...) is a KV cache whose next value is the output
``present_<rest>``.

GroupQueryAttention shared-buffer mode (:func:`with_gqa`): when the build fused every layer's
attention into ONNX Runtime's GroupQueryAttention (the manifest's ``fusions``), each cache tensor
is one buffer of the final length, bound as both past and present and updated in place
(``shared_cache``); when every one of them also takes the padding from ``attention_mask`` (the
manifest's ``gqa`` section, llmc.passes.fusion.gqa), left-padded prompts of different lengths
batch (``masks_padding``).

One parser, :func:`parse`, reads (name, shape, dtype) triples into a :class:`DecoderLayout`:
from an onnx-ir graph (:func:`graph_io`), an ONNX Runtime session (:func:`session_io`) or a
TensorRT engine (:func:`engine_io`) alike. :func:`require` is the strict reading generation needs
(the ``llmc export`` convention, fixed heads and head size), each failure one :class:`LlmcError`
line. This module imports onnx-ir and numpy only: no runtime.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from llmc.errors import LlmcError

if TYPE_CHECKING:  # onnx-ir loads in ~1 s: `llmc --help` (render's cache names) must not import it
    import onnx_ir as ir

INPUT_IDS, ATTENTION_MASK, POSITION_IDS = "input_ids", "attention_mask", "position_ids"
TOKEN_INPUTS = (INPUT_IDS, ATTENTION_MASK, POSITION_IDS)
LOGITS = "logits"
LOGITS_TO_KEEP = "logits_to_keep"  # an int64 scalar: the LM head's last positions (0: all)
KV = ("key", "value")
PAST, PRESENT = "past_key_values.", "present."  # Hugging Face / ONNX Runtime GenAI, llmc export's
LEGACY_PAST, LEGACY_PRESENT = "past_", "present_"  # other exporters: past_<rest> -> present_<rest>
# The [batch, kv_heads, past, head_size] axes of a cache tensor.
BATCH_AXIS, HEADS_AXIS, LENGTH_AXIS, HEAD_SIZE_AXIS = 0, 1, 2, 3
CACHE_RANK = 4
# The op whose count in the manifest's ``fusions`` says every layer shares its cache buffer.
GQA_OP = "GroupQueryAttention"
# Model metadata (``metadata_props``) of a decoder whose cache must be recomputed from the whole
# sequence once the sequence grows past this many tokens: LongRoPE (Phi-3) switches from its short
# to its long rotary factors there, and transformers then drops the cache rotated with the short
# ones and prefills everything again (``Phi3ForCausalLM.prepare_inputs_for_generation``).
RECOMPUTE_CACHE_AFTER = "llmc.decoder.recompute_cache_after"

_LAYER = re.compile(r"(?:past_key_values|present)\.(\d+)\.(?:key|value)|(?:past|present)_(\d+)")
_FLOAT32 = {"tensor(float)", "FLOAT", "float32"}
_FLOAT16 = {"tensor(float16)", "FLOAT16", "HALF", "float16"}

Dim = int | str | None  # a fixed size, a named symbol, an unnamed dynamic axis


class Tensor(NamedTuple):
    """One input or output: its name, its shape (None: unknown rank) and its element type as its
    source spells it (``ir.DataType``, ONNX Runtime's ``tensor(float)``, a numpy or TensorRT type)."""

    name: str
    shape: tuple[Dim, ...] | None
    dtype: Any = None


def past_name(layer: int, kv: str) -> str:
    return f"{PAST}{layer}.{kv}"


def present_name(layer: int, kv: str) -> str:
    return f"{PRESENT}{layer}.{kv}"


def past_names(num_layers: int) -> list[str]:
    """``past_key_values.{i}.key``, ``past_key_values.{i}.value`` for every layer, in input order."""
    return [past_name(i, kv) for i in range(num_layers) for kv in KV]


def present_names(num_layers: int) -> list[str]:
    """``present.{i}.key``, ``present.{i}.value`` for every layer, in output order."""
    return [present_name(i, kv) for i in range(num_layers) for kv in KV]


def input_names(num_layers: int) -> list[str]:
    """The inputs ``llmc export`` writes, in order: the token inputs, then the past."""
    return [*TOKEN_INPUTS, *past_names(num_layers)]


def output_names(num_layers: int) -> list[str]:
    """The outputs ``llmc export`` writes, in order: ``logits``, then the present."""
    return [LOGITS, *present_names(num_layers)]


def is_past(name: str) -> bool:
    """A past input of the ``llmc export`` convention (``past_key_values.*``)."""
    return name.startswith(PAST)


def is_present(name: str) -> bool:
    """A present output of the ``llmc export`` convention (``present.*``)."""
    return name.startswith(PRESENT)


def is_cache_input(name: str) -> bool:
    """A KV-cache input by name in either convention (``past_key_values.*`` or ``past_*``)."""
    return name.startswith(LEGACY_PAST)


def is_cache_output(name: str) -> bool:
    """A KV-cache output by name in either convention (``present.*`` or ``present_*``)."""
    return name.startswith((PRESENT, LEGACY_PRESENT))


def is_decoder(names: Iterable[str]) -> bool:
    """Whether these input names include an ``llmc export`` KV cache."""
    return any(is_past(name) for name in names)


def is_logits(name: str | None) -> bool:
    """An output named ``logits`` or, as other exporters write it, ``*logits*``."""
    return LOGITS in (name or "")


def present_for(past: str) -> str | None:
    """The output that carries ``past``'s next value: ``past_key_values.0.key`` ->
    ``present.0.key``, ``past_0`` -> ``present_0``; None for a name that is not a cache input."""
    if is_past(past):
        return PRESENT + past.removeprefix(PAST)
    if is_cache_input(past):
        return LEGACY_PRESENT + past.removeprefix(LEGACY_PAST)
    return None


def layer_of(name: str) -> int | None:
    """The layer of a cache name (``past_key_values.3.key``, ``present.3.value``, ``past_3``,
    ``present_3``), or None."""
    match = _LAYER.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1) or match.group(2))


def kv_dtype_of(dtype: Any) -> Any:
    """``np.float32`` / ``np.float16`` for a float32 / float16 element type however spelled,
    None for any other (bfloat16 included)."""
    if isinstance(dtype, str):
        key = dtype
    elif isinstance(dtype, type):
        try:
            key = np.dtype(dtype).name
        except TypeError:
            return None
    else:
        key = getattr(dtype, "name", None)
    return np.float32 if key in _FLOAT32 else np.float16 if key in _FLOAT16 else None


@dataclasses.dataclass(frozen=True)
class DecoderLayout:
    """Names, cache geometry and dynamic-axis symbols of a KV-cache decoder (:func:`parse`)."""

    num_layers: int  # layers of ``past_key_values.{i}.*`` inputs; 0 for a legacy-named cache
    kv_heads: int | None  # fixed sizes of the cache's axes 1 and 3, None where symbolic
    head_size: int | None
    kv_dtype: Any  # np.float32 / np.float16; None for another type
    has_position_ids: bool
    # Every layer's attention is ONNX Runtime's GroupQueryAttention (the gqa fusion): the cache is
    # one buffer of the final length per tensor, bound as past and present, updated in place.
    shared_cache: bool = False
    # ... and each takes the padding from attention_mask (llmc.passes.fusion.gqa): left-padded
    # prompts of different lengths batch; GQA of older builds took lengths from the positions.
    masks_padding: bool = False
    inputs: tuple[str, ...] = ()  # every input's name, in order
    outputs: tuple[str, ...] = ()  # every output's name, in order
    cache_inputs: tuple[str, ...] = ()  # rank-4 cache inputs of either convention, in order
    kv_type: str = ""  # the cache's element type as its source spells it (for error lines)
    past_input: str | None = None  # the first cache input whose past axis is a named symbol
    past_symbol: str | None = None  # that axis's symbol: the cached length
    sequence_symbol: str | None = None  # input_ids' [batch, sequence] axis 1: the new tokens
    total_symbol: str | None = None  # attention_mask's axis 1 when another symbol: past + sequence
    recompute_cache_after: int | None = None  # :data:`RECOMPUTE_CACHE_AFTER` (None: never)
    has_logits_to_keep: bool = False  # takes :data:`LOGITS_TO_KEEP`

    @property
    def past_names(self) -> list[str]:
        return past_names(self.num_layers)

    @property
    def present_names(self) -> list[str]:
        return present_names(self.num_layers)

    @property
    def output_names(self) -> list[str]:
        return output_names(self.num_layers)

    @property
    def symbolic(self) -> bool:
        """The cached length and the new tokens' length are named symbols (seeded feeds keep
        ``total = past + sequence`` across the inputs)."""
        return self.past_symbol is not None and self.sequence_symbol is not None

    @property
    def batches_left_padding(self) -> bool:
        """Prompts of different lengths can run as one left-padded batch: a cache not shared, or
        GroupQueryAttention that takes the padding from ``attention_mask``."""
        return not self.shared_cache or self.masks_padding

    def keep(self, last_only: bool) -> dict[str, np.ndarray]:
        """The :data:`LOGITS_TO_KEEP` feed where the graph takes it: 1 (the last position's
        logits) or 0 (every position's); nothing for a graph without it."""
        return {LOGITS_TO_KEEP: np.array(1 if last_only else 0, dtype=np.int64)} if self.has_logits_to_keep else {}

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """The prefill cache: every past tensor with a 0-length sequence axis."""
        shape = (batch, self.kv_heads, 0, self.head_size)
        return {name: np.zeros(shape, dtype=self.kv_dtype) for name in self.past_names}


def every_position(names: Collection[str], feeds: dict[str, Any]) -> dict[str, Any]:
    """``feeds`` (a source model's, or its build's) for a graph taking the inputs ``names``:
    :data:`LOGITS_TO_KEEP` 0 where the graph takes it and ``feeds`` lack it, left out at 0 where
    it does not take it; every position's logits either way, what the source gives."""
    takes = LOGITS_TO_KEEP in names
    if takes and LOGITS_TO_KEEP not in feeds:
        return {**feeds, LOGITS_TO_KEEP: np.zeros((), np.int64)}
    if not takes and LOGITS_TO_KEEP in feeds and not np.any(feeds[LOGITS_TO_KEEP]):
        return {k: v for k, v in feeds.items() if k != LOGITS_TO_KEEP}
    return feeds


def _dim(dim: Any) -> Dim:
    if dim is None or isinstance(dim, (int, str)):
        return dim
    return getattr(dim, "value", None)  # ir.SymbolicDim


def tensor_of(value: Any) -> Tensor:
    """A :class:`Tensor` of an onnx-ir value, an ONNX Runtime ``NodeArg`` or a (name, shape,
    dtype) triple."""
    if isinstance(value, tuple):
        name, shape, dtype = value
    elif hasattr(value, "dtype"):  # an onnx-ir Value
        name, shape, dtype = value.name, value.shape, value.dtype
    else:  # onnxruntime.NodeArg
        name, shape, dtype = value.name, value.shape, value.type
    return Tensor(name or "", None if shape is None else tuple(_dim(d) for d in shape), dtype)


def graph_io(graph: ir.Graph) -> tuple[list[Tensor], list[Tensor]]:
    """An onnx-ir graph's inputs a caller feeds (not those an initializer backs) and outputs."""
    inputs = [tensor_of(v) for v in graph.inputs if v.name and v.name not in graph.initializers]
    return inputs, [tensor_of(v) for v in graph.outputs]


def session_io(session: Any) -> tuple[list[Tensor], list[Tensor]]:
    """An ONNX Runtime session's ``get_inputs()`` and ``get_outputs()``."""
    return [tensor_of(i) for i in session.get_inputs()], [tensor_of(o) for o in session.get_outputs()]


def engine_io(engine: Any) -> tuple[list[Tensor], list[Tensor]]:
    """A TensorRT engine's input and output tensors (dynamic axes are -1)."""
    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = engine.get_tensor_mode(name)
        tensor = Tensor(name, tuple(engine.get_tensor_shape(name)), engine.get_tensor_dtype(name))
        (inputs if getattr(mode, "name", str(mode)).endswith("INPUT") else outputs).append(tensor)
    return inputs, outputs


def _symbol(dim: Dim) -> str | None:
    return dim if isinstance(dim, str) and dim else None


def _fixed_axis(tensors: list[Tensor | None], axis: int) -> int | None:
    for tensor in tensors:
        shape = tensor.shape if tensor is not None else None
        if shape is not None and len(shape) == CACHE_RANK and isinstance(shape[axis], int):
            return shape[axis]
    return None


def parse(inputs: Iterable[Any], outputs: Iterable[Any] = ()) -> DecoderLayout | None:
    """The :class:`DecoderLayout` of these inputs and outputs (:class:`Tensor`\\ s or anything
    :func:`tensor_of` reads), or None when no input is a KV cache by name."""
    ins, outs = [tensor_of(t) for t in inputs], [tensor_of(t) for t in outputs]
    by_name, out_by_name = {t.name: t for t in ins}, {t.name: t for t in outs}
    if not any(is_cache_input(t.name) for t in ins):
        return None
    caches = [t for t in ins if is_cache_input(t.name) and t.shape is not None and len(t.shape) == CACHE_RANK]
    num_layers = len({layer_of(t.name) for t in ins if is_past(t.name) and layer_of(t.name) is not None})
    first = by_name.get(past_name(0, KV[0])) if num_layers else (caches[0] if caches else None)
    present = out_by_name.get(present_for(first.name) or "") if first is not None else None
    symbolic = next((t for t in caches if _symbol(t.shape[LENGTH_AXIS])), None)
    ids, mask = by_name.get(INPUT_IDS), by_name.get(ATTENTION_MASK)
    sequence = _symbol(ids.shape[1]) if ids is not None and ids.shape is not None and len(ids.shape) == 2 else None
    total = _symbol(mask.shape[1]) if mask is not None and mask.shape is not None and len(mask.shape) == 2 else None
    return DecoderLayout(
        num_layers=num_layers,
        kv_heads=_fixed_axis([first, present], HEADS_AXIS),
        head_size=_fixed_axis([first, present], HEAD_SIZE_AXIS),
        kv_dtype=kv_dtype_of(first.dtype) if first is not None else None,
        has_position_ids=POSITION_IDS in by_name,
        has_logits_to_keep=LOGITS_TO_KEEP in by_name,
        inputs=tuple(by_name),
        outputs=tuple(out_by_name),
        cache_inputs=tuple(t.name for t in caches),
        kv_type=str(first.dtype) if first is not None else "",
        past_input=symbolic.name if symbolic is not None else None,
        past_symbol=_symbol(symbolic.shape[LENGTH_AXIS]) if symbolic is not None else None,
        sequence_symbol=sequence,
        total_symbol=total if total != sequence else None,
    )


def _not_a_decoder(artifact: str | Path, inputs: list[str], why: str = "") -> LlmcError:
    shown = ", ".join(inputs[:6]) + (", ..." if len(inputs) > 6 else "")
    return LlmcError(
        f"{artifact} is not a decoder with a KV cache (inputs {shown}){why}; "
        "llmc generate needs an `llmc export` decoder"
    )


def require(inputs: Iterable[Any], outputs: Iterable[Any], artifact: str | Path) -> DecoderLayout:
    """The layout of a decoder of the ``llmc export`` convention with fixed KV heads and head size
    and a float32/float16 cache (what generation runs), or one error line naming ``artifact``."""
    ins, outs = [tensor_of(t) for t in inputs], [tensor_of(t) for t in outputs]
    names, produced = [t.name for t in ins], {t.name for t in outs}
    layout = parse(ins, outs)
    if layout is None or not {INPUT_IDS, ATTENTION_MASK} <= set(names) or LOGITS not in produced or not layout.num_layers:
        raise _not_a_decoder(artifact, names)
    missing = [n for n in layout.past_names if n not in names] + [n for n in layout.present_names if n not in produced]
    extra = sorted(set(names) - {*TOKEN_INPUTS, LOGITS_TO_KEEP} - set(layout.past_names))
    if missing or extra:
        shown = ", ".join((missing or extra)[:3])
        raise _not_a_decoder(artifact, names, f" ({'missing' if missing else 'unexpected'} {shown})")
    if layout.kv_heads is None or layout.head_size is None or layout.kv_dtype is None:
        raise LlmcError(
            f"{artifact}: the KV cache's heads/head size are symbolic or its type is {layout.kv_type}; "
            "llmc generate needs fixed kv heads and head size and a float32/float16 cache"
        )
    return layout


def with_gqa(layout: DecoderLayout, fused: int, masking: int) -> DecoderLayout:
    """``layout`` in the GroupQueryAttention shared-buffer mode its artifact's manifest declares:
    ``shared_cache`` when every layer was fused into GroupQueryAttention (``fused``: the
    manifest's ``fusions`` count of :data:`GQA_OP`), ``masks_padding`` when every one of them
    takes the padding from ``attention_mask`` (``masking``: the manifest's
    ``gqa.padding_from_attention_mask``)."""
    if fused != layout.num_layers:
        return layout
    return dataclasses.replace(layout, shared_cache=True, masks_padding=masking == layout.num_layers)


def with_metadata(layout: DecoderLayout, metadata: dict[str, str]) -> DecoderLayout:
    """``layout`` with what the model's metadata declares (:data:`RECOMPUTE_CACHE_AFTER`)."""
    value = metadata.get(RECOMPUTE_CACHE_AFTER)
    return dataclasses.replace(layout, recompute_cache_after=int(value)) if value and value.isdigit() else layout
