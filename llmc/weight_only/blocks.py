"""Block quantizers of our own, in MatMulNBits' layout: 4-bit with a float block minimum, and 8-bit.

Why our own (ONNX Runtime's ``MatMulNBitsQuantizer`` does RTN and HQQ, and ``llmc.weight_only.quantize``
uses it for those): the two formats llama.cpp's users bring, Q4_1 (a float scale and a float
minimum per block of 32) and Q8_0 (a float scale per block of 32, symmetric), have no quantizer in
ONNX Runtime that writes them onto its fast kernels:

* A float minimum is a float zero point, and MatMulNBits with float zero points runs a slow
  dequantizing path (measured on SmolLM2-135M: 67-70 ms/token against ~8 for integer zero points).
  So a block is stored as ``w = s * (q - 8) + c``: ``s * (q - 8)`` is the symmetric MatMulNBits
  kernel (no zero points input, the default 8), and the per-block offset ``c`` is applied as
  ``blocksum(x) @ C``, a MatMul ``1 / block`` the size of the weight (:func:`offset_nodes` in
  ``llmc.weight_only.rewrite``). HQQ's float zero points go through the same form (:func:`hqq_offsets`).
* Q8_0's scale is ``max|w| / 127``: ORT's 8-bit RTN rounds differently, so a Q8_0 weight (a GGUF
  file's embedding) would not come back exactly.

On a weight that already sits on such a grid (a GGUF file dequantized by ``transformers``) both
round-trip to the same floats (within float32 rounding); on other weights they are llama.cpp's
Q4_1 / Q8_0 rounding.

Layouts (ONNX Runtime's ``MatMulNBits``, blocks along K of the (K, N) weight): ``B`` is uint8
``[N, K / block, block * bits / 8]`` (4-bit: element ``2i`` in the low nibble), ``scales`` float32
``[N, K / block]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Blocks:
    """One quantized (K, N) weight: MatMulNBits' ``B`` and ``scales``, and the float offsets
    ``[N, K / block]`` of the symmetric-kernel-plus-offset form (None: none needed)."""

    bits: int
    block: int
    packed: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray | None = None
    centre: int | None = None  # the zero point of every block; None: MatMulNBits' default 2**(bits-1)

    def dequantize(self) -> np.ndarray:
        """The (K, N) float32 weight these blocks stand for."""
        q = unpack(self.packed, self.bits).astype(np.float32)
        centre = 2 ** (self.bits - 1) if self.centre is None else self.centre
        w = self.scales[..., None] * (q - centre)
        if self.offsets is not None:
            w = w + self.offsets[..., None]
        n = w.shape[0]
        return np.ascontiguousarray(w.reshape(n, -1).T)


def _blocked(weight: np.ndarray, block: int) -> np.ndarray:
    k, n = weight.shape
    if k % block:
        raise ValueError(f"K={k} is not a multiple of the block size {block}")
    return np.ascontiguousarray(weight.T, dtype=np.float32).reshape(n, k // block, block)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes ``[N, blocks, block]`` in MatMulNBits' byte layout."""
    q = q.astype(np.uint8)
    if bits == 8:
        return np.ascontiguousarray(q)
    return np.ascontiguousarray(q[..., 0::2] | (q[..., 1::2] << 4))


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def q4_minmax(weight: np.ndarray, block: int) -> Blocks:
    """llama.cpp's Q4_1 rounding: per block ``m = min``, ``d = (max - min) / 15``, ``q = round((w - m) / d)``,
    stored as ``d * (q - 8) + (m + 8 d)``."""
    w = _blocked(weight, block)
    low, high = w.min(axis=-1), w.max(axis=-1)
    scale = ((high - low) / 15.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint((w - low[..., None]) / safe[..., None]), 0, 15)
    q[scale == 0] = 8  # a constant block: all of it is the offset
    offsets = (low + 8.0 * scale).astype(np.float32)
    offsets[scale == 0] = low[scale == 0]
    return Blocks(4, block, pack(q, 4), scale, offsets)


def q8_symmetric(weight: np.ndarray, block: int) -> Blocks:
    """llama.cpp's Q8_0 rounding: per block ``d = max|w| / 127``, ``q = round(w / d)``, stored with
    MatMulNBits' default zero point 128."""
    w = _blocked(weight, block)
    scale = (np.abs(w).max(axis=-1) / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / safe[..., None]), -127, 127) + 128
    return Blocks(8, block, pack(q, 8), scale)


def q8_digits(blocks: Blocks) -> tuple[Blocks, Blocks]:
    """8-bit blocks ``d (q - 128)`` as two 4-bit ones over the same input, ``16 d (h - 8)`` and
    ``d (l - 0)`` with ``q = 16 h + l``: exact, and both run on the 4-bit kernel with float32
    activations (8-bit MatMulNBits has a fast path only with int8 activations, which moved
    SmolLM2's greedy answers; measured on its 49152 x 576 head: 2.5 ms against 4.0-4.5 in fp32)."""
    codes = unpack(blocks.packed, 8)
    high = Blocks(4, blocks.block, pack(codes >> 4, 4), (16.0 * blocks.scales).astype(np.float32))
    low = Blocks(4, blocks.block, pack(codes & 15, 4), blocks.scales, centre=0)
    return high, low


def hqq_offsets(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, block: int, n: int) -> Blocks:
    """HQQ's ``s * (q - z)`` (float ``z``, from ORT's quantizer) as ``s * (q - 8) + s * (8 - z)``."""
    scales = scales.reshape(n, -1).astype(np.float32)
    zero_points = zero_points.reshape(n, -1).astype(np.float32)
    return Blocks(4, block, packed.reshape(n, scales.shape[1], -1), scales, (scales * (8.0 - zero_points)))
