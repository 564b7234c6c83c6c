"""The ``fake_trt`` fixture: the fake ``tensorrt`` (10.x and 11.x) in ``sys.modules``."""

from __future__ import annotations

import sys
import types

import pytest

from tests.runtime.trt.support import make_fake_tensorrt


@pytest.fixture(params=["10.13.0.35", "11.0.0.1"])
def fake_trt(request, monkeypatch) -> types.ModuleType:
    fake = make_fake_tensorrt(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake
