"""The TensorRT backend: profiles, cache keys, engine trust, parser errors, builder configuration.

Everything except the last test runs without TensorRT or a GPU. The builder tests drive the real
loader code against a thin fake ``tensorrt`` module (below) that records what is called: it
stands in only because TensorRT is missing here, and it checks llmc's own logic (which flags,
which limits, which shapes) for the 10.x and 11.x API surfaces. The ``trt``-marked test builds
and runs a real engine when TensorRT and a CUDA GPU are present.
"""

from __future__ import annotations

import enum
import stat
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from llmc.backends.trt import (
    EngineCache,
    EngineConfig,
    ParserErrorInfo,
    ProfileShape,
    build_engine,
    builder_flags,
    check_profiles,
    configure_builder,
    engine_cache_key,
    engine_manifest,
    explain_parser_errors,
    import_tensorrt,
    key_id,
    load_or_create_key,
    network_flags,
    parse_profile_specs,
    profiles_from_dict,
    profiles_to_dict,
    sign_plan,
    tensorrt_available,
    verify_plan,
)
from llmc.errors import LlmcError

# --- profiles -----------------------------------------------------------------------------


def test_parse_profile_specs_good():
    profiles = parse_profile_specs(["input_ids:1x1:1x128:8x512", "ns:past:1:4:8", " s : 2:2:2 "])
    assert profiles["input_ids"] == ProfileShape((1, 1), (1, 128), (8, 512))
    assert profiles["ns:past"] == ProfileShape((1,), (4,), (8,))  # split from the right
    assert profiles["s"].spec() == "2:2:2"
    assert parse_profile_specs(None) == {} and parse_profile_specs([]) == {}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("input_ids:1x1:8x512", "malformed --shapes spec 'input_ids:1x1:8x512'.*NAME:MIN:OPT:MAX"),
        (":1:1:1", "malformed"),
        ("x:1::4", "malformed"),
        ("x:1xa:1x2:1x3", "non-integer dim in '1xa'"),
        ("x:1.5:2:3", "non-integer"),
        ("x:1x1:1:1x1", "mixes ranks"),
        ("x:2:1:3", "MIN <= OPT <= MAX in dim 0"),
        ("x:0x1:1x1:1x1", "dim below 1"),
    ],
)
def test_parse_profile_specs_errors(spec, match):
    with pytest.raises(LlmcError, match=match) as info:
        parse_profile_specs([spec])
    assert "\n" not in str(info.value)


def test_parse_profile_specs_names_the_input_and_example():
    with pytest.raises(LlmcError, match=r"input 'ids'.*twice.*--shapes input_ids:1x1:1x128:8x512"):
        parse_profile_specs(["ids:1:1:1", "ids:1:2:3"])
    with pytest.raises(LlmcError, match="input 'ids'"):
        parse_profile_specs(["ids:3:2:1"])


def test_check_profiles_lists_every_missing_dynamic_input():
    inputs = [
        ("input_ids", ("batch", "sequence")),
        ("attention_mask", ("batch", "sequence")),
        ("token_type", (1, None)),
        ("scale", ()),
    ]
    with pytest.raises(LlmcError) as info:
        check_profiles(inputs, {})
    text = str(info.value)
    assert "\n" not in text
    assert "missing: input_ids [batch, sequence], attention_mask [batch, sequence], token_type [1, ?]" in text
    assert "--shapes input_ids:1x1:1x128:8x512" in text
    assert "--shapes attention_mask:1x1:1x128:8x512" in text
    assert "--shapes token_type:1x1:1x128:1x512" in text
    assert "scale" not in text  # static: no profile needed


