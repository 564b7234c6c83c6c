"""Shared by the TensorRT backend tests: a thin fake ``tensorrt`` module, CPU torch posing as
CUDA torch, and cache-key parts.

The fake records what llmc calls: it stands in only because TensorRT is missing here, and it
checks llmc's own logic (which flags, which limits, which shapes) for the 10.x and 11.x API
surfaces.
"""

from __future__ import annotations

import enum
import types

import numpy as np
import pytest

from llmc.targets.trt.config import EngineSettings
from llmc.targets.trt.profiles import ProfileShape, parse_profile_specs

KEY_PARTS = dict(
    model_sha256="ab" * 32,
    trt_version="10.13.0.35",
    compute_capability="9.0",
    profiles={"ids": ProfileShape((1, 1), (1, 128), (8, 512))},
    flags=EngineSettings().to_dict(),
)
PROFILES = parse_profile_specs(["input_ids:1x1:4x128:8x512"])
PLUGIN_NOT_FOUND = 'creator && "Plugin not found, are the plugin name, version, and namespace correct?"'


class _FakeTensor:
    def __init__(self, name: str, shape: tuple[int, ...], is_shape_tensor: bool = False) -> None:
        self.name, self.shape, self.is_shape_tensor = name, shape, is_shape_tensor


class _FakeNetwork:
    def __init__(self, flags: int, inputs: list[_FakeTensor]) -> None:
        self.flags, self.inputs = flags, inputs

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> _FakeTensor:
        return self.inputs[index]


class _FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name, min, opt, max) -> None:  # noqa: A002 - TensorRT's parameter names
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class _FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+tuned"


class _FakeBuilderConfig:
    def __init__(self, fake) -> None:
        self.fake = fake
        self.pool_limits: dict = {}
        self.flags: list = []
        self.builder_optimization_level = 3
        self.hardware_compatibility_level = fake.HardwareCompatibilityLevel.NONE
        self.profiles: list[_FakeProfile] = []
        self.timing_cache_calls: list[tuple[bytes, bool]] = []
        self.timing_cache: _FakeTimingCache | None = None

    def set_memory_pool_limit(self, pool, size) -> None:
        self.pool_limits[pool] = size

    def set_flag(self, flag) -> None:
        assert flag in list(self.fake.BuilderFlag), (
            f"{flag} does not exist in TensorRT {self.fake.__version__}"
        )
        self.flags.append(flag)

    def add_optimization_profile(self, profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> _FakeTimingCache:
        return _FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        self.timing_cache_calls.append((cache.data, ignore_mismatch))
        if cache.data.startswith(b"foreign"):
            return False  # a cache from another TensorRT/GPU
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> _FakeTimingCache | None:
        return self.timing_cache


class _FakeBuilder:
    fake: types.ModuleType  # bound per fake module in make_fake_tensorrt

    def __init__(self, logger) -> None:
        self.logger = logger
        self.fake.builders.append(self)

    def create_network(self, flags: int) -> _FakeNetwork:
        self.network = _FakeNetwork(flags, self.fake.network_inputs)
        return self.network

    def create_builder_config(self) -> _FakeBuilderConfig:
        self.config = _FakeBuilderConfig(self.fake)
        return self.config

    def create_optimization_profile(self) -> _FakeProfile:
        return _FakeProfile()

    def build_serialized_network(self, network, config):
        if self.fake.plan is None:
            self.logger.log(self.fake.ILogger.Severity.ERROR, "out of memory while timing tactic 7\ndetail")
        return self.fake.plan


class _FakeParserError:
    def __init__(self, desc, node, name, op) -> None:
        self._desc, self._node, self._name, self._op = desc, node, name, op

    def desc(self):
        return self._desc

    def node(self):
        return self._node

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op

    def code(self):
        return types.SimpleNamespace(name="INVALID_NODE")

    def func(self):
        return "checkFallbackPluginImporter"


class _FakeParser:
    fake: types.ModuleType

    def __init__(self, network, logger) -> None:
        self.network = network

    def parse_from_file(self, path: str) -> bool:
        self.fake.parsed.append(path)
        return not self.fake.parser_errors

    @property
    def num_errors(self) -> int:
        return len(self.fake.parser_errors)

    def get_error(self, index: int) -> _FakeParserError:
        return _FakeParserError(*self.fake.parser_errors[index])


class _FakeRuntime:
    """Deserializes b"PLAN" into an engine computing y = 2 * x + mask (x float32 [-1, 3], mask bool)."""

    fake: types.ModuleType

    def __init__(self, logger) -> None:
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, data: bytes):
        return _FakeEngine(self.fake) if bytes(data) == b"PLAN" else None


