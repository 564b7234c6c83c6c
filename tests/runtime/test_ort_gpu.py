"""GPU devices of the ONNX Runtime backend, checked without a GPU.

Provider options for cuda/tensorrt, their round trip through the manifest, the missing-provider
error and the fallback, the check for a provider ONNX Runtime silently dropped, and the runner's
IOBinding path (with a recording fake session, and for real on ONNX Runtime's CPU device). The
tests marked ``gpu`` run a real session on CUDA / TensorRT and skip where those are missing.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime
import pytest

from llmc.errors import LlmcError
from llmc.runtime.ort import (
    DeviceFallbackWarning,
    OrtRunner,
    SessionConfig,
    check_active_provider,
    create_session,
    resolve_device,
)
from llmc.runtime.ort.loader import CPU, CUDA, TRT, trt_cache_dir
from tests.helpers import make_model

ALL_PROVIDERS = [TRT, CUDA, CPU]
PROFILES = {"input_ids": [[1, 1], [1, 128], [8, 128]], "attention_mask": [[1, 1], [1, 128], [8, 128]]}
# The SessionConfig fields of artifacts written before the GPU fields existed.
OLD_OPTIONS = {
    "device": "cpu", "graph_optimization_level": "all", "intra_op_num_threads": 2, "inter_op_num_threads": 0,
    "enable_mem_pattern": True, "enable_cpu_mem_arena": True, "execution_mode": "sequential",
    "execution_order": "default", "disabled_optimizers": ["SkipLayerNormFusion"],
}


@pytest.fixture
def providers(monkeypatch):
    """Set what ``onnxruntime.get_available_providers()`` reports."""

    def set_available(names: list[str]) -> None:
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(names))

    return set_available


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "llmc-cache"))
    return tmp_path / "llmc-cache" / "ort-trt"


def _scaled_model() -> onnx.ModelProto:
    """y = relu(x) * k, k an overridable initializer (also a graph input)."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 2])
    k = oh.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 2])
    nodes = [oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Mul", ["r", "k"], ["y"])]
    init = onnx.numpy_helper.from_array(np.float32(2.0), "k")
    return make_model(nodes, [x, k], [y], [init])


# -- provider options ------------------------------------------------------------------------------


def test_cpu_provider_options_are_empty(providers):
    providers(ALL_PROVIDERS)
    config = SessionConfig()
    assert config.providers() == [CPU]
    assert config.provider_options() == [{}]


def test_cuda_provider_options(providers):
    providers(ALL_PROVIDERS)
    config = SessionConfig(device="cuda", device_id=1)
    assert config.providers() == [CUDA, CPU]
    assert config.provider_options() == [
        {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested",
         "enable_cuda_graph": False},
        {},
    ]
    tuned = SessionConfig(device="cuda", cudnn_conv_algo_search="EXHAUSTIVE", enable_cuda_graph=True)
    assert tuned.provider_options()[0]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert tuned.provider_options()[0]["enable_cuda_graph"] is True


def test_tensorrt_provider_options_and_profile_strings(providers, cache):
    providers(ALL_PROVIDERS)
    config = SessionConfig(device="tensorrt", profiles=PROFILES, trt_max_workspace_size=2**32,
                           trt_builder_optimization_level=5)
    assert config.providers() == [TRT, CUDA, CPU]
    trt, cuda, cpu = config.provider_options()
    assert trt == {
        "device_id": 0,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_max_workspace_size": 2**32,
        "trt_builder_optimization_level": 5,
        "trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1",
        "trt_profile_opt_shapes": "input_ids:1x128,attention_mask:1x128",
        "trt_profile_max_shapes": "input_ids:8x128,attention_mask:8x128",
    }
    # Precision lives in the graph (casts, Q/DQ): TensorRT's precision flags stay off.
    assert not any(key in trt for key in ("trt_fp16_enable", "trt_int8_enable", "trt_bf16_enable"))
    assert cuda["device_id"] == 0 and cuda["arena_extend_strategy"] == "kSameAsRequested"
    assert cpu == {}
    # No profiles: no profile keys (ONNX Runtime then builds profiles from the shapes it sees).
    assert not any(k.startswith("trt_profile") for k in SessionConfig(device="tensorrt").options_for(TRT))


def test_trt_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMC_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert trt_cache_dir() == tmp_path / "home" / ".cache" / "llmc" / "ort-trt"
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "c"))
    assert trt_cache_dir() == tmp_path / "c" / "ort-trt"
    assert trt_cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"
    config = SessionConfig(device="tensorrt", trt_cache_dir=str(tmp_path / "mine"))
    assert config.options_for(TRT)["trt_engine_cache_path"] == str(tmp_path / "mine")
    # The manifest keeps None: the directory is the loading machine's, not the building one's.
    assert SessionConfig(device="tensorrt").to_dict()["trt_cache_dir"] is None


# -- manifest round trip ---------------------------------------------------------------------------


def test_round_trip_through_json_and_old_manifests():
    config = SessionConfig(device="tensorrt", device_id=1, cudnn_conv_algo_search="DEFAULT",
                           arena_extend_strategy="kNextPowerOfTwo", enable_cuda_graph=True,
                           trt_cache_dir="/tmp/x", trt_max_workspace_size=1 << 30,
                           trt_builder_optimization_level=4, profiles=PROFILES, fallback=True)
    assert SessionConfig.from_dict(config.to_dict()) == config
    assert SessionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # Tuples (Python callers) become lists (the JSON form), so a round trip compares equal.
    tuples = SessionConfig(profiles={"x": ((1, 2), (1, 2), (1, 2))})
    assert tuples.profiles == {"x": [[1, 2], [1, 2], [1, 2]]}
    assert SessionConfig.from_dict(json.loads(json.dumps(tuples.to_dict()))) == tuples
    old = SessionConfig.from_dict(OLD_OPTIONS)
    assert old == SessionConfig(intra_op_num_threads=2, disabled_optimizers=["SkipLayerNormFusion"])
    assert (old.device_id, old.profiles, old.fallback, old.trt_cache_dir) == (0, {}, False, None)
    assert SessionConfig.from_dict({**OLD_OPTIONS, "some_future_field": 1}) == old


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"profiles": {"x": [[1, 1], [1, 2]]}}, "three shapes"),
        ({"profiles": {"x": [[1, 1], [1, 2], [1]]}}, "three shapes"),
        ({"profiles": {"x": [[1, 4], [1, 2], [1, 8]]}}, "min <= opt <= max"),
        ({"profiles": {"x": [[-1, 1], [1, 1], [1, 1]]}}, "min <= opt <= max"),
        ({"profiles": {"x": [[1.5], [2], [3]]}}, "lists of integers"),
        ({"profiles": {"a,b": [[1], [1], [1]]}}, "rename the input"),
        ({"cudnn_conv_algo_search": "FAST"}, "cudnn_conv_algo_search"),
        ({"arena_extend_strategy": "grow"}, "arena_extend_strategy"),
        ({"trt_builder_optimization_level": 6}, "0..5"),
        ({"trt_max_workspace_size": -1}, "workspace"),
        ({"device_id": -1}, "device id"),
    ],
)
def test_invalid_gpu_fields_are_one_line_errors(fields, message):
    with pytest.raises(LlmcError, match=message) as info:
        SessionConfig(device="tensorrt", **fields)
    assert "\n" not in str(info.value)


# -- missing providers and fallback ----------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_missing_gpu_provider_error(providers, device):
    providers([CPU])
    with pytest.raises(LlmcError) as info:
        SessionConfig(device=device).providers()
    text = str(info.value)
    assert "\n" not in text
    for part in (f"device '{device}'", "onnxruntime-gpu", "pip install 'llmc[gpu]'", "pip uninstall onnxruntime",
                 "both packages provide the `onnxruntime` module", "--device cpu"):
        assert part in text, part
    with pytest.raises(LlmcError, match="onnxruntime-gpu"):
        resolve_device(device)


def test_missing_tensorrt_with_cuda_present_points_at_tensorrt(providers):
    providers([CUDA, CPU])
    with pytest.raises(LlmcError, match=r"TensorrtExecutionProvider.*llmc\[trt\].*--device cuda"):
        SessionConfig(device="tensorrt").providers()


def test_fallback_returns_cpu_with_one_warning(providers):
    providers([CPU])
    assert resolve_device("cpu") == ("cpu", None)
    device, reason = resolve_device("cuda", allow_fallback=True)
    assert device == "cpu" and "CUDAExecutionProvider" in reason and "running on cpu" in reason
    device, reason = resolve_device("tensorrt", allow_fallback=True)
    assert device == "cpu" and "TensorrtExecutionProvider" in reason
    with pytest.warns(DeviceFallbackWarning) as caught:
        assert SessionConfig(device="tensorrt", fallback=True).providers() == [CPU]
    assert len(caught) == 1 and "TensorrtExecutionProvider" in str(caught[0].message)
    with pytest.warns(DeviceFallbackWarning):
        assert SessionConfig(device="cuda", fallback=True).provider_options() == [{}]


def test_tensorrt_falls_back_to_cuda_when_cuda_is_there(providers):
    providers([CUDA, CPU])
    assert resolve_device("tensorrt", allow_fallback=True)[0] == "cuda"
    with pytest.warns(DeviceFallbackWarning):
        assert SessionConfig(device="tensorrt", fallback=True).providers() == [CUDA, CPU]


