"""llmc's own ONNX Runtime kernels (custom ops, domain ``ai.llmc``), compiled by ``setup.py`` into
``llmc/kernels/_ops*.so`` when the package is installed.

- ``ai.llmc::MatMulInt4`` (``int4_matmul.cpp``): 4-bit weight MatMul with float32 activations
  that dequantizes each weight once per 8 rows (ONNX Runtime's MatMulNBits at accuracy level 0
  dequantizes every weight per call for more than one row); a row's output is bitwise the same
  alone or batched. :mod:`llmc.weight_only.kernel` rewrites MatMulNBits into it at build time.

Every ONNX Runtime session llmc creates registers the library where it loads (:func:`register`;
the op is a CPU op, placed on the CPU on any device), so artifacts holding it run wherever llmc is
installed with it. The
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
ABI = 2  # the library's exports this module calls (llmc_kernels_abi() in int4_matmul.cpp)
REBUILD = "reinstall llmc with a C++ compiler (g++ or clang++) on PATH: pip install -e . (or make install)"


@functools.cache
def library() -> Path | None:
    """The compiled library, or None when the install did not build it (the newest of several,
    e.g. left by installs for other Python versions)."""
    found = sorted(Path(__file__).parent.glob("_ops*.so"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


@functools.cache
def _handle() -> Any:
    path = library()
    return None if path is None else ctypes.CDLL(str(path))


def unavailable() -> str | None:
    """Why llmc's kernels cannot be used here, or None when they can."""
    if library() is None:
        return f"llmc's kernel library was not built ({REBUILD})"
    try:
        handle = _handle()
    except OSError as exc:
        return f"llmc's kernel library {library()} does not load ({exc}); {REBUILD}"
    if not hasattr(handle, "llmc_kernels_abi") or handle.llmc_kernels_abi() != ABI:
        return f"llmc's kernel library {library()} was built by another llmc version; {REBUILD}"
    return None


PATHS = ("portable", "avx2", "avx512")  # the library's code paths, by llmc_int4_path()


def path() -> str | None:
    """The code path the kernels run on this CPU (``avx512``, ``avx2``: AVX2 + FMA, ``portable``:
    plain C++, much slower), or None when the library is unavailable."""
    return None if unavailable() is not None else PATHS[_handle().llmc_int4_path()]


def fast_path() -> bool:
    """True when this CPU runs a vector path of the kernels (AVX-512, or AVX2 with FMA)."""
    return path() in ("avx2", "avx512")


def state() -> str:
    """What llmc's kernels are here, for build cache keys: the library's sha256 and path, or why
    they are unavailable (an artifact built with them is never reused by an install without)."""
    why = unavailable()
    if why is not None:
        return f"none ({why})"
    import hashlib

    return f"{hashlib.sha256(library().read_bytes()).hexdigest()} {path()}"


def register(options: Any) -> None:
    """Register the library with ``options`` (``onnxruntime.SessionOptions``) when it loads here.
    The op declares the CPU provider, so sessions on other devices place it on the CPU."""
    if unavailable() is None:
        options.register_custom_ops_library(str(library()))


def int4_matmul(a: Any, packed: Any, scales: Any, offsets: Any, n: int, block: int, on: str | None = None) -> Any:
    """The op's product without ONNX Runtime (tests): ``a`` [M, K] float32 and the packed arrays of
    :func:`llmc.weight_only.kernel.pack`; ``on`` forces a code path (:data:`PATHS`) up to this CPU's."""
    import numpy as np

    a = np.ascontiguousarray(a, dtype=np.float32)
    m, k = a.shape
    tiles, blocks = -(-n // 16), k // block
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    scales, offsets = (np.ascontiguousarray(x, dtype=np.float32) for x in (scales, offsets))
    if packed.shape != (tiles, k // 2, 16) or scales.shape != (tiles, blocks, 16) or offsets.shape != scales.shape:
        raise ValueError(f"{INT4_MATMUL}: packed weights {packed.shape} / scales {scales.shape} do not fit K={k}, N={n}")
    y = np.empty((m, n), dtype=np.float32)
    pointer = ctypes.c_void_p
    fn = _handle().llmc_int4_matmul
    fn.argtypes = [pointer] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int]
    chosen = PATHS.index(on or path())
    status = fn(a.ctypes.data, packed.ctypes.data, scales.ctypes.data, offsets.ctypes.data, y.ctypes.data,
                m, k, n, block, chosen)
    if status != 0:
        raise ValueError(f"{INT4_MATMUL}: K={k} is not a multiple of an even block {block}, or no {on} path here")
    return y
