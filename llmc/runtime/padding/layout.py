"""Which inputs and outputs of an encoder carry the padded sequence axis.

An encoder that takes ``attention_mask`` ``[batch, sequence]`` (Hugging Face's convention, the one
``llmc export`` writes) and other ``[batch, sequence, ...]`` inputs (``input_ids``,
``token_type_ids``...) computes every position, padding included. The inputs are found from the
graph's symbolic dims; which axes of each output follow the batch and the sequence is measured
(:mod:`llmc.runtime.padding.probe`), never guessed from names, and recorded in the manifest.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx_ir as ir

from llmc.model.decoder import ATTENTION_MASK, is_decoder

MASK = ATTENTION_MASK


@dataclasses.dataclass(frozen=True)
class PaddingLayout:
    """``mask``: the 0/1 input; ``inputs``: every input, ``[batch, sequence, ...]`` (the mask
    included); ``outputs``: name -> (batch axis, sequence axis), None where it has none."""

    mask: str
    inputs: tuple[str, ...]
    outputs: dict[str, tuple[int | None, int | None]]

    @property
    def rows_separable(self) -> bool:
        """Every output has a batch axis: rows can run in separate batches (buckets)."""
        return all(batch is not None for batch, _ in self.outputs.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "mask": self.mask, "inputs": list(self.inputs),
            "outputs": {name: {"batch_axis": b, "sequence_axis": s} for name, (b, s) in self.outputs.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PaddingLayout:
        outputs = {name: (axes["batch_axis"], axes["sequence_axis"]) for name, axes in data["outputs"].items()}
        return cls(str(data["mask"]), tuple(data["inputs"]), outputs)


def sequence_inputs(model: ir.Model) -> tuple[str, tuple[str, ...]] | str:
    """``(mask, inputs)`` of an encoder whose every input is ``[batch, sequence, ...]``, or why
    padding-aware execution does not apply to ``model``."""
    inputs = {v.name: v for v in model.graph.inputs if v.name not in model.graph.initializers}
    if is_decoder(inputs):
        return "a decoder (KV cache inputs): generation handles its padding"
    mask = inputs.get(MASK)
    if mask is None or mask.shape is None or len(mask.shape) != 2:
        return f"no 2-D '{MASK}' input"
    batch, sequence = mask.shape[0], mask.shape[1]
    if isinstance(sequence, int):
        return f"'{MASK}' has a fixed sequence length ({sequence})"
    names = []
    for name, value in inputs.items():
        shape = value.shape
        if shape is None or len(shape) < 2 or shape[0] != batch or shape[1] != sequence:
            return f"input '{name}' is not [batch, sequence, ...] like '{MASK}'"
        names.append(name)
    return MASK, tuple(names)