def test_no_warning_when_the_provider_is_there(providers):
    providers(ALL_PROVIDERS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert SessionConfig(device="tensorrt", fallback=True).providers() == [TRT, CUDA, CPU]


# -- providers ONNX Runtime dropped at session creation --------------------------------------------


class _ProvidersOnly:
    def __init__(self, active: list[str]) -> None:
        self.active = active

    def get_providers(self) -> list[str]:
        return self.active


def test_check_active_provider():
    dropped = _ProvidersOnly([CUDA, CPU])  # TensorRT listed, its libraries failed to load
    assert check_active_provider(dropped, CUDA) is None
    assert check_active_provider(_ProvidersOnly([CPU]), CPU) is None
    with pytest.raises(LlmcError) as info:
        check_active_provider(dropped, TRT)
    text = str(info.value)
    assert "\n" not in text and "TensorrtExecutionProvider" in text and "libnvinfer" in text
    assert "--device cuda" in text
    with pytest.raises(LlmcError, match=r"CUDAExecutionProvider.*cuDNN.*--device cpu"):
        check_active_provider(_ProvidersOnly([CPU]), CUDA)
    with pytest.warns(DeviceFallbackWarning) as caught:
        reason = check_active_provider(dropped, TRT, fallback=True)
    assert len(caught) == 1 and "TensorrtExecutionProvider" in reason and "running on cuda" in reason


class _FakeInferenceSession:
    """Stands in for ``onnxruntime.InferenceSession``: records its arguments, and enables only
    ``ACTIVE`` of the providers it is given (as when TensorRT's libraries fail to load)."""

    ACTIVE = [CUDA, CPU]
    created: list[dict] = []

    def __init__(self, source, sess_options=None, providers=None, provider_options=None, **kwargs) -> None:
        type(self).created.append({"providers": providers, "provider_options": provider_options, **kwargs})
        self._providers = [p for p in providers if p in self.ACTIVE]

    def get_providers(self) -> list[str]:
        return self._providers


def test_create_session_passes_options_and_catches_a_dropped_provider(providers, cache, monkeypatch):
    providers(ALL_PROVIDERS)
    monkeypatch.setattr(onnxruntime, "InferenceSession", _FakeInferenceSession)
    _FakeInferenceSession.created = []
    config = SessionConfig(device="tensorrt", profiles=PROFILES)
    with pytest.raises(LlmcError, match="TensorrtExecutionProvider is installed but onnxruntime did not enable it"):
        create_session(b"model", config)
    created = _FakeInferenceSession.created[0]
    assert created["providers"] == [TRT, CUDA, CPU]
    assert created["provider_options"] == config.provider_options()
    assert cache.is_dir()  # made before ONNX Runtime (which creates only the last component)
    with pytest.warns(DeviceFallbackWarning):
        session = create_session(b"model", SessionConfig(device="tensorrt", fallback=True))
    assert session.get_providers() == [CUDA, CPU]
    assert create_session(b"model", SessionConfig(device="cuda")).get_providers() == [CUDA, CPU]


# -- the runner's IOBinding path -------------------------------------------------------------------


class _Arg:
    def __init__(self, name: str) -> None:
        self.name = name


class _RecordingBinding:
    def __init__(self, log: list) -> None:
        self.log = log

    def bind_cpu_input(self, name, array):
        self.log.append(("bind_cpu_input", name, array.shape, array.flags["C_CONTIGUOUS"]))

    def bind_ortvalue_input(self, name, value):
        self.log.append(("bind_ortvalue_input", name))

    def bind_output(self, name, device_type="cpu", device_id=0):
        self.log.append(("bind_output", name, device_type, device_id))

    def synchronize_outputs(self):
        self.log.append(("synchronize_outputs",))

    def copy_outputs_to_cpu(self):
        self.log.append(("copy_outputs_to_cpu",))
        return [np.zeros(2, np.float32), np.ones(3, np.float32)]

    def get_outputs(self):
        return ["device-value-0", "device-value-1"]


class _FakeGpuSession:
    """A session on ``provider`` that records how the runner drives it."""

    def __init__(self, provider: str = CUDA, device_id: str = "1") -> None:
        self.provider, self.device_id, self.log = provider, device_id, []

    def get_inputs(self):
        return [_Arg("input_ids"), _Arg("attention_mask")]

    def get_overridable_initializers(self):
        return []

    def get_outputs(self):
        return [_Arg("last_hidden_state"), _Arg("pooled")]

    def get_providers(self):
        return [self.provider, CPU] if self.provider != CPU else [CPU]

    def get_provider_options(self):
        return {self.provider: {"device_id": self.device_id}, CPU: {}}

    def io_binding(self):
        self.log.append(("io_binding",))
        return _RecordingBinding(self.log)

    def run_with_iobinding(self, binding, run_options=None):
        self.log.append(("run_with_iobinding",))

    def run(self, names, feeds):
        self.log.append(("run", tuple(names)))
        return [np.zeros(2, np.float32), np.ones(3, np.float32)]


FEEDS = {"input_ids": np.ones((8, 128), np.int64)[:, ::1], "attention_mask": np.ones((128, 8), np.int64).T}


@pytest.mark.parametrize("provider", [CUDA, TRT])
def test_gpu_session_runs_through_iobinding(provider):
    session = _FakeGpuSession(provider)
    runner = OrtRunner(session)
    assert (runner.device, runner.device_id, runner.io_binding) == ("cuda", 1, True)
    out = runner.run(FEEDS)
    assert list(out) == ["last_hidden_state", "pooled"] and out["pooled"].shape == (3,)
    assert session.log == [
        ("io_binding",),
        ("bind_cpu_input", "input_ids", (8, 128), True),
        ("bind_cpu_input", "attention_mask", (8, 128), True),  # made contiguous for the copy
        ("bind_output", "last_hidden_state", "cuda", 1),
        ("bind_output", "pooled", "cuda", 1),
        ("run_with_iobinding",),
        ("synchronize_outputs",),
        ("copy_outputs_to_cpu",),
    ]
    session.log.clear()
    assert runner.run_bound(FEEDS) == {"last_hidden_state": "device-value-0", "pooled": "device-value-1"}
    assert ("copy_outputs_to_cpu",) not in session.log and ("run", ("last_hidden_state", "pooled")) not in session.log
    with pytest.raises(LlmcError, match="missing input"):
        runner.run_bound({"input_ids": FEEDS["input_ids"]})


def test_explicit_device_and_cpu_session_keeps_session_run():
    session = _FakeGpuSession(CUDA, device_id="3")
    runner = OrtRunner(session, device="tensorrt", device_id=0)
    assert (runner.device, runner.device_id) == ("cuda", 0)
    runner.run(FEEDS)
    assert ("bind_output", "pooled", "cuda", 0) in session.log
    cpu = _FakeGpuSession(CPU)
    runner = OrtRunner(cpu)
    assert (runner.device, runner.io_binding) == ("cpu", False)
    runner.run(FEEDS)
    assert cpu.log == [("run", ("last_hidden_state", "pooled"))]
    with pytest.raises(LlmcError, match="unknown runner device"):
        OrtRunner(cpu, device="tpu")


def test_real_iobinding_on_the_cpu_device():
    """ONNX Runtime's CPU provider binds on device "cpu": the IOBinding path end to end."""
    session = create_session(_scaled_model().SerializeToString(), SessionConfig())
    plain, bound = OrtRunner(session), OrtRunner(session, io_binding=True)
    assert (plain.io_binding, bound.io_binding, bound.device) == (False, True, "cpu")
    x = np.array([[-1.0, 2.0], [3.0, -4.0]], np.float32)
    expected = plain.run({"x": x})["y"]
    np.testing.assert_array_equal(expected, [[0.0, 4.0], [6.0, 0.0]])
    np.testing.assert_array_equal(bound.run({"x": x})["y"], expected)
    np.testing.assert_array_equal(bound.run({"x": x.T.copy().T})["y"], expected)  # non-contiguous view
    # An overridden initializer default cannot be bound: run() takes session.run for it.
    k = np.array(3.0, np.float32)
    np.testing.assert_array_equal(bound.run({"x": x, "k": k})["y"], 1.5 * expected)
    np.testing.assert_array_equal(bound.run({**bound.to_device({"x": x}), "k": k})["y"], 1.5 * expected)
    with pytest.raises(LlmcError, match="run_bound cannot override initializer default"):
        bound.run_bound({"x": x, "k": k})
    values = bound.run_bound({"x": x})
    assert values["y"].device_name() == "cpu"
    np.testing.assert_array_equal(values["y"].numpy(), expected)
    on_device = bound.to_device({"x": x})
    np.testing.assert_array_equal(bound.run(on_device)["y"], expected)
    with pytest.raises(LlmcError, match="unknown input"):
        bound.run({"x": x, "z": x})


# -- real GPU ---------------------------------------------------------------------------------------


def _has(provider: str) -> bool:
    return provider in onnxruntime.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _has(CUDA), reason="needs onnxruntime-gpu with CUDAExecutionProvider and an NVIDIA GPU")
