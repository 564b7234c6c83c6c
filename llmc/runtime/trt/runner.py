"""TensorRT runner: deserialize a plan and run it on numpy feeds, like the ONNX Runtime runner.

Device memory comes from torch CUDA tensors (llmc already depends on torch for export, so no
pycuda/cuda-python): inputs are copied up, TensorRT gets every IO tensor's address, the
engine runs with ``execute_async_v3`` on a torch CUDA stream, and outputs come back as numpy.
Only pass plans that :func:`llmc.runtime.trt.trust.verify_plan` accepted: deserializing a
plan runs its code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmc.errors import LlmcError
from llmc.runtime.trt import detect

# TensorRT DataType member name -> numpy dtype (BF16, FP8, INT4 have no numpy dtype).
_NUMPY_TYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


def numpy_dtype(trt: Any, dtype: Any, tensor: str = "") -> np.dtype:
    """The numpy dtype for a ``trt.DataType``; one clear error for types numpy cannot hold."""
    for name, np_type in _NUMPY_TYPES.items():
        if getattr(trt.DataType, name, None) == dtype:
            return np.dtype(np_type)
    label = getattr(dtype, "name", str(dtype))
    where = f"tensor '{tensor}'" if tensor else "a tensor"
    raise LlmcError(
        f"{where} has TensorRT type {label}, which numpy cannot hold; keep graph inputs and outputs "
        "float32/float16/int32/int64/int8/bool (cast inside the graph)"
    )


def _cuda_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise LlmcError(
            "running a TensorRT engine needs torch with CUDA for device buffers; "
            "install a CUDA build of torch"
        ) from None
    if not torch.cuda.is_available():
        raise LlmcError(
            "running a TensorRT engine needs a CUDA GPU, and torch sees none (torch.cuda.is_available() "
            "is False); run on an NVIDIA GPU host with a CUDA build of torch"
        )
    return torch


class TrtRunner:
    """Runs one deserialized engine. ``run(feeds) -> {output name: array}``.

    Requires: ``engine_bytes`` a plan this TensorRT can load on this GPU, and verified as llmc's
    own. ``host_code_allowed`` must be True for plans built version-compatible (they carry a lean
    runtime, i.e. host code); pass the manifest's ``flags["version_compatible"]``.
    Guarantees: inputs are checked by name and cast to the engine's dtypes; shapes outside the
    optimization profile are one clear error.
    """

    backend = "tensorrt"

    def __init__(self, engine_bytes: bytes, *, host_code_allowed: bool = False) -> None:
        trt = detect.import_tensorrt()
        self._trt = trt
        self._torch = _cuda_torch()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if host_code_allowed:
            self._runtime.engine_host_code_allowed = True
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise LlmcError(
                f"TensorRT {trt.__version__} could not load the engine (built by another TensorRT version "
                "or for another GPU?); rebuild it on this host with --target trt"
            )
        self.context = self.engine.create_execution_context()
        self.session = self.engine  # what runs the model, as OrtRunner.session names its session
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: numpy_dtype(trt, self.engine.get_tensor_dtype(n), n) for n in names}
        self.stream = self._torch.cuda.Stream()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise LlmcError(
                f"missing input(s) {', '.join(missing)}; the engine takes {', '.join(self.input_names)}"
            )
        extra = [name for name in feeds if name not in self.input_names]
        if extra:
            raise LlmcError(
                f"unknown input(s) {', '.join(extra)}; the engine takes {', '.join(self.input_names)}"
            )
        torch = self._torch
        buffers: dict[str, Any] = {}
        with torch.cuda.stream(self.stream):
            for name in self.input_names:
                array = np.ascontiguousarray(np.asarray(feeds[name]).astype(self.dtypes[name], copy=False))
                self._set_shape(name, array.shape)
                buffers[name] = torch.as_tensor(array, device="cuda")
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise LlmcError(
                        f"output '{name}' has a data-dependent shape {list(shape)}, which llmc's TensorRT "
                        "runner does not support; use --target ort for this model"
                    )
                buffers[name] = torch.empty(
                    shape, dtype=_torch_dtype(torch, self.dtypes[name]), device="cuda"
                )
            for name, tensor in buffers.items():
                self.context.set_tensor_address(name, tensor.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise LlmcError(
                    "TensorRT failed to run the engine (execute_async_v3 returned False); see the log"
                )
        self.stream.synchronize()
        return {name: buffers[name].cpu().numpy() for name in self.output_names}

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        expected = tuple(self.engine.get_tensor_shape(name))
        if len(shape) != len(expected):
            raise LlmcError(
                f"input '{name}' has rank {len(shape)} {list(shape)}, but the engine expects rank "
                f"{len(expected)} {list(expected)}"
            )
        if not self.context.set_input_shape(name, shape):
            low, _, high = (list(s) for s in self.engine.get_tensor_profile_shape(name, 0))
            raise LlmcError(
                f"input '{name}' shape {list(shape)} is outside the engine's optimization profile "
                f"({low} to {high}); rebuild with a wider --profile {name}:MIN:OPT:MAX"
            )


def _torch_dtype(torch: Any, dtype: np.dtype) -> Any:
    return {
        np.dtype(np.float32): torch.float32,
        np.dtype(np.float16): torch.float16,
        np.dtype(np.int8): torch.int8,
        np.dtype(np.int32): torch.int32,
        np.dtype(np.int64): torch.int64,
        np.dtype(np.bool_): torch.bool,
        np.dtype(np.uint8): torch.uint8,
    }[np.dtype(dtype)]
