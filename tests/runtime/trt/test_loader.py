"""The engine build (``build_engine``) on the fake ``tensorrt``, and a real engine where TensorRT
and a CUDA GPU are present (marked ``trt``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from llmc.errors import LlmcError
from llmc.runtime.trt.detect import tensorrt_available
from llmc.runtime.trt.trust import engine_manifest, load_or_create_key, verify_plan
from llmc.targets.trt.config import EngineSettings
from llmc.targets.trt.loader import build_engine
from llmc.targets.trt.profiles import check_profiles, parse_profile_specs
from tests.runtime.trt.support import PLUGIN_NOT_FOUND, PROFILES


def test_build_engine_end_to_end_on_the_fake(fake_trt, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"not parsed by the fake")
    cache_file = tmp_path / "cache" / "timing.cache"
    config = EngineSettings(profiles=PROFILES, timing_cache=cache_file)
    assert build_engine(onnx_path, config) == b"PLAN"
    assert fake_trt.parsed == [str(onnx_path)]
    network = fake_trt.builders[-1].network
    assert network.flags == 1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert cache_file.read_bytes() == b"+tuned"  # the updated cache was saved
    assert build_engine(onnx_path, config) == b"PLAN"
    assert fake_trt.builders[-1].config.timing_cache_calls == [(b"+tuned", False)]
    assert cache_file.read_bytes() == b"+tuned+tuned"


def test_build_engine_errors_on_the_fake(fake_trt, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"x")
    config = EngineSettings(profiles=PROFILES)
    fake_trt.plan = None
    with pytest.raises(
        LlmcError, match="could not build the engine: out of memory while timing tactic 7; rerun"
    ):
        build_engine(onnx_path, config)
    fake_trt.parser_errors = [(PLUGIN_NOT_FOUND, 3, "", "")]
    nodes = [("a", "Add")] * 3 + [("/mlp/FastGelu", "FastGelu")]
    with pytest.raises(LlmcError, match=r"node '/mlp/FastGelu' \(FastGelu\).*has no importer for FastGelu"):
        build_engine(onnx_path, config, model_nodes=nodes)
    with pytest.raises(LlmcError, match="does not exist"):
        build_engine(tmp_path / "absent.onnx", config)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.trt
def test_real_engine_builds_and_runs(tmp_path, monkeypatch):
    if not tensorrt_available():
        pytest.skip("TensorRT is not installed (pip install 'llmc[trt]')")
    if not _cuda_available():
        pytest.skip("no CUDA GPU visible to torch")
    from llmc.runtime.trt.detect import device_info, tensorrt_version
    from llmc.runtime.trt.runner import TrtRunner

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = oh.make_graph(
        [
            oh.make_node("MatMul", ["x", "w"], ["xw"], name="mm"),
            oh.make_node("Add", ["xw", "b"], ["y"], name="add"),
        ],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])],
        initializer=[onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")],
    )
    onnx_path = tmp_path / "mm.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), onnx_path)

    profiles = check_profiles([("x", ("batch", 4))], parse_profile_specs(["x:1x4:2x4:8x4"]))
    config = EngineSettings(profiles=profiles, workspace_bytes=1 << 28, timing_cache=tmp_path / "timing.cache")
    plan = build_engine(onnx_path, config, model_nodes=[("mm", "MatMul"), ("add", "Add")])
    assert (tmp_path / "timing.cache").stat().st_size > 0

    monkeypatch.setenv("LLMC_ENGINE_KEY_FILE", str(tmp_path / "engine.key"))
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "model.plan").write_bytes(plan)
    info = device_info()
    engine = engine_manifest(
        tmp_path / "art" / "model.plan",
        load_or_create_key(),
        trt_version=tensorrt_version(),
        cuda_version=info["cuda"],
        gpu=info["gpu"],
        compute_capability=info["compute_capability"],
        profiles=profiles,
        flags=config.to_dict(),
        cache_key="0" * 64,
    )
    verified = verify_plan(
        tmp_path / "art",
        engine,
        trt_version=tensorrt_version(),
        compute_capability=info["compute_capability"],
    )

    runner = TrtRunner(verified)
    assert runner.input_names == ["x"] and runner.output_names == ["y"]
    x = rng.standard_normal((5, 4))  # float64: cast to the engine's float32
    np.testing.assert_allclose(runner.run({"x": x})["y"], x.astype(np.float32) @ w + b, rtol=1e-3, atol=1e-3)
    with pytest.raises(LlmcError, match="outside the engine's optimization profile"):
        runner.run({"x": np.zeros((9, 4), np.float32)})
    with pytest.raises(LlmcError, match="missing input"):
        runner.run({})
    with pytest.raises(LlmcError, match="unknown input"):
        runner.run({"x": x, "z": x})
