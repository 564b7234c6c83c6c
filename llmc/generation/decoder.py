"""The decoder I/O layout of an ONNX Runtime session, as ``llmc export`` writes it.

Inputs ``input_ids``, ``attention_mask``, ``position_ids`` (optional here) and, per layer,
``past_key_values.{i}.key`` / ``.value`` [batch, kv_heads, past, head_size]; outputs ``logits``
and ``present.{i}.key`` / ``.value``. The KV heads and head size come from the past inputs' shapes
(or the present outputs' when those are symbolic): prefill needs them to feed an empty cache.
Anything else (an encoder, a decoder exported without its cache) is one :class:`LlmcError`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np

from llmc.errors import LlmcError

_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bfloat16)": None}


@dataclasses.dataclass(frozen=True)
class DecoderLayout:
    """Names and cache geometry of a KV-cache decoder."""

    num_layers: int
    kv_heads: int
    head_size: int
    kv_dtype: Any
    has_position_ids: bool
    # Every layer's attention is ONNX Runtime's GroupQueryAttention (the gqa fusion): the cache is
    # one buffer of the final length per tensor, bound as past and present, updated in place.
    shared_cache: bool = False
    # ... and each takes the padding from attention_mask (llmc.passes.fusion.gqa): left-padded
    # prompts of different lengths batch; GQA of older builds took lengths from the positions.
    masks_padding: bool = False

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    @property
    def output_names(self) -> list[str]:
        return ["logits", *self.present_names]

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """The prefill cache: every past tensor with a 0-length sequence axis."""
        shape = (batch, self.kv_heads, 0, self.head_size)
        return {name: np.zeros(shape, dtype=self.kv_dtype) for name in self.past_names}


def _not_a_decoder(artifact: str | Path, inputs: list[str], why: str = "") -> LlmcError:
    shown = ", ".join(inputs[:6]) + (", ..." if len(inputs) > 6 else "")
    return LlmcError(
        f"{artifact} is not a decoder with a KV cache (inputs {shown}){why}; "
        "llmc generate needs an `llmc export` decoder"
    )


def detect_layout(session: Any, artifact: str | Path) -> DecoderLayout:
    """The :class:`DecoderLayout` of ``session``, or one error line naming ``artifact``."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    layers = sorted({int(m.group(1)) for name in inputs if (m := _PAST.fullmatch(name))})
    if not {"input_ids", "attention_mask"} <= set(inputs) or "logits" not in outputs or not layers:
        raise _not_a_decoder(artifact, list(inputs))
    layout_inputs = {"input_ids", "attention_mask", "position_ids"}
    expected = DecoderLayout(len(layers), 0, 0, None, "position_ids" in inputs)
    missing = [n for n in expected.past_names if n not in inputs] + [
        n for n in expected.present_names if n not in outputs
    ]
    extra = sorted(set(inputs) - layout_inputs - set(expected.past_names))
    if missing or extra:
        names = ", ".join((missing or extra)[:3])
        raise _not_a_decoder(artifact, list(inputs), f" ({'missing' if missing else 'unexpected'} {names})")
    first = inputs[expected.past_names[0]]
    kv_heads = _dimension(first, outputs[expected.present_names[0]], 1)
    head_size = _dimension(first, outputs[expected.present_names[0]], 3)
    dtype = _DTYPES.get(first.type)
    if kv_heads is None or head_size is None or dtype is None:
        raise LlmcError(
            f"{artifact}: the KV cache's heads/head size are symbolic or its type is {first.type}; "
            "llmc generate needs fixed kv heads and head size and a float32/float16 cache"
        )
    return DecoderLayout(len(layers), kv_heads, head_size, dtype, "position_ids" in inputs)


def _dimension(past: Any, present: Any, axis: int) -> int | None:
    for arg in (past, present):
        shape = arg.shape or []
        if len(shape) == 4 and isinstance(shape[axis], int):
            return shape[axis]
    return None
