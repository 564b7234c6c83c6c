"""The ONNX Runtime loader/runner: session config, feeds checking, overridable initializers."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

from llmc.errors import LlmcError
from llmc.runtime.ort import OrtRunner, SessionConfig, create_session
from tests.helpers import make_model


def _scaled_model() -> onnx.ModelProto:
    """y = x * k, with k an initializer that is also a graph input (an overridable default)."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    k = oh.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    init = onnx.numpy_helper.from_array(np.float32(1.0), "k")
    model = make_model([oh.make_node("Mul", ["x", "k"], ["y"])], [x, k], [y], [init])
    return model


def test_runner_accepts_overridable_initializer_and_rejects_unknown():
    session = create_session(_scaled_model().SerializeToString(), SessionConfig())
    runner = OrtRunner(session)
    x = np.array([1.0, 2.0], np.float32)
    np.testing.assert_array_equal(runner.run({"x": x})["y"], x)
    np.testing.assert_array_equal(runner.run({"x": x, "k": np.array(3.0, np.float32)})["y"], 3 * x)
    with pytest.raises(LlmcError, match="unknown input"):
        runner.run({"x": x, "z": x})
    with pytest.raises(LlmcError, match="missing input"):
        runner.run({})


def test_session_config_round_trip_and_validation():
    config = SessionConfig(graph_optimization_level="basic", intra_op_num_threads=2,
                           enable_mem_pattern=False)
    assert SessionConfig.from_dict(config.to_dict()) == config
    opts = config.session_options()
    assert opts.intra_op_num_threads == 2 and opts.enable_mem_pattern is False
    with pytest.raises(LlmcError, match="unknown device"):
        SessionConfig(device="tpu")
    with pytest.raises(LlmcError, match="graph optimization level"):
        SessionConfig(graph_optimization_level="max")


def test_seeded_feeds_index_embedding_tables(tiny_bert_dynamo):
    from llmc.model.feeds import make_feeds, resolve_shapes
    from llmc.model.io import load_model

    model = load_model(tiny_bert_dynamo)
    feeds = make_feeds(model, resolve_shapes(model)[0], seed=1)
    ids = feeds["input_ids"]
    assert ids.shape == (1, 128) and ids.max() < 1000 and len(np.unique(ids)) > 50
    assert (feeds["attention_mask"] == 1).all()
    again = make_feeds(model, resolve_shapes(model)[0], seed=1)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    assert isinstance(model, ir.Model)


def _optimized_ops(path, disabled, tmp_path) -> list[str]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / f"opt{len(disabled)}.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                         disabled_optimizers=disabled)
    return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


def test_slower_ort_fusion_names_are_real(tiny_bert_dynamo, tmp_path):
    """ONNX Runtime ignores unknown optimizer names: check ours really switch the fusion off."""
    from llmc.runtime.ort.loader import SLOWER_ORT_FUSIONS

    assert SLOWER_ORT_FUSIONS["cpu"] == ["SkipLayerNormFusion"]
    assert "SkipLayerNormalization" in _optimized_ops(tiny_bert_dynamo, [], tmp_path)
    assert "SkipLayerNormalization" not in _optimized_ops(
        tiny_bert_dynamo, SLOWER_ORT_FUSIONS["cpu"], tmp_path
    )


def test_spinning_settings_reach_onnx_runtime():
    def entries(config):
        opts = config.session_options()

        def entry(key):
            try:
                return opts.get_session_config_entry(key)
            except RuntimeError:  # not set
                return None

        return {key: entry(key) for key in ("session.intra_op.allow_spinning", "session.force_spinning_stop")}

    assert entries(SessionConfig()) == {"session.intra_op.allow_spinning": None, "session.force_spinning_stop": None}
    assert entries(SessionConfig(spin_after_run=False)) == {
        "session.intra_op.allow_spinning": None, "session.force_spinning_stop": "1"}
    assert entries(SessionConfig(allow_spinning=False, spin_after_run=False)) == {  # never spinning: nothing to stop
        "session.intra_op.allow_spinning": "0", "session.force_spinning_stop": None}
    assert SessionConfig.from_dict({}).spin_after_run  # manifests written before the field
