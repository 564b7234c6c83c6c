"""The typed manifest: the JSON llmc has always written (schema_version first), one reader that
checks every section's type, and old or newer schemas refused in one line naming the rebuild."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.runtime.artifact import read_artifact
from llmc.runtime.manifest import (
    SCHEMA_VERSION,
    ArtifactFiles,
    Cache,
    Gqa,
    Manifest,
    Session,
    Source,
    Tokenizer,
    read_manifest,
    write_manifest,
)
from tests.cli.test_bad_inputs import _assert_one_line_error

runner = CliRunner()

# manifest.json's keys, in the order llmc writes them: the sections every build has, then the
# optional ones (padding, gqa, the precision's section, sparsity, engine, tokenizer, cache, task).
REQUIRED = [
    "schema_version", "llmc_version", "source", "target", "precision", "pipeline", "passes", "rewrites", "fusions",
    "fused_ops", "not_fused", "fusion_families", "nodes", "compile_seconds", "validity", "memory", "shapes",
    "verification", "artifact", "versions", "session",
]
OPTIONAL = ["padding", "gqa", "quantization", "fp16", "sparsity", "engine", "tokenizer", "cache", "task"]


def _text(path: Path) -> str:
    return (path / "manifest.json").read_text()


def _check_written(artifact: llmc.Artifact, sections: set[str]) -> dict:
    """manifest.json is the JSON of the returned Manifest, in llmc's key order, and reads back."""
    text = _text(artifact.path)
    data = json.loads(text)
    assert list(data) == REQUIRED + [key for key in OPTIONAL if key in data]
    assert sections <= set(data)
    assert list(data["artifact"]) == ["files", "model_sha256", "external_data", "sha256"]
    assert data["schema_version"] == SCHEMA_VERSION == 1
    again = Manifest.from_dict(data)
    assert again.to_dict() == data
    assert json.dumps(again.to_dict(), indent=2) + "\n" == text  # written byte for byte
    assert artifact.manifest.to_dict() == data and read_artifact(artifact.path).manifest == again
    return data


def test_fp32_manifest_round_trips(tmp_path, relu_model):
    artifact = llmc.build(relu_model, output=tmp_path / "o", cache=False)
    _check_written(artifact, {"padding"})
    manifest = artifact.manifest
    assert isinstance(manifest, Manifest) and manifest.target == "ort" and manifest.precision == "fp32"
    assert isinstance(manifest.source, Source) and manifest.source.path == str(relu_model.resolve())
    assert isinstance(manifest.artifact, ArtifactFiles) and manifest.artifact.files == ["model.onnx"]
    assert set(manifest.artifact.sha256) == {"model.onnx"} and manifest.artifact.external_data is False
    assert isinstance(manifest.session, Session) and manifest.session.options["device"] == "cpu"
    assert manifest.gqa is None and manifest.tokenizer is None and manifest.cache is None and manifest.engine is None


def test_encoder_fp32_and_int8_manifests_round_trip(tmp_path, tiny_bert_dynamo):
    _check_written(llmc.build(tiny_bert_dynamo, output=tmp_path / "fp32", cache=False), {"padding"})
    import onnx

    from llmc.int8.quantize import QuantizeOptions

    rng = np.random.default_rng(0)
    calibration = tmp_path / "calib"
    calibration.mkdir()
    names = [v.name for v in onnx.load(tiny_bert_dynamo, load_external_data=False).graph.input]
    for i in range(24):
        sample = {"input_ids": rng.integers(0, 100, (1, 16)).astype(np.int64)}
        sample.update({name: np.ones((1, 16), np.int64) for name in names if name != "input_ids"})
        np.savez(calibration / f"{i:04d}.npz", **sample)
    artifact = llmc.build(
        tiny_bert_dynamo, precision="int8", output=tmp_path / "int8", calibration_data=calibration, cache=False,
        quantization=QuantizeOptions(samples=16, holdout=8),
        shapes={"input_ids": (1, 16), "attention_mask": (1, 16)},
    )
    data = _check_written(artifact, {"padding", "quantization"})
    assert artifact.manifest.report("quantization") == data["quantization"]
    assert data["quantization"]["statistics"]["file"] == str(tmp_path / "int8" / "calibration.json")


