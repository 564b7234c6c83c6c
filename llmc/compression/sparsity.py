"""2:4 structured sparsity of a model's layer projections (``llmc compress --sparsity 2:4``):
in every group of 4 consecutive input weights of an output row, the 2 of largest magnitude are
kept and the others zeroed (magnitude pruning; distillation then recovers with the zeros held).

A ``Linear`` weight is [out, in] and ``y = x W^T``; exported, it is a MatMul's ``B`` [in, out],
so the groups run along its reduction axis K, the layout TensorRT's sparse tactics take (the
artifact is checked with :func:`llmc.model.sparsity.report`).
"""

from __future__ import annotations

from typing import Any

from llmc.compression.arch import Arch
from llmc.compression.prune import linear_layers
from llmc.errors import LlmcError


def mask_2_4(weight: Any) -> Any:
    """Boolean mask keeping the 2 largest |values| of every 4 along the last axis."""
    import torch

    out, inputs = weight.shape
    groups = weight.detach().abs().reshape(out, inputs // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(out, inputs)


def sparsify(model: Any, arch: Arch) -> dict[str, Any]:
    """Zero every layer projection to 2:4 in place; the masks by projection name (to hold the
    zeros while training)."""
    import torch

    masks = {}
    for name, linear in linear_layers(model, arch):
        if linear.in_features % 4:
            raise LlmcError(f"--sparsity 2:4: {name} has {linear.in_features} inputs, not a multiple of 4")
        masks[name] = mask_2_4(linear.weight)
        with torch.no_grad():
            linear.weight.mul_(masks[name])
    return masks


def hold(model: Any, arch: Arch, masks: dict[str, Any]) -> None:
    """Re-zero what the masks removed (after an optimizer step)."""
    import torch

    with torch.no_grad():
        for name, linear in linear_layers(model, arch):
            if name in masks:
                linear.weight.mul_(masks[name])