class _FakeEngine:
    def __init__(self, fake) -> None:
        self.fake = fake
        self.names = ["x", "mask", "y"]
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str):
        return self.fake.TensorIOMode.OUTPUT if name == "y" else self.fake.TensorIOMode.INPUT

    def get_tensor_dtype(self, name: str):
        return self.fake.DataType.BOOL if name == "mask" else self.fake.DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, 3)

    def get_tensor_profile_shape(self, name: str, profile: int):
        return [(1, 3), (2, 3), (4, 3)]

    def create_execution_context(self):
        return _FakeContext()


class _FakeContext:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        self.shapes[name] = tuple(shape)
        return 1 <= shape[0] <= 4

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes.get(name, self.shapes["x"])

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def execute_async_v3(self, stream_handle: int) -> bool:
        import ctypes

        count = int(np.prod(self.shapes["x"]))

        def view(name, ctype, dtype):
            return np.frombuffer((ctype * count).from_address(self.addresses[name]), dtype=dtype)

        x, mask = view("x", ctypes.c_float, np.float32), view("mask", ctypes.c_bool, np.bool_)
        view("y", ctypes.c_float, np.float32)[:] = 2 * x + mask
        return True


def fake_cuda_torch():
    """CPU torch posing as CUDA torch: same tensors and pointers, device arguments ignored."""
    import contextlib

    torch = pytest.importorskip("torch")
    stream = types.SimpleNamespace(cuda_stream=0, synchronize=lambda: None)
    fake = types.SimpleNamespace(
        cuda=types.SimpleNamespace(
            is_available=lambda: True, Stream=lambda: stream, stream=lambda s: contextlib.nullcontext()
        ),
        as_tensor=lambda data, device=None: torch.as_tensor(data),
        empty=lambda shape, dtype=None, device=None: torch.empty(shape, dtype=dtype),
    )
    for name in ("float32", "float16", "int8", "int32", "int64", "bool", "uint8"):
        setattr(fake, name, getattr(torch, name))
    return fake


def make_fake_tensorrt(version: str) -> types.ModuleType:
    """A ``tensorrt`` stand-in with the 10.x or 11.x names llmc uses (11 has no FP16/INT8 flags)."""
    major = int(version.split(".")[0])
    fake = types.ModuleType("tensorrt")
    fake.__version__ = version
    network_flags = {"STRONGLY_TYPED": 1}
    if major <= 10:
        network_flags["EXPLICIT_BATCH"] = 0  # deprecated and ignored in 10, gone in 11
    fake.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", network_flags)
    builder_names = ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "REFIT", "SPARSE_WEIGHTS"]  # 11 keeps them
    if major < 11:
        builder_names += ["FP16", "INT8", "BF16", "OBEY_PRECISION_CONSTRAINTS"]
    fake.BuilderFlag = enum.IntEnum("BuilderFlag", builder_names)
    fake.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE", "TACTIC_SHARED_MEMORY"])
    fake.HardwareCompatibilityLevel = enum.IntEnum(
        "HardwareCompatibilityLevel", ["NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"]
    )

    class ILogger:
        Severity = enum.IntEnum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])

        def __init__(self) -> None:
            pass

    class Logger(ILogger):
        WARNING = ILogger.Severity.WARNING

        def __init__(self, level=None) -> None:
            self.level = level

    fake.ILogger, fake.Logger = ILogger, Logger
    fake.TensorIOMode = enum.IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    fake.DataType = enum.IntEnum(
        "DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4"]
    )
    fake.Runtime = type("Runtime", (_FakeRuntime,), {"fake": fake})
    fake.Builder = type("Builder", (_FakeBuilder,), {"fake": fake})
    fake.OnnxParser = type("OnnxParser", (_FakeParser,), {"fake": fake})
    fake.network_inputs = [_FakeTensor("input_ids", (-1, -1)), _FakeTensor("position", (1, 16))]
    fake.plan, fake.parser_errors, fake.parsed, fake.builders = b"PLAN", [], [], []
    return fake
