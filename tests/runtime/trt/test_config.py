"""EngineSettings and the builder configuration it becomes, against the fake ``tensorrt``."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmc.errors import LlmcError
from llmc.targets.trt.config import EngineSettings, builder_flags, configure_builder, network_flags
from llmc.targets.trt.profiles import parse_profile_specs
from tests.runtime.trt.support import PROFILES, make_fake_tensorrt


def _configure(fake, **config):
    builder = fake.Builder(fake.Logger())
    network = builder.create_network(0)
    return configure_builder(fake, builder, network, EngineSettings(profiles=PROFILES, **config))


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
    assert _configure(fake_trt, sparse_weights=True).flags == [fake_trt.BuilderFlag.SPARSE_WEIGHTS]  # 2:4 weights
    major = int(fake_trt.__version__.split(".")[0])
    for precision in ("fp32", "fp16", "int8"):
        assert builder_flags(fake_trt, major, EngineSettings(precision=precision)) == []


def test_foreign_timing_cache_is_replaced_by_an_empty_one(fake_trt, tmp_path):
    cache_file = tmp_path / "timing.cache"
    cache_file.write_bytes(b"foreign device cache")
    config = _configure(fake_trt, timing_cache=cache_file)
    assert config.timing_cache_calls == [(b"foreign device cache", False), (b"", False)]


def test_weak_typing_rejected_on_11_allowed_on_10(fake_trt):
    major = int(fake_trt.__version__.split(".")[0])
    config = EngineSettings(strongly_typed=False)
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
        configure_builder(fake_trt, builder, network, EngineSettings())
    with pytest.raises(
        LlmcError, match="input nope that the model does not have; its inputs are input_ids, position"
    ):
        configure_builder(
            fake_trt,
            builder,
            network,
            EngineSettings(profiles=parse_profile_specs(["input_ids:1x1:1x1:1x1", "nope:1:1:1"])),
        )


def test_settings_validation_and_flags():
    for bad, match in [
        ({"optimization_level": 6}, "0..5"),
        ({"optimization_level": True}, "0..5"),
        ({"hardware_compatibility": "turing"}, "hardware compatibility 'turing'"),
        ({"workspace_bytes": 0}, "--workspace"),
    ]:
        settings = EngineSettings(**bad)  # constructing never fails: the build checks, first thing
        with pytest.raises(LlmcError, match=match):
            settings.validate()
        with pytest.raises(LlmcError, match=match):
            configure_builder(make_fake_tensorrt("10.13.0.35"), None, None, settings)
    config = EngineSettings(
        workspace_bytes=1 << 30, version_compatible=True, timing_cache="t.cache", engine_cache="engines"
    )
    assert config.validate() is config
    assert config.timing_cache == Path("t.cache") and config.engine_cache == Path("engines")
    flags = config.to_dict()
    assert flags == {
        "workspace_bytes": 1 << 30,
        "optimization_level": 3,
        "version_compatible": True,
        "hardware_compatibility": "none",
        "precision": "fp32",
        "strongly_typed": True,
        "sparse_weights": False,
    }  # the caches only speed the build up: not flags, not in the cache key
    assert EngineSettings.from_dict(flags).to_dict() == flags
    assert EngineSettings.from_dict({**flags, "unknown": 1, "use_engine_cache": False}).use_engine_cache


def _model(*inputs):
    import onnx_ir as ir

    values = [ir.Value(name=name, shape=ir.Shape(dims), type=ir.TensorType(ir.DataType.INT64)) for name, dims in inputs]
    return ir.Model(ir.Graph(values, [], nodes=[]), ir_version=10)


def test_preflight_and_requested():
    model = _model(("input_ids", ("batch", "seq")), ("position", (1, 16)))
    with pytest.raises(LlmcError, match="missing: input_ids"):
        EngineSettings().preflight(model)
    with pytest.raises(LlmcError, match="0..5"):
        EngineSettings(profiles=PROFILES, optimization_level=9).preflight(model)
    settings = EngineSettings(profiles=PROFILES, optimization_level=5)
    settings.preflight(model)
    assert EngineSettings().requested(model) == {}  # no profiles given: nothing to record
    requested = settings.requested(model)
    assert requested["profiles"]["position"] == {"min": [1, 16], "opt": [1, 16], "max": [1, 16]}
    assert requested["flags"] == {**EngineSettings().to_dict(), "optimization_level": 5}
