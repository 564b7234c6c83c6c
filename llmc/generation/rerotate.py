"""Turning cached keys to other columns, for artifacts whose GroupQueryAttention rotates by column.

With RoPE inside GroupQueryAttention (``llmc.passes.fusion.gqa_rotary``, manifest
``gqa.rotary_inside``) a key is stored rotated by the column it was written to, and a query by
its own column: attention sees the difference. Continuous batching writes a sequence's prompt
and its new tokens to columns that are not always one apart (it joins a running timeline; the
timeline is compacted), so before a sequence's next token the scheduler turns its stored keys by
the columns it moved (``RoPE(a) RoPE(b) = RoPE(a + b)``): the same rotations, and so the same
attention, as a sequence written in consecutive columns. Artifacts that rotate by
``position_ids`` need none of this (:func:`rotation_of` gives None).

The angles are the model's own: the cos/sin tables the graph computes for the kernel, run once
for ``capacity`` columns in a graph extracted from the model (``onnx.utils.Extractor``), so the
turn is the rotation the kernel applies (tables that carry a magnitude, e.g. YaRN's, are
normalised to a pure rotation).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import numpy as np

from llmc.model.decoder import ATTENTION_MASK

MS = "com.microsoft"


@dataclasses.dataclass(frozen=True)
class Rotation:
    cos: np.ndarray  # [columns, rotary_dim / 2], cos(column * frequency)
    sin: np.ndarray
    interleaved: bool

    @property
    def half(self) -> int:
        return self.cos.shape[1]

    def turn(self, keys: np.ndarray, by: int) -> None:
        """Rotate ``keys`` [..., columns, head_size] in place by ``by`` columns (negative: back)."""
        if by == 0:
            return
        cos, sin = self.cos[abs(by)], self.sin[abs(by)] * (1 if by > 0 else -1)
        half = self.half
        if self.interleaved:
            first, second = keys[..., 0 : 2 * half : 2], keys[..., 1 : 2 * half : 2]
        else:
            first, second = keys[..., :half], keys[..., half : 2 * half]
        a, b = first.astype(np.float64), second.astype(np.float64)  # a turn adds no float32 rounding of its own
        first[...] = a * cos - b * sin
        second[...] = b * cos + a * sin


def rotation_of(model: Path, capacity: int, proto: Any = None) -> Optional[Rotation]:
    """The column rotation of ``model``'s GroupQueryAttention (None when it does not rotate
    inside the kernel), with tables for turns of up to ``capacity`` columns; ``proto``: the
    model's graph already read without its weights (else read here)."""
    import onnx
    from onnx import external_data_helper, utils

    proto = proto if proto is not None else onnx.load(str(model), load_external_data=False)
    attention = next(
        (n for n in proto.graph.node if n.op_type == "GroupQueryAttention" and n.domain == MS
         and any(a.name == "do_rotary" and a.i for a in n.attribute)),
        None,
    )
    if attention is None:
        return None
    interleaved = any(a.name == "rotary_interleaved" and a.i for a in attention.attribute)
    cos_name, sin_name = attention.input[7], attention.input[8]
    extracted = utils.Extractor(proto).extract_model([ATTENTION_MASK], [cos_name, sin_name])
    external_data_helper.load_external_data_for_model(extracted, str(model.parent))
    from llmc.runtime.ort.loader import REFERENCE_CONFIG, create_session

    session = create_session(extracted.SerializeToString(), REFERENCE_CONFIG)
    cos, sin = session.run([cos_name, sin_name], {ATTENTION_MASK: np.ones((1, capacity + 1), dtype=np.int64)})
    cos, sin = np.asarray(cos, dtype=np.float64), np.asarray(sin, dtype=np.float64)
    norm = np.sqrt(cos**2 + sin**2)
    norm[norm == 0] = 1.0
    return Rotation(cos / norm, sin / norm, interleaved)
