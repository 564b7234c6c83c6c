"""INT8 arithmetic shared by calibration, the rewrites and the sensitivity analysis.

Weights are int8, symmetric (zero point 0), one scale per output channel: the form both ONNX
Runtime's integer kernels and TensorRT's explicit quantization take. Activations are uint8
asymmetric for the ``ort`` target (the u8 x s8 kernels run ~14x faster than s8 x s8 on x86 with
VNNI) and int8 symmetric for ``trt``. The ``fake_*`` helpers round-trip float arrays through
those grids in numpy, so a node's quantization error can be measured without building a model.
"""

from __future__ import annotations

import numpy as np

TINY = np.float32(1e-12)


def weight_per_channel(weight: np.ndarray, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """int8 symmetric per-channel quantization of ``weight`` along ``axis``: (q, scale)."""
    weight = np.asarray(weight, dtype=np.float32)
    reduce = tuple(i for i in range(weight.ndim) if i != axis % weight.ndim)
    amax = np.abs(weight).max(axis=reduce)
    scale = np.maximum(amax / 127.0, TINY).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def fake_weight(weight: np.ndarray, axis: int = 1) -> np.ndarray:
    q, scale = weight_per_channel(weight, axis)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)


def uint8_params(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """Scale and zero point of a uint8 grid covering [lo, hi] (widened to contain 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = np.float32(max((hi - lo) / 255.0, float(TINY)))
    zero_point = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
    return scale, zero_point


def int8_params(amax: float) -> np.float32:
    """Scale of a symmetric int8 grid (zero point 0) covering [-amax, amax]."""
    return np.float32(max(float(amax) / 127.0, float(TINY)))


def fake_uint8(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    q = np.clip(np.rint(x / scale) + zero_point, 0, 255)
    return ((q - zero_point) * scale).astype(np.float32)


def fake_int8(x: np.ndarray, scale: float) -> np.ndarray:
    return (np.clip(np.rint(x / scale), -127, 127) * scale).astype(np.float32)


def fake_dynamic_uint8(x: np.ndarray) -> np.ndarray:
    """What DynamicQuantizeLinear does to ``x`` when each leading-axis row is one inference."""
    out = np.empty_like(x, dtype=np.float32)
    for i in range(x.shape[0]):
        scale, zero_point = uint8_params(x[i].min(), x[i].max())
        out[i] = fake_uint8(x[i], scale, zero_point)
    return out


def noise_ratio(reference: np.ndarray, approx: np.ndarray) -> float:
    """||approx - reference||^2 / ||reference||^2 (the inverse of the SQNR)."""
    power = float(np.square(reference, dtype=np.float64).sum())
    return float(np.square(approx - reference, dtype=np.float64).sum()) / max(power, 1e-30)