def test_int4_decoder_manifest_round_trips(tmp_path, tiny_llama_dynamo):
    from llmc.weight_only.options import Int4Options

    artifact = llmc.build(
        tiny_llama_dynamo, precision="int4", output=tmp_path / "o", int4=Int4Options(method="minmax"), cache=False
    )
    _check_written(artifact, {"gqa", "quantization"})
    assert artifact.manifest.gqa == Gqa(nodes=2, padding_from_attention_mask=2, rotary_inside=2)
    assert artifact.manifest.fusions["GroupQueryAttention"] == 2


def test_tokenizer_and_cache_sections_round_trip(tmp_path, relu_model, monkeypatch):
    monkeypatch.delenv("LLMC_NO_CACHE", raising=False)
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "cache"))
    (relu_model.parent / "tokenizer.json").write_text("{}")
    (relu_model.parent / "generation_config.json").write_text('{"eos_token_id": 1}')
    first = llmc.build(relu_model, output=tmp_path / "a")
    second = llmc.build(relu_model, output=tmp_path / "b")
    for artifact, hit in ((first, False), (second, True)):
        data = _check_written(artifact, {"tokenizer", "cache"})
        assert artifact.manifest.tokenizer == Tokenizer(["tokenizer.json"], "generation_config.json")
        assert artifact.manifest.cache.hit is hit and artifact.manifest.cache.key == first.manifest.cache.key
        assert list(data["cache"]) == (["hit", "key", "seconds"] if hit else ["hit", "key"])


def test_the_json_view_is_a_copy(tmp_path, relu_model):
    manifest = llmc.build(relu_model, output=tmp_path / "o", cache=False).manifest
    assert manifest["target"] == "ort" and manifest["artifact"]["files"] == ["model.onnx"]
    assert "padding" in manifest and "cache" not in manifest and manifest.get("cache", {}) == {}
    manifest["session"]["options"]["device"] = "cuda"
    manifest["memory"]["arena_bytes"] = -1
    assert manifest.session.options["device"] == "cpu" and manifest.memory["arena_bytes"] != -1
    with pytest.raises(KeyError):
        manifest["cache"]
    with pytest.raises(TypeError, match="takes a Manifest"):
        write_manifest(tmp_path, manifest.to_dict())


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """One small artifact's manifest.json, as parsed JSON."""
    import onnx
    import onnx.helper as oh

    from tests.helpers import make_model

    root = tmp_path_factory.mktemp("manifest")
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])
    onnx.save(make_model([oh.make_node("Relu", ["x"], ["y"])], [x], [y]), root / "m.onnx")
    return json.loads(_text(llmc.build(root / "m.onnx", output=root / "o", cache=False).path))