def test_check_profiles_fills_static_inputs_and_keeps_given_ones():
    given = parse_profile_specs(["ids:1x1:2x64:4x128"])
    full = check_profiles([("ids", ("b", "s")), ("pos", (1, 64)), ("k", ())], given)
    assert list(full) == ["ids", "pos", "k"]
    assert full["ids"] is given["ids"]
    assert full["pos"] == ProfileShape((1, 64), (1, 64), (1, 64))
    assert full["k"].rank == 0
    # A profile for a static input is fine when it agrees with the model.
    assert check_profiles([("pos", (1, 64))], parse_profile_specs(["pos:1x64:1x64:1x64"]))


def test_check_profiles_errors():
    ids = [("input_ids", ("batch", 128)), ("mask", ("batch", 128))]
    with pytest.raises(LlmcError, match="does not have; its inputs are input_ids, mask"):
        check_profiles(ids, parse_profile_specs(["inputs_ids:1x128:1x128:1x128"]))
    with pytest.raises(LlmcError, match="has rank 1, but the model's input 'input_ids' has rank 2"):
        check_profiles(ids, parse_profile_specs(["input_ids:1:1:1", "mask:1x128:1x128:1x128"]))
    with pytest.raises(LlmcError, match=r"dim 1 to 1\.\.512, but the model fixes it at 128"):
        check_profiles(ids, parse_profile_specs(["input_ids:1x1:1x128:1x512", "mask:1x128:1x128:1x128"]))


def test_profiles_dict_round_trip():
    profiles = parse_profile_specs(["a:1x1:1x8:4x16", "b:3:3:3"])
    data = profiles_to_dict(profiles)
    assert data["a"] == {"min": [1, 1], "opt": [1, 8], "max": [4, 16]}
    assert profiles_from_dict(data) == profiles


# --- engine cache -------------------------------------------------------------------------

KEY_PARTS = dict(
    model_sha256="ab" * 32,
    trt_version="10.13.0.35",
    compute_capability="9.0",
    profiles={"ids": ProfileShape((1, 1), (1, 128), (8, 512))},
    flags=EngineConfig().to_dict(),
)


def test_engine_cache_key_is_stable_and_covers_every_part():
    base = engine_cache_key(**KEY_PARTS)
    assert base == engine_cache_key(**{**KEY_PARTS, "flags": dict(reversed(KEY_PARTS["flags"].items()))})
    assert base == engine_cache_key(**{**KEY_PARTS, "profiles": profiles_to_dict(KEY_PARTS["profiles"])})
    changed = [
        {"model_sha256": "cd" * 32},
        {"trt_version": "11.0.0.1"},
        {"compute_capability": "8.9"},
        {"profiles": {"ids": ProfileShape((1, 1), (1, 64), (8, 512))}},
        {"flags": EngineConfig(optimization_level=4).to_dict()},
        {"flags": EngineConfig(version_compatible=True).to_dict()},
    ]
    keys = {engine_cache_key(**{**KEY_PARTS, **change}) for change in changed}
    assert base not in keys and len(keys) == len(changed)
    assert len(base) == 64 and int(base, 16) >= 0


def test_engine_cache_round_trip(tmp_path):
    cache = EngineCache(tmp_path / "trt")
    key = engine_cache_key(**KEY_PARTS)
    assert cache.get(key) is None
    path = cache.put(key, b"plan-bytes")
    assert path == tmp_path / "trt" / f"{key}.plan"
    assert cache.get(key) == b"plan-bytes"
    assert [p.name for p in (tmp_path / "trt").iterdir()] == [f"{key}.plan"]  # no temp files left
    with pytest.raises(ValueError):
        cache.path("../escape")


def test_signed_engine_cache_treats_tampering_as_a_miss(tmp_path):
    cache = EngineCache(tmp_path, signing_key=b"k" * 32)
    cache.put("abc123", b"plan")
    assert cache.get("abc123") == b"plan"
    (tmp_path / "abc123.plan").write_bytes(b"evil")
    assert cache.get("abc123") is None
    assert EngineCache(tmp_path, signing_key=b"j" * 32).get("abc123") is None


