"""``llmc triton``: every generated config.pbtxt parses with Triton's own schema
(tritonclient's model_config_pb2) and matches the model it describes."""

from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.serving.triton import TritonOptions, model_config_pb2, write_repository

pytest.importorskip("tritonclient")
runner = CliRunner()
ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32"}


def _parse(repo_model):
    pb = model_config_pb2()
    return pb, text_format.Parse((repo_model / "config.pbtxt").read_text(), pb.ModelConfig())


def _expected(values, batched: bool) -> dict[str, tuple[str, list[int]]]:
    return {
        v.name: (ORT_TYPES[v.type], [d if isinstance(d, int) else -1 for d in (v.shape[1:] if batched else v.shape)])
        for v in values
    }


@pytest.fixture(scope="module")
def encoder(tiny_bert_dynamo, tmp_path_factory):
    return llmc.build(tiny_bert_dynamo, output=tmp_path_factory.mktemp("tr") / "bert", cache=False, threads=2)


def test_encoder_repository_matches_the_model(encoder, tmp_path):
    target = write_repository(encoder.path, tmp_path / "repo", TritonOptions(max_batch_size=16, instances=2))
    pb, config = _parse(target)
    session = ort.InferenceSession(str(encoder.path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert config.name == "bert" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    got_in = {t.name: (pb.DataType.Name(t.data_type), list(t.dims)) for t in config.input}
    got_out = {t.name: (pb.DataType.Name(t.data_type), list(t.dims)) for t in config.output}
    assert got_in == _expected(session.get_inputs(), True)
    assert got_out == _expected(session.get_outputs(), True)
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, pb.ModelInstanceGroup.KIND_CPU)]
    assert config.parameters["intra_op_thread_count"].string_value == "2"
    assert not config.HasField("sequence_batching")
    copied = hashlib.sha256((target / "1" / "model.onnx").read_bytes()).hexdigest()
    assert copied == encoder.manifest["artifact"]["sha256"]["model.onnx"]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["bert"]  # no partial left


def test_unbatched_config_keeps_the_batch_dimension(encoder, tmp_path):
    target = write_repository(encoder.path, tmp_path / "repo", TritonOptions(name="plain", max_batch_size=0))
    _, config = _parse(target)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert all(t.dims[0] == -1 and len(t.dims) == 2 for t in config.input)


def test_decoder_carries_its_kv_cache_as_implicit_state(tiny_llama_dynamo, tmp_path):
    art = llmc.build(tiny_llama_dynamo, output=tmp_path / "llama", cache=False)
    written = write_repository(art.path, tmp_path / "repo", TritonOptions())
    pb, config = _parse(written)
    session = ort.InferenceSession(str(art.path / "model.onnx"), providers=["CPUExecutionProvider"])
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    # logits_to_keep (llmc.passes.logits) is fixed at 0 in the repository's copy: Triton batches rows of
    # different requests, so every position's logits, as the source model gave
    assert "logits_to_keep" in {i.name for i in session.get_inputs()}
    expected = {i.name for i in session.get_inputs()} - {p.name for p in pasts} - {"logits_to_keep"}
    assert {t.name for t in config.input} == expected
    assert {t.name for t in config.output} == {"logits"}
    copy = ort.InferenceSession(str(written / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert "logits_to_keep" not in {i.name for i in copy.get_inputs()}
    feeds = {"input_ids": np.array([[3, 4, 5]]), "attention_mask": np.ones((1, 3), np.int64),
             "position_ids": np.arange(3)[None]}
    feeds.update({p.name: np.zeros((1, p.shape[1], 0, p.shape[3]), np.float32) for p in pasts})
    np.testing.assert_array_equal(copy.run(["logits"], feeds)[0],
                                  session.run(["logits"], {**feeds, "logits_to_keep": np.array(0)})[0])
    states = {s.input_name: s for s in config.sequence_batching.state}
    assert set(states) == {p.name for p in pasts}
    for past in pasts:
        state = states[past.name]
        assert state.output_name == past.name.replace("past_key_values", "present")
        assert list(state.dims) == [past.shape[1], -1, past.shape[3]]
        (initial,) = state.initial_state
        assert initial.zero_data and list(initial.dims) == [past.shape[1], 0, past.shape[3]]
    assert config.sequence_batching.HasField("direct") and not config.HasField("dynamic_batching")


def test_bad_requests_are_one_line(encoder, tmp_path):
    write_repository(encoder.path, tmp_path / "repo", TritonOptions(name="m"))
    for options, words in ((TritonOptions(name="m"), "exists"), (TritonOptions(instances=0), "--instances"),
                           (TritonOptions(name="../x"), "--name")):
        with pytest.raises(LlmcError, match=words) as info:
            write_repository(encoder.path, tmp_path / "repo", options)
        assert "\n" not in str(info.value)
    with pytest.raises(LlmcError, match="not an llmc artifact"):
        write_repository(tmp_path, tmp_path / "repo", TritonOptions())


def test_cli(encoder, tmp_path):
    result = runner.invoke(app, ["triton", str(encoder.path), "-o", str(tmp_path / "repo"), "--name", "minilm",
                                 "--max-batch-size", "4", "--threads", "1"])
    assert result.exit_code == 0, result.output
    _, config = _parse(tmp_path / "repo" / "minilm")
    assert config.max_batch_size == 4 and config.parameters["intra_op_thread_count"].string_value == "1"
    result = runner.invoke(app, ["triton", str(encoder.path), "-o", str(tmp_path / "repo"), "--name", "minilm"])
    assert result.exit_code == 1 and "exists" in result.output
