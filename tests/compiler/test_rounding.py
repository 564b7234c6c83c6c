"""fp32's rounding floor (llmc.compiler.rounding): a comparison that misses --tolerance is judged
again at 4x how far ONNX Runtime's own optimizations move the source; a wrong graph still fails."""

from __future__ import annotations

import types

import numpy as np
import pytest

from llmc.compiler import rounding


@pytest.fixture
def prep(monkeypatch):
    import llmc.compiler.stages as stages

    moved = {"y": np.array([10.0, -3.0, 1.0]) + np.array([1e-3, 0.0, 0.0])}  # ORT's optimizations: 1e-4 of scale 10
    calls = []

    def source_outputs(prep, config):  # noqa: ANN001, ANN202
        calls.append(config.graph_optimization_level)
        return moved

    monkeypatch.setattr(stages, "source_outputs", source_outputs)
    request = types.SimpleNamespace(values={"tolerance": None})  # the default tolerance
    return types.SimpleNamespace(tolerance=1e-4, rounding=None, calls=calls, request=request)


REFERENCE = {"y": np.array([10.0, -3.0, 1.0])}


def test_within_the_tolerance_the_source_is_not_run_again(prep):
    result = rounding.compared(prep, REFERENCE, {"y": REFERENCE["y"] + 5e-4})
    assert result.worst() is None and prep.calls == [] and prep.rounding is None


def test_a_miss_within_the_rounding_floor_passes_and_is_recorded(prep):
    result = rounding.compared(prep, REFERENCE, {"y": REFERENCE["y"] + np.array([3e-3, 0, 0])})
    assert result.worst() is None
    assert prep.calls == ["all"]  # the source with ONNX Runtime's own optimizations
    assert prep.rounding["ort_optimizations_moved"] == pytest.approx(1e-4)
    assert prep.rounding["tolerance"] == pytest.approx(4e-4)


def test_a_miss_beyond_the_floor_still_fails(prep):
    result = rounding.compared(prep, REFERENCE, {"y": REFERENCE["y"] + np.array([0.05, 0, 0])})
    assert result.worst() is not None and "max abs error" in result.worst().reason


def test_a_model_ort_does_not_move_keeps_the_tolerance(prep, monkeypatch):
    import llmc.compiler.stages as stages

    monkeypatch.setattr(stages, "source_outputs", lambda prep, config: REFERENCE)
    result = rounding.compared(prep, REFERENCE, {"y": REFERENCE["y"] + np.array([3e-3, 0, 0])})
    assert result.worst() is not None and prep.rounding["tolerance"] == 0.0


def test_a_tolerance_the_user_gave_is_kept(prep):
    prep.request.values["tolerance"] = 1e-4
    result = rounding.compared(prep, REFERENCE, {"y": REFERENCE["y"] + np.array([3e-3, 0, 0])})
    assert result.worst() is not None and prep.calls == []


def test_the_floor_is_capped(prep, monkeypatch):
    import llmc.compiler.stages as stages

    far = {"y": REFERENCE["y"] + np.array([1.0, 0, 0])}  # ORT's own optimizations move it 0.1 of scale
    monkeypatch.setattr(stages, "source_outputs", lambda prep, config: far)
    result = rounding.compared(prep, REFERENCE, {"y": REFERENCE["y"] + np.array([0.05, 0, 0])})
    assert result.worst() is not None  # 5e-3 of scale: over the 10x cap (1e-3)