def test_default_cache_dirs_follow_env(monkeypatch, tmp_path):
    from llmc.backends.trt import default_cache_dir, default_timing_cache_path

    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "trt"
    assert default_timing_cache_path() == tmp_path / "trt" / "timing.cache"
    assert EngineCache().directory == tmp_path / "trt"


# --- trust --------------------------------------------------------------------------------


@pytest.fixture()
def key_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "config" / "llmc" / "engine.key"
    monkeypatch.setenv("LLMC_ENGINE_KEY_FILE", str(path))
    return path


def _signed_artifact(directory: Path, key: bytes, data: bytes = b"\x00serialized engine\xff", **over) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    plan = directory / "model.plan"
    plan.write_bytes(data)
    fields = dict(
        trt_version="10.13.0.35",
        cuda_version="12.8",
        gpu="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        profiles=KEY_PARTS["profiles"],
        flags=EngineConfig().to_dict(),
        cache_key="f" * 64,
    )
    fields.update(over)
    return engine_manifest(plan, key, **fields)


def test_key_file_created_once_with_mode_0600(key_file):
    assert not key_file.exists()
    key = load_or_create_key()
    assert len(key) == 32 and key_file.read_bytes() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_or_create_key() == key
    assert len(key_id(key)) == 16 and key_id(key) != key.hex()[:16]


def test_short_key_file_is_refused(key_file):
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(b"short")
    with pytest.raises(LlmcError, match="holds 5 bytes"):
        load_or_create_key()


def test_sign_and_verify_round_trip(tmp_path, key_file):
    key = load_or_create_key()
    engine = _signed_artifact(tmp_path / "art", key)
    assert engine["built"] is True and engine["file"] == "model.plan"
    assert engine["key_id"] == key_id(key) and key.hex() not in str(engine)
    assert engine["hmac"] == sign_plan(b"\x00serialized engine\xff", key)
    assert engine["profiles"] == {"ids": {"min": [1, 1], "opt": [1, 128], "max": [8, 512]}}
    data = verify_plan(tmp_path / "art", engine, trt_version="10.13.0.35", compute_capability="9.0")
    assert data == b"\x00serialized engine\xff"
    assert verify_plan(tmp_path / "art", engine, key=key) == data


def test_tampered_plan_is_refused(tmp_path, key_file):
    engine = _signed_artifact(tmp_path / "art", load_or_create_key())
    (tmp_path / "art" / "model.plan").write_bytes(b"\x00serialized engine\xfe")
    with pytest.raises(
        LlmcError, match=r"model.plan is not the engine llmc built \(HMAC mismatch\); refusing"
    ):
        verify_plan(tmp_path / "art", engine)


def test_wrong_key_is_refused(tmp_path, key_file):
    engine = _signed_artifact(tmp_path / "art", b"other machine's key, 32 bytes..")
    load_or_create_key()  # this machine's key differs
    with pytest.raises(LlmcError, match="was signed with key .* not this machine's key"):
        verify_plan(tmp_path / "art", engine)


def test_forged_mac_under_same_key_id_is_refused(tmp_path, key_file):
    key = load_or_create_key()
    engine = _signed_artifact(tmp_path / "art", key)
    engine["hmac"] = sign_plan(b"\x00serialized engine\xff", b"x" * 32)
    with pytest.raises(LlmcError, match="HMAC mismatch"):
        verify_plan(tmp_path / "art", engine)


def test_missing_key_is_refused(tmp_path, key_file):
    engine = _signed_artifact(tmp_path / "art", b"k" * 32)
    with pytest.raises(LlmcError, match=f"engine key file {key_file} does not exist.*rebuild the engine"):
        verify_plan(tmp_path / "art", engine)
    assert not key_file.exists()  # verifying never mints a key


