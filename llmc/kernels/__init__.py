"""llmc's own ONNX Runtime kernels (custom ops, domain ``ai.llmc``), compiled by ``setup.py`` into
``llmc/kernels/_ops*.so`` when the package is installed.

- ``ai.llmc::MatMulInt4`` (``int4_matmul.cpp``): 4-bit weight MatMul with float32 activations
  that dequantizes each weight once per 8 rows (ONNX Runtime's MatMulNBits at accuracy level 0
  dequantizes every weight per call for more than one row); a row's output is bitwise the same
  alone or batched. :mod:`llmc.weight_only.kernel` rewrites MatMulNBits into it at build time.

Every ONNX Runtime session llmc creates on the CPU registers the library when it is built
(:func:`register`), so artifacts holding the op run wherever llmc is installed with it. The
library is optional: without a C++ compiler at install time, builds keep MatMulNBits and
:func:`unavailable` says why.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

DOMAIN = "ai.llmc"
INT4_MATMUL = "MatMulInt4"
REBUILD = "reinstall llmc with a C++ compiler (g++ or clang++) on PATH: pip install -e . (or make install)"


@functools.cache
def library() -> Path | None:
    """The compiled library, or None when the install did not build it."""
    found = sorted(Path(__file__).parent.glob("_ops*.so"))
    return found[0] if found else None


@functools.cache
def _handle() -> Any:
    path = library()
    return None if path is None else ctypes.CDLL(str(path))


def unavailable() -> str | None:
    """Why llmc's kernels cannot be used here, or None when they can."""
    if library() is None:
        return f"llmc's kernel library was not built ({REBUILD})"
    try:
        _handle()
    except OSError as exc:
        return f"llmc's kernel library {library()} does not load ({exc}); {REBUILD}"
    return None


def fast_path() -> bool:
    """True when this CPU runs the kernels' AVX-512 path (else their portable, slower one)."""
    return unavailable() is None and bool(_handle().llmc_int4_avx512())


def register(options: Any) -> None:
    """Register the library with ``options`` (``onnxruntime.SessionOptions``) when it is built."""
    path = library()
    if path is not None:
        options.register_custom_ops_library(str(path))


def int4_matmul(a: Any, packed: Any, scales: Any, offsets: Any, n: int, block: int, avx512: bool = True) -> Any:
    """The op's product without ONNX Runtime (tests): ``a`` [M, K] float32 and the packed arrays of
    :func:`llmc.weight_only.kernel.pack`; ``avx512`` False forces the portable path."""
    import numpy as np

    a = np.ascontiguousarray(a, dtype=np.float32)
    m, k = a.shape
    y = np.empty((m, n), dtype=np.float32)
    arrays = [np.ascontiguousarray(x) for x in (packed, scales, offsets)]
    pointer = ctypes.c_void_p
    fn = _handle().llmc_int4_matmul
    fn.argtypes = [pointer] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int]
    status = fn(a.ctypes.data, *(x.ctypes.data for x in arrays), y.ctypes.data, m, k, n, block, int(avx512))
    if status != 0:
        raise ValueError(f"{INT4_MATMUL}: K={k} is not a multiple of an even block {block}")
    return y
