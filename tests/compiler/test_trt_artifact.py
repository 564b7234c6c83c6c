"""The trt build's engine step and trusted loading, with TensorRT faked at the loader boundary.

TensorRT and a GPU are missing here, so ``build_engine``, ``tensorrt_version`` and
``device_info`` (and the detection ``llmc.build`` asks first) are replaced by stand-ins that return fixed bytes and versions; everything llmc
does around them (profiles, cache keys, engine cache, model.plan, the signed manifest, the
refusals of ``llmc.load``) runs for real. The real build is in test_trt_backend (marked trt).
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.runtime.trt import detect
from llmc.targets.trt import loader
from llmc.targets.trt.config import EngineSettings
from llmc.targets.trt.profiles import parse_profile_specs

PROFILES = ["input_ids:1x4:1x16:2x32", "attention_mask:1x4:1x16:2x32"]


class FakeTensorRT:
    """Records engine builds; the "plan" is bytes derived from the ONNX file and the flags."""

    version = "10.13.0.35"

    def __init__(self) -> None:
        self.builds: list[dict] = []

    def build_engine(self, onnx_path, config, *, model_nodes=None, log=None) -> bytes:
        self.builds.append({"profiles": config.profiles, "flags": config.to_dict(), "timing": config.timing_cache})
        return b"PLAN" + onnx_path.read_bytes()[:64] + json.dumps(config.to_dict(), sort_keys=True).encode()


@pytest.fixture()
def fake_trt(monkeypatch, tmp_path):
    fake = FakeTensorRT()
    monkeypatch.setenv("LLMC_ENGINE_KEY_FILE", str(tmp_path / "keys" / "engine.key"))
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "cache"))
    _patch_detect(monkeypatch, "tensorrt_available", lambda: True)
    _patch_detect(monkeypatch, "import_tensorrt", lambda: sys.modules[__name__])
    _patch_detect(monkeypatch, "tensorrt_version", lambda: fake.version)
    _patch_detect(
        monkeypatch, "device_info", lambda device=0: {"gpu": "NVIDIA H100", "compute_capability": "9.0", "cuda": "12.8"}
    )
    monkeypatch.setattr(loader, "build_engine", fake.build_engine)
    return fake


def _patch_detect(monkeypatch, name, value):
    """Replace a detection function in its module (callers look it up there at call time)."""
    monkeypatch.setattr(detect, name, value)


def _build(model, out, **engine):
    settings = EngineSettings(profiles=parse_profile_specs(PROFILES), **engine)
    return llmc.build(model, target="trt", precision="fp16", output=out, engine=settings,
                      shapes={"input_ids": (1, 16), "attention_mask": (1, 16)})


def test_trt_build_writes_a_signed_plan_and_reuses_the_engine_cache(fake_trt, tmp_path, tiny_bert_dynamo):
    artifact = _build(tiny_bert_dynamo, tmp_path / "a", optimization_level=4, workspace_bytes=1 << 30)
    engine = artifact.manifest["engine"]
    assert (artifact.path / "model.plan").is_file() and engine["built"] and not engine["from_cache"]
    assert engine["tensorrt_version"] == FakeTensorRT.version and engine["compute_capability"] == "9.0"
    assert engine["gpu"] == "NVIDIA H100" and engine["cuda_version"] == "12.8"
    assert engine["profiles"]["input_ids"] == {"min": [1, 4], "opt": [1, 16], "max": [2, 32]}
    assert engine["flags"]["precision"] == "fp16" and engine["flags"]["optimization_level"] == 4
    assert engine["flags"]["workspace_bytes"] == 1 << 30 and len(engine["hmac"]) == 64
    assert "key" not in engine and (tmp_path / "keys" / "engine.key").stat().st_mode & 0o077 == 0
    # Same model, TensorRT, GPU, profiles and flags: the cache answers; any change rebuilds.
    again = _build(tiny_bert_dynamo, tmp_path / "b", optimization_level=4, workspace_bytes=1 << 30)
    assert again.manifest["engine"]["from_cache"] and len(fake_trt.builds) == 1
    assert again.manifest["engine"]["cache_key"] == engine["cache_key"]
    other = _build(tiny_bert_dynamo, tmp_path / "c", optimization_level=2, workspace_bytes=1 << 30)
    assert not other.manifest["engine"]["from_cache"] and len(fake_trt.builds) == 2


def test_load_refuses_a_tampered_or_foreign_plan(fake_trt, tmp_path, tiny_bert_dynamo, monkeypatch):
    artifact = _build(tiny_bert_dynamo, tmp_path / "a")
    plan = artifact.path / "model.plan"
    loaded = []
    monkeypatch.setattr("llmc.runtime.trt.runner.TrtRunner", lambda data, **kw: loaded.append(data) or _FakeRunner())
    llmc.load(artifact.path)
    assert loaded == [plan.read_bytes()]
    # The ONNX side still runs in ONNX Runtime on request.
    runner = llmc.load(artifact.path, engine=False)
    assert runner.backend == "onnxruntime"
    # Another TensorRT or GPU: refused with both versions named.
    _patch_detect(monkeypatch, "tensorrt_version", lambda: "10.14.1")
    with pytest.raises(LlmcError, match="TensorRT 10.13.0.35.*10.14.1 is installed"):
        llmc.load(artifact.path)
    _patch_detect(monkeypatch, "tensorrt_version", lambda: FakeTensorRT.version)
    _patch_detect(monkeypatch, "device_info", lambda device=0: {"gpu": "A10", "compute_capability": "8.6", "cuda": "12"})
    with pytest.raises(LlmcError, match="compute capability 9.0.*8.6"):
        llmc.load(artifact.path)
    # A modified plan: refused by the artifact's sha256, checked before TensorRT is even needed.
    plan.write_bytes(plan.read_bytes() + b"\x00")
    _patch_detect(monkeypatch, "tensorrt_version", lambda: (_ for _ in ()).throw(AssertionError("not reached")))
    with pytest.raises(LlmcError, match="model.plan: sha256 does not match"):
        llmc.load(artifact.path)
    # ... and by its HMAC when the manifest's hashes are rewritten to match.
    manifest = json.loads((artifact.path / "manifest.json").read_text())
    manifest["artifact"]["sha256"]["model.plan"] = hashlib.sha256(plan.read_bytes()).hexdigest()
    (artifact.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LlmcError, match="HMAC mismatch"):
        llmc.load(artifact.path)
    # Another machine's key.
    monkeypatch.setenv("LLMC_ENGINE_KEY_FILE", str(tmp_path / "other.key"))
    with pytest.raises(LlmcError, match="does not exist|signed with key"):
        llmc.load(artifact.path)


def test_stray_plan_beside_a_no_engine_artifact_is_refused(tmp_path, tiny_bert_dynamo):
    artifact = llmc.build(tiny_bert_dynamo, target="trt", no_engine=True, output=tmp_path / "n")
    llmc.load(artifact.path)  # ONNX Runtime on the TensorRT-ready ONNX
    (artifact.path / "model.plan").write_bytes(b"not ours")
    with pytest.raises(LlmcError, match="unsigned plan"):
        llmc.load(artifact.path)
    with pytest.raises(LlmcError, match="no TensorRT engine"):
        llmc.load(artifact.path, engine=True)


def test_missing_profiles_fail_before_compiling_and_list_every_dynamic_input(fake_trt, tmp_path, tiny_bert_dynamo):
    result = CliRunner().invoke(app, ["build", str(tiny_bert_dynamo), "--target", "trt", "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "input_ids" in result.output and "attention_mask" in result.output and "--profile" in result.output
    assert not (tmp_path / "o").exists() and fake_trt.builds == []


def test_cli_trt_build_with_profiles_prints_the_engine(fake_trt, tmp_path, tiny_bert_dynamo):
    args = ["build", str(tiny_bert_dynamo), "--target", "trt", "--precision", "fp16", "-o", str(tmp_path / "o"),
            "--workspace", "512", "--opt-level", "5", "--hardware-compatibility", "ampere_plus"]
    for spec in PROFILES:
        args += ["--profile", spec]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "TensorRT engine built: model.plan" in result.output
    flags = fake_trt.builds[0]["flags"]
    assert flags["workspace_bytes"] == 512 << 20 and flags["optimization_level"] == 5
    assert flags["hardware_compatibility"] == "ampere_plus"


def test_no_engine_records_the_requested_profiles(tmp_path, tiny_bert_dynamo):
    settings = EngineSettings(profiles=parse_profile_specs(PROFILES))
    artifact = llmc.build(tiny_bert_dynamo, target="trt", no_engine=True, output=tmp_path / "n", engine=settings)
    engine = artifact.manifest["engine"]
    assert engine["built"] is False and engine["profiles"]["attention_mask"]["max"] == [2, 32]


class _FakeRunner:
    input_names = ["input_ids", "attention_mask"]
    output_names = ["last_hidden_state"]
    engine = object()

    def run(self, feeds):
        return {"last_hidden_state": np.zeros((1, 1), np.float32)}


def test_ort_tensorrt_ep_takes_the_same_profiles_and_builder_settings(tmp_path, tiny_bert_dynamo):
    from llmc.compiler.stages import _trt_ep_options
    from llmc.runtime.ort import SessionConfig

    settings = EngineSettings(profiles=parse_profile_specs(PROFILES), optimization_level=5, workspace_bytes=1 << 30)
    config = SessionConfig(device="tensorrt", **_trt_ep_options(settings))
    assert config.profiles["input_ids"] == [[1, 4], [1, 16], [2, 32]]
    assert config.trt_builder_optimization_level == 5 and config.trt_max_workspace_size == 1 << 30
    # Without onnxruntime-gpu the build stops at once, saying what to install.
    with pytest.raises(LlmcError, match="onnxruntime-gpu"):
        llmc.build(tiny_bert_dynamo, device="tensorrt", precision="fp16", output=tmp_path / "x", engine=settings)


def test_one_settings_class_for_the_cli_the_build_and_the_backend():
    from llmc.targets.trt.config import EngineSettings as BackendSettings

    assert EngineSettings is BackendSettings
    settings = EngineSettings(profiles=parse_profile_specs(PROFILES), workspace_bytes=1 << 20, optimization_level=2,
                              version_compatible=True, hardware_compatibility="ampere_plus", timing_cache=None,
                              engine_cache=None, use_engine_cache=False)
    assert settings.to_dict()["optimization_level"] == 2 and settings.profiles["input_ids"].max == (2, 32)
