"""The TensorRT runner on the fake engine (y = 2 * x + mask) with CPU torch posing as CUDA."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from llmc.errors import LlmcError
from tests.runtime.trt.support import fake_cuda_torch


def test_runner_on_the_fake_engine(fake_trt, monkeypatch):
    from llmc.runtime.trt.runner import TrtRunner

    monkeypatch.setitem(sys.modules, "torch", fake_cuda_torch())
    runner = TrtRunner(b"PLAN", host_code_allowed=True)
    assert runner._runtime.engine_host_code_allowed is True
    assert runner.input_names == ["x", "mask"] and runner.output_names == ["y"]
    x = np.arange(6, dtype=np.float64).reshape(2, 3)  # float64 and int feeds are cast to the engine's types
    mask = np.array([[1, 0, 1], [0, 0, 1]])
    out = runner.run({"x": x, "mask": mask})
    np.testing.assert_array_equal(out["y"], (2 * x + mask).astype(np.float32))
    assert out["y"].dtype == np.float32 and runner.context.shapes == {"x": (2, 3), "mask": (2, 3)}
    with pytest.raises(LlmcError, match=r"missing input\(s\) mask; the engine takes x, mask"):
        runner.run({"x": x})
    with pytest.raises(LlmcError, match=r"unknown input\(s\) z"):
        runner.run({"x": x, "mask": mask, "z": x})
    with pytest.raises(
        LlmcError,
        match=r"input 'x' shape \[5, 3\] is outside the engine's optimization profile \(\[1, 3\] to \[4, 3\]\)",
    ):
        runner.run({"x": np.zeros((5, 3)), "mask": np.zeros((5, 3))})
    with pytest.raises(LlmcError, match="input 'x' has rank 1"):
        runner.run({"x": np.zeros(3), "mask": mask})


def test_runner_refuses_what_it_cannot_load(fake_trt, monkeypatch):
    from llmc.runtime.trt.runner import TrtRunner, numpy_dtype

    monkeypatch.setitem(sys.modules, "torch", fake_cuda_torch())
    with pytest.raises(LlmcError, match="could not load the engine"):
        TrtRunner(b"plan from elsewhere")
    assert numpy_dtype(fake_trt, fake_trt.DataType.INT64) == np.int64
    with pytest.raises(LlmcError, match="tensor 'logits' has TensorRT type BF16"):
        numpy_dtype(fake_trt, fake_trt.DataType.BF16, "logits")
    no_gpu = fake_cuda_torch()
    no_gpu.cuda.is_available = lambda: False
    monkeypatch.setitem(sys.modules, "torch", no_gpu)
    with pytest.raises(LlmcError, match="needs a CUDA GPU"):
        TrtRunner(b"PLAN")


def test_trt_runner_is_a_backend_runner(fake_trt, monkeypatch):
    from llmc.runtime.base import Runner
    from llmc.runtime.trt.runner import TrtRunner

    monkeypatch.setitem(sys.modules, "torch", fake_cuda_torch())
    assert isinstance(TrtRunner(b"PLAN"), Runner)