@pytest.mark.parametrize("edit, fragments", [
    ({"schema_version": None}, ["without a manifest schema version", "this llmc reads schema 1", "`llmc build`"]),
    ({"schema_version": 2}, ["schema 2", "a newer llmc", "this llmc reads schema 1", "`llmc build`"]),
    ({"schema_version": 0}, ["schema 0", "another llmc", "`llmc build`"]),
    ({"schema_version": "1"}, ["schema '1'", "`llmc build`"]),
    ({"schema_version": True}, ["schema True", "`llmc build`"]),
    ({"fusions": []}, ["'fusions'"]),
    ({"fusions": {"GroupQueryAttention": "2"}}, ["'fusions'"]),
    ({"gqa": {"nodes": 2}}, ["'gqa'"]),
    ({"tokenizer": {"files": "tokenizer.json"}}, ["'tokenizer'"]),
    ({"cache": {"hit": "yes", "key": "k"}}, ["'cache'"]),
    ({"nodes": {"before": 1}}, ["'nodes'"]),
    ({"source": {"path": 3, "sha256": "x"}}, ["'source'"]),
    ({"shapes": []}, ["'shapes'"]),
    ({"passes": {}}, ["'passes'"]),
    ({"compile_seconds": "1"}, ["'compile_seconds'"]),
    ({"padding": [1]}, ["'padding'"]),
    ({"task": ["text-classification"]}, ["'task' must be an object"]),
    ({"task": {"task": "summarization"}}, ["'task' is not a task record", "summarization"]),
    ({"task": {"task": "text-generation", "context": 0}}, ["'task' is not a task record"]),
    ({"task": {"task": "text-generation", "context": 8, "context_source": 3}}, ["'task' is not a task record"]),
    ({"my_precision": "x"}, ["'my_precision'"]),
])
def test_a_manifest_of_another_schema_or_types_is_refused_in_one_line(built, edit, fragments):
    data = {**built, **edit}
    data = {k: v for k, v in data.items() if not (k == "schema_version" and v is None)}
    with pytest.raises(LlmcError) as info:
        Manifest.from_dict(data, "/a/manifest.json")
    message = str(info.value)
    assert message.startswith("/a/manifest.json: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_registered_precisions_section_is_kept(built):
    data = {**built, "my_precision": {"nodes": 3}}
    manifest = Manifest.from_dict(data)
    assert manifest.report("my_precision") == {"nodes": 3} and manifest.report(None) is None
    assert manifest.to_dict() == data and list(manifest.to_dict())[-1] == "my_precision"


def test_the_task_section_reads_back_as_the_spec(built):
    from llmc.spec.task import TEXT_CLASSIFICATION, TEXT_GENERATION, TaskSpec

    spec = TaskSpec(TEXT_CLASSIFICATION, ("no", "yes"), "single_label_classification", pair=True)
    data = {**built, "task": spec.to_dict()}
    manifest = Manifest.from_dict(data)
    assert manifest.task_spec() == spec and manifest.to_dict() == data and list(manifest.to_dict())[-1] == "task"
    assert Manifest.from_dict(built).task_spec() is None and "task" not in built  # a model without a task
    decoder = TaskSpec(TEXT_GENERATION, context=2048, context_source="config.json's max_position_embeddings")
    data = {**built, "task": decoder.to_dict()}
    assert Manifest.from_dict(data).task_spec() == decoder and Manifest.from_dict(data).to_dict() == data


def test_optional_fields_are_left_out_when_absent(built):
    data = {**built, "cache": {"hit": False, "key": "k"}}
    del data["artifact"]["model_sha256"]  # informative: the file hashes bind
    manifest = Manifest.from_dict(data)
    assert manifest.cache == Cache(False, "k") and manifest.artifact.model_sha256 is None
    assert manifest.to_dict() == data


def test_an_artifact_from_before_the_schema_is_refused_everywhere(tmp_path, relu_model):
    path = llmc.build(relu_model, output=tmp_path / "old", cache=False).path
    data = json.loads(_text(path))
    del data["schema_version"]
    (path / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    expected = [f"{path / 'manifest.json'}: written by an llmc without a manifest schema version", "`llmc build`"]
    with pytest.raises(LlmcError, match="without a manifest schema version"):
        read_manifest(path)
    with pytest.raises(LlmcError, match="without a manifest schema version"):
        llmc.load(path)
    for args in (["inspect", str(path)], ["check", str(relu_model), str(path)],
                 ["bench", str(path), "--runs", "1", "--warmup", "0", "--no-rss"]):
        _assert_one_line_error(runner.invoke(app, args), *expected)
    # The rebuild the message names replaces it.
    rebuilt = runner.invoke(app, ["build", str(relu_model), "-o", str(path), "--no-cache"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert read_manifest(path).to_dict()["schema_version"] == SCHEMA_VERSION


def test_read_manifest_errors_keep_their_lines(tmp_path):
    with pytest.raises(LlmcError, match=r"not an llmc artifact \(no manifest.json\)"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(LlmcError, match="not valid JSON"):
        read_manifest(tmp_path)