def test_version_and_compute_capability_mismatch_refused(tmp_path, key_file):
    engine = _signed_artifact(tmp_path / "art", load_or_create_key())
    with pytest.raises(
        LlmcError, match="built with TensorRT 10.13.0.35, but TensorRT 10.14.1.48 is installed"
    ):
        verify_plan(tmp_path / "art", engine, trt_version="10.14.1.48", compute_capability="9.0")
    with pytest.raises(LlmcError, match="built for compute capability 9.0, but this GPU is 8.9"):
        verify_plan(tmp_path / "art", engine, trt_version="10.13.0.35", compute_capability="8.9")


def test_compatibility_flags_widen_what_loads(tmp_path, key_file):
    flags = EngineConfig(version_compatible=True, hardware_compatibility="ampere_plus").to_dict()
    engine = _signed_artifact(tmp_path / "art", load_or_create_key(), flags=flags)
    assert verify_plan(tmp_path / "art", engine, trt_version="11.0.0.1", compute_capability="8.0")
    with pytest.raises(LlmcError, match="TensorRT 10.1.0"):  # never an older runtime
        verify_plan(tmp_path / "art", engine, trt_version="10.1.0")
    with pytest.raises(LlmcError, match="this GPU is 7.5"):
        verify_plan(tmp_path / "art", engine, compute_capability="7.5")


def test_no_engine_and_broken_manifests_refused(tmp_path, key_file):
    key = load_or_create_key()
    for engine in (None, {}, {"built": False}):
        with pytest.raises(LlmcError, match="built with --no-engine"):
            verify_plan(tmp_path, engine)
    engine = _signed_artifact(tmp_path / "art", key)
    (tmp_path / "art" / "model.plan").unlink()
    with pytest.raises(LlmcError, match="model.plan is missing"):
        verify_plan(tmp_path / "art", engine)
    engine = _signed_artifact(tmp_path / "art", key)
    with pytest.raises(LlmcError, match="lacks hmac, key_id"):
        verify_plan(tmp_path / "art", {k: v for k, v in engine.items() if k not in ("hmac", "key_id")})
    with pytest.raises(LlmcError, match="not a plain file name"):
        verify_plan(tmp_path / "art", {**engine, "file": "../model.plan"})


# --- parser errors ------------------------------------------------------------------------


PLUGIN_NOT_FOUND = 'creator && "Plugin not found, are the plugin name, version, and namespace correct?"'


def test_explain_parser_errors_names_the_node():
    nodes = [("embed", "Gather"), ("/attn/SkipLayerNorm", "SkipLayerNormalization")]
    # TensorRT 10's wording for an op it has no importer (and no plugin) for, with only an index.
    error = ParserErrorInfo(
        PLUGIN_NOT_FOUND, node_index=1, code="INVALID_NODE", func="checkFallbackPluginImporter"
    )
    assert str(explain_parser_errors([error], "10.13.0.35", nodes)) == (
        "TensorRT 10.13.0.35 cannot import node '/attn/SkipLayerNorm' (SkipLayerNormalization): Plugin not "
        "found, are the plugin name, version, and namespace correct?; TensorRT 10.13.0.35 has no importer for "
        "SkipLayerNormalization; disable the fusion that produced it or use --target ort"
    )
    older = ParserErrorInfo("No importer registered for op: FastGelu. Attempting to import as plugin.", 0)
    assert "has no importer for FastGelu" in str(explain_parser_errors([older], "10.0", [("g", "FastGelu")]))
    # The parser's own node name wins; other codes point at the support matrix; extra errors counted.
    err = explain_parser_errors(
        [
            ParserErrorInfo(
                "Unsupported datatype\nmore detail", 0, "gather_0", "Gather", "UNSUPPORTED_NODE_DATATYPE"
            ),
            ParserErrorInfo("second", 1),
            ParserErrorInfo("third", 1),
        ],
        "11.0.0.1",
        nodes,
    )
    assert (
        "node 'gather_0' (Gather): Unsupported datatype; see the TensorRT ONNX operator support matrix"
        in str(err)
    )
    assert str(err).endswith("(+2 more parser errors)") and "\n" not in str(err)
    assert "cannot import the model: bad graph" in str(
        explain_parser_errors([ParserErrorInfo("bad graph")], "10", None)
    )
    assert "node #7" in str(explain_parser_errors([ParserErrorInfo("x", 7)], "10", nodes))
    assert "reported no error" in str(explain_parser_errors([], "10", None))


