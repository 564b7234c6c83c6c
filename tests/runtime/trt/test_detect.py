"""Finding TensorRT: a missing one is one line saying what to install."""

from __future__ import annotations

import sys

import pytest

from llmc.errors import LlmcError
from llmc.runtime.trt.detect import import_tensorrt, tensorrt_available


def test_import_tensorrt_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert not tensorrt_available()
    with pytest.raises(LlmcError) as info:
        import_tensorrt()
    text = str(info.value)
    assert "pip install 'llmc[trt]'" in text and "--no-engine" in text and "\n" not in text