def test_cuda_session_matches_cpu():
    data = _scaled_model().SerializeToString()
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    expected = OrtRunner(create_session(data, SessionConfig())).run({"x": x})["y"]
    runner = OrtRunner(create_session(data, SessionConfig(device="cuda")))
    assert runner.session.get_providers()[0] == CUDA and runner.device == "cuda"
    np.testing.assert_allclose(runner.run({"x": x})["y"], expected, rtol=1e-6)
    value = runner.run_bound(runner.to_device({"x": x}))["y"]
    assert value.device_name().lower() == "cuda"
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.skipif(not _has(TRT), reason="needs onnxruntime-gpu with TensorrtExecutionProvider, TensorRT and a GPU")
def test_tensorrt_session_with_profile_matches_cpu(tmp_path):
    data = _scaled_model().SerializeToString()
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    expected = OrtRunner(create_session(data, SessionConfig())).run({"x": x})["y"]
    config = SessionConfig(device="tensorrt", trt_cache_dir=str(tmp_path / "trt"),
                           profiles={"x": [[1, 2], [4, 2], [8, 2]]})
    runner = OrtRunner(create_session(data, config))  # raises if TensorRT's libraries did not load
    assert runner.session.get_providers()[0] == TRT
    np.testing.assert_allclose(runner.run({"x": x})["y"], expected, rtol=1e-5)
    assert any((tmp_path / "trt").iterdir())  # engine / timing cache written