# --- builder configuration against a fake tensorrt ---------------------------------------


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


def _fake_cuda_torch():
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
    builder_names = ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "REFIT"]
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


@pytest.fixture(params=["10.13.0.35", "11.0.0.1"])
def fake_trt(request, monkeypatch) -> types.ModuleType:
    fake = make_fake_tensorrt(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


PROFILES = parse_profile_specs(["input_ids:1x1:4x128:8x512"])


def _configure(fake, **config):
    builder = fake.Builder(fake.Logger())
    network = builder.create_network(0)
    return configure_builder(fake, builder, network, EngineConfig(profiles=PROFILES, **config))


def test_network_flags_are_strongly_typed(fake_trt):
    major = int(fake_trt.__version__.split(".")[0])
    flags = network_flags(fake_trt, major)
    assert flags == 1 << int(
        fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    )  # no EXPLICIT_BATCH on 10+


def test_network_flags_before_10_add_explicit_batch():
    fake = make_fake_tensorrt("9.3.0")
    kinds = fake.NetworkDefinitionCreationFlag
    assert network_flags(fake, 9) == (1 << int(kinds.STRONGLY_TYPED)) | (1 << int(kinds.EXPLICIT_BATCH))


def test_builder_config_records_settings_without_precision_flags(fake_trt, tmp_path):
    cache_file = tmp_path / "timing.cache"
    cache_file.write_bytes(b"cached tactics")
    config = _configure(
        fake_trt,
        workspace_bytes=2 << 30,
        optimization_level=5,
        hardware_compatibility="ampere_plus",
        precision="fp16",
        timing_cache=cache_file,
    )
    assert config.pool_limits == {fake_trt.MemoryPoolType.WORKSPACE: 2 << 30}
    assert config.builder_optimization_level == 5
    assert config.hardware_compatibility_level == fake_trt.HardwareCompatibilityLevel.AMPERE_PLUS
    assert config.flags == []  # precision lives in the graph: no FP16/INT8 builder flags
    [profile] = config.profiles
    assert profile.shapes == {"input_ids": ((1, 1), (4, 128), (8, 512))}  # static 'position' needs none
    assert config.timing_cache_calls == [(b"cached tactics", False)]


def test_builder_defaults_and_version_compatible(fake_trt):
    config = _configure(fake_trt)
    assert config.pool_limits == {} and config.builder_optimization_level == 3
    assert config.hardware_compatibility_level == fake_trt.HardwareCompatibilityLevel.NONE
    assert config.timing_cache_calls == [(b"", False)]  # no cache file: an empty cache
    assert _configure(fake_trt, version_compatible=True).flags == [fake_trt.BuilderFlag.VERSION_COMPATIBLE]
    major = int(fake_trt.__version__.split(".")[0])
    for precision in ("fp32", "fp16", "int8"):
        assert builder_flags(fake_trt, major, EngineConfig(precision=precision)) == []


def test_foreign_timing_cache_is_replaced_by_an_empty_one(fake_trt, tmp_path):
    cache_file = tmp_path / "timing.cache"
    cache_file.write_bytes(b"foreign device cache")
    config = _configure(fake_trt, timing_cache=cache_file)
    assert config.timing_cache_calls == [(b"foreign device cache", False), (b"", False)]


def test_weak_typing_rejected_on_11_allowed_on_10(fake_trt):
    major = int(fake_trt.__version__.split(".")[0])
    config = EngineConfig(strongly_typed=False)
    if major >= 11:
        with pytest.raises(LlmcError, match="builds only strongly typed networks"):
            builder_flags(fake_trt, major, config)
        with pytest.raises(LlmcError, match="strongly typed"):
            network_flags(fake_trt, major, strongly_typed=False)
    else:
        assert builder_flags(fake_trt, major, config) == []
        assert network_flags(fake_trt, major, strongly_typed=False) == 0


def test_builder_checks_profiles_against_the_network(fake_trt):
    builder = fake_trt.Builder(fake_trt.Logger())
    network = builder.create_network(0)
    with pytest.raises(LlmcError, match="missing: input_ids"):
        configure_builder(fake_trt, builder, network, EngineConfig())
    with pytest.raises(
        LlmcError, match="input nope that the model does not have; its inputs are input_ids, position"
    ):
        configure_builder(
            fake_trt,
            builder,
            network,
            EngineConfig(profiles=parse_profile_specs(["input_ids:1x1:1x1:1x1", "nope:1:1:1"])),
        )


def test_engine_config_validation_and_flags():
    with pytest.raises(LlmcError, match="0..5"):
        EngineConfig(optimization_level=6)
    with pytest.raises(LlmcError, match="hardware compatibility 'turing'"):
        EngineConfig(hardware_compatibility="turing")
    with pytest.raises(LlmcError, match="precision 'fp8'"):
        EngineConfig(precision="fp8")
    with pytest.raises(LlmcError, match="--workspace"):
        EngineConfig(workspace_bytes=0)
    config = EngineConfig(workspace_bytes=1 << 30, version_compatible=True, timing_cache="t.cache")
    assert config.timing_cache == Path("t.cache")
    flags = config.to_dict()
    assert flags == {
        "workspace_bytes": 1 << 30,
        "optimization_level": 3,
        "version_compatible": True,
        "hardware_compatibility": "none",
        "precision": "fp32",
        "strongly_typed": True,
    }
    assert EngineConfig.from_dict(flags).to_dict() == flags


def test_build_engine_end_to_end_on_the_fake(fake_trt, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"not parsed by the fake")
    cache_file = tmp_path / "cache" / "timing.cache"
    config = EngineConfig(profiles=PROFILES, timing_cache=cache_file)
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
    config = EngineConfig(profiles=PROFILES)
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


def test_runner_on_the_fake_engine(fake_trt, monkeypatch):
    from llmc.backends.trt import TrtRunner

    monkeypatch.setitem(sys.modules, "torch", _fake_cuda_torch())
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
    from llmc.backends.trt import TrtRunner
    from llmc.backends.trt.runner import numpy_dtype

    monkeypatch.setitem(sys.modules, "torch", _fake_cuda_torch())
    with pytest.raises(LlmcError, match="could not load the engine"):
        TrtRunner(b"plan from elsewhere")
    assert numpy_dtype(fake_trt, fake_trt.DataType.INT64) == np.int64
    with pytest.raises(LlmcError, match="tensor 'logits' has TensorRT type BF16"):
        numpy_dtype(fake_trt, fake_trt.DataType.BF16, "logits")
    no_gpu = _fake_cuda_torch()
    no_gpu.cuda.is_available = lambda: False
    monkeypatch.setitem(sys.modules, "torch", no_gpu)
    with pytest.raises(LlmcError, match="needs a CUDA GPU"):
        TrtRunner(b"PLAN")


def test_import_tensorrt_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert not tensorrt_available()
    with pytest.raises(LlmcError) as info:
        import_tensorrt()
    text = str(info.value)
    assert "pip install 'llmc[trt]'" in text and "--no-engine" in text and "\n" not in text


# --- a real engine ------------------------------------------------------------------------


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
    from llmc.backends.trt import TrtRunner, device_info, tensorrt_version

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
    config = EngineConfig(profiles=profiles, workspace_bytes=1 << 28, timing_cache=tmp_path / "timing.cache")
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
