"""2:4 structured sparsity of a graph's matrix-product weights: in every group of 4 consecutive
values along the reduction (K) axis at most 2 are non-zero, the pattern NVIDIA's sparse tensor
cores run (TensorRT's ``SPARSE_WEIGHTS``).

Weights are found as the matrix products read them: a MatMul's constant ``B`` [K, N] (axis 0), a
Gemm's ``B`` (axis 1 when ``transB``), ONNX Runtime's integer MatMuls' int8 ``B`` [K, N], and
through a DequantizeLinear or Cast of a constant (int8 Q/DQ, fp16), whose zeros stay zeros.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from llmc.model.values import const_array

_B_AXIS0 = {"MatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
_THROUGH = {"DequantizeLinear", "Cast"}


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    weights: int  # matrix-product weights of at least 4 along K
    sparse: list[str]  # nodes whose weight follows 2:4
    dense: list[str]  # nodes whose weight does not

    def to_dict(self) -> dict[str, object]:
        return {"pattern": "2:4", "weights": self.weights, "sparse_2_4": len(self.sparse), "dense": self.dense[:20]}


def is_2_4(weight: np.ndarray, axis: int) -> bool:
    """Every 4 consecutive values along ``axis`` hold at most 2 non-zeros (K a multiple of 4)."""
    if weight.ndim < 1 or weight.shape[axis] % 4:
        return False
    first = np.take(weight, range(4), axis=axis)  # every build asks: dense weights fail here, cheaply
    if np.any(np.count_nonzero(first, axis=axis) > 2):
        return False
    moved = np.moveaxis(weight, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, 4)
    return bool(np.all(np.count_nonzero(groups, axis=-1) <= 2))


def _weight(node: ir.Node) -> tuple[np.ndarray, int] | None:
    if node.op_type == "Gemm" and node.domain == "":
        axis = 1 if node.attributes.get_int("transB", 0) else 0
    elif node.op_type in _B_AXIS0 and node.domain in ("", "com.microsoft"):
        axis = 0
    else:
        return None
    value = node.inputs[1] if len(node.inputs) > 1 else None
    while value is not None and const_array(value) is None and value.producer() is not None \
            and value.producer().op_type in _THROUGH:
        value = value.producer().inputs[0]
    array = const_array(value)
    if array is None or array.ndim != 2:
        return None
    return array, axis


def report(model: ir.Model) -> SparsityReport:
    """Which matrix-product weights of ``model`` follow the 2:4 pattern."""
    sparse, dense = [], []
    for node in model.graph.all_nodes():
        found = _weight(node)
        if found is None or found[0].shape[found[1]] < 4:
            continue
        (sparse if is_2_4(*found) else dense).append(node.name or node.op_type)
    return SparsityReport(len(sparse) + len(dense), sparse, dense)
