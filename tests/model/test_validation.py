"""Model-level checks that turn bad inputs into one line: feeds, comparison, loading, saving."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

from llmc.errors import LlmcError
from llmc.model import feeds as feeds_mod
from llmc.model import io as model_io
from llmc.model.compare import check_finite_reference, check_same_interface, compare_outputs
from tests.helpers import make_model


def _model(inputs, outputs, nodes, initializers=()) -> ir.Model:
    return ir.serde.deserialize_model(make_model(nodes, inputs, outputs, initializers))


def _info(name: str, shape, elem=onnx.TensorProto.FLOAT):
    return oh.make_tensor_value_info(name, elem, shape)


# -- feeds --------------------------------------------------------------------------------------


def test_generated_feed_over_the_limit_is_refused_before_numpy_allocates(monkeypatch):
    model = _model([_info("x", [2**40, 3])], [_info("y", [2**40, 3])], [oh.make_node("Relu", ["x"], ["y"])])
    monkeypatch.setattr(feeds_mod, "_make_array", lambda *_a: pytest.fail("allocated"))
    with pytest.raises(LlmcError, match=r"input 'x' at shape 1099511627776x3 \(float32\) would take 12.0 TiB"):
        feeds_mod.make_feeds(model, {"x": (2**40, 3)})


def test_feed_limit_is_llmc_s_cap_or_the_available_memory(monkeypatch):
    model = _model([_info("x", ["n"])], [_info("y", ["n"])], [oh.make_node("Relu", ["x"], ["y"])])
    monkeypatch.setattr(feeds_mod, "FEED_LIMIT_BYTES", 64)
    with pytest.raises(LlmcError, match=r"over llmc's limit for a generated input \(64 bytes\); .*--shape x="):
        feeds_mod.make_feeds(model, {"x": (17,)})
    assert feeds_mod.make_feeds(model, {"x": (16,)})["x"].shape == (16,)


def test_given_feeds_must_match_fixed_dims_and_shared_symbols():
    a, b = _info("a", ["batch", 3]), _info("b", ["batch", 4])
    model = _model([a, b], [_info("y", ["batch", 3])], [oh.make_node("Relu", ["a"], ["y"])])
    ok = {"a": np.ones((2, 3), np.float32), "b": np.ones((2, 4), np.float32)}
    feeds_mod.check_feeds(model, ok, "in.npz")
    with pytest.raises(LlmcError, match=r"in.npz: input 'a' has shape 2x5 but the model expects batchx3 \(axis 1"):
        feeds_mod.check_feeds(model, {**ok, "a": np.ones((2, 5), np.float32)}, "in.npz")
    with pytest.raises(LlmcError, match=r"input 'b' has shape 3x4 .* with batch=2, as in input 'a'"):
        feeds_mod.check_feeds(model, {**ok, "b": np.ones((3, 4), np.float32)}, "in.npz")


def test_empty_inputs_are_refused_but_an_empty_kv_cache_is_not():
    ids, past = _info("input_ids", ["batch", "sequence"], onnx.TensorProto.INT64), _info("past_key", [1, 2, "past", 4])
    model = _model([ids, past], [_info("y", [1, 2, "past", 4])], [oh.make_node("Identity", ["past_key"], ["y"])])
    feeds = {"input_ids": np.ones((1, 8), np.int64), "past_key": np.zeros((1, 2, 0, 4), np.float32)}
    feeds_mod.check_not_empty(model, feeds)  # the first generation step: nothing cached yet
    with pytest.raises(LlmcError, match=r"input 'input_ids' has no elements \(shape 1x0\)"):
        feeds_mod.check_not_empty(model, {**feeds, "input_ids": np.ones((1, 0), np.int64)})
    with pytest.raises(LlmcError, match="input 'past_key' has no elements"):
        feeds_mod.check_not_empty(model, {**feeds, "past_key": np.zeros((1, 0, 3, 4), np.float32)})


# -- comparison ---------------------------------------------------------------------------------


def test_candidate_nan_or_inf_where_the_reference_is_finite_is_a_mismatch():
    ref = {"y": np.array([1.0, 2.0, 3.0], np.float32)}
    for bad in (np.nan, np.inf):
        result = compare_outputs(ref, {"y": np.array([1.0, bad, 3.0], np.float32)})
        assert not result.passed and "where the reference is finite" in result.worst().reason


def test_a_reference_with_no_finite_value_never_passes():
    nan = {"y": np.full(3, np.nan, np.float32)}
    result = compare_outputs(nan, {"y": np.full(3, np.nan, np.float32)})
    assert not result.passed and "nothing to compare" in result.worst().reason
    # A NaN row of a padded prompt, repeated by the candidate, leaves the other rows to compare.
    ref = {"y": np.array([[np.nan, np.nan], [1.0, 2.0]], np.float32)}
    assert compare_outputs(ref, {"y": ref["y"].copy()}).passed
    assert not compare_outputs(ref, {"y": np.array([[np.nan, np.nan], [1.0, 2.5]], np.float32)}).passed


def test_non_finite_reference_is_one_line_naming_the_output():
    outputs = {"ok": np.ones(4, np.float32), "y": np.array([1.0, np.nan, -np.inf, 2.0], np.float32)}
    with pytest.raises(LlmcError, match=r"model.onnx gives NaN/Inf in output 'y' \(2 of 4 values\) on the seeded .*--inputs"):
        check_finite_reference(outputs, "model.onnx", seeded=True)
    check_finite_reference(outputs, "model.onnx", seeded=False)  # given inputs: partly finite is judged
    with pytest.raises(LlmcError, match="output 'y' .* on the given verification inputs"):
        check_finite_reference({"y": np.full(2, np.nan, np.float32)}, "model.onnx", seeded=False)
    check_finite_reference({"ids": np.array([1, 2])}, "model.onnx", seeded=True)


def test_interfaces_must_match_by_name_type_and_fixed_dims():
    relu = [oh.make_node("Relu", ["x"], ["y"])]
    base = _model([_info("x", ["batch", 3])], [_info("y", ["batch", 3])], relu)
    same = _model([_info("x", ["b", 3])], [_info("y", [2, 3])], relu)  # symbols may differ
    check_same_interface(base, same, ("a", "b"))
    half = _model([_info("x", ["batch", 3], onnx.TensorProto.FLOAT16)], [_info("y", ["batch", 3])], relu)
    check_same_interface(base, half, ("a", "b"))  # --fp16-io: float16 inputs
    typed = _model([_info("x", ["batch", 3], onnx.TensorProto.INT64)], [_info("y", ["batch", 3])], relu)
    with pytest.raises(LlmcError, match=r"input 'x' is float32 \[batch, 3\] in a but int64 \[batch, 3\] in b"):
        check_same_interface(base, typed, ("a", "b"))
    ranked = _model([_info("x", ["batch", 3, 1])], [_info("y", ["batch", 3])], relu)
    with pytest.raises(LlmcError, match="input 'x' is float32 .* in a but .* in b"):
        check_same_interface(base, ranked, ("a", "b"))


# -- loading and saving -------------------------------------------------------------------------


def test_cycle_is_found_and_named():
    nodes = [
        oh.make_node("Relu", ["x"], ["u"], name="upstream"),
        oh.make_node("Add", ["u", "b"], ["a"], name="n1"),
        oh.make_node("Neg", ["a"], ["c"], name="n2"),
        oh.make_node("Relu", ["c"], ["b"], name="n3"),
        oh.make_node("Relu", ["a"], ["y"], name="after"),
    ]
    model = _model([_info("x", [2])], [_info("y", [2])], nodes)
    assert sorted(n.name for n in model_io.find_cycle(model.graph)) == ["n1", "n2", "n3"]
    with pytest.raises(LlmcError, match=r"m.onnx: the graph has a cycle through node '"):
        model_io.normalize(model, "m.onnx")
    acyclic = _model([_info("x", [2])], [_info("y", [2])], [oh.make_node("Relu", ["x"], ["y"])])
    assert model_io.find_cycle(acyclic.graph) == []


def test_tensor_written_twice_inside_a_subgraph_is_found(tmp_path):
    body = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["t"], name="p"), oh.make_node("Neg", ["x"], ["t"], name="q")],
        "body", [], [_info("t", [2])],
    )
    cond = onnx.numpy_helper.from_array(np.array(True), "cond")
    node = oh.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=body, name="if")
    path = tmp_path / "sub.onnx"
    onnx.save(make_model([node], [_info("x", [2])], [_info("y", [2])], [cond]), path)
    with pytest.raises(LlmcError, match=r"sub.onnx: tensor 't' is written by node 'p' \(Relu\) and node 'q' \(Neg\)"):
        model_io.load_model(path)


def test_save_with_external_data_writes_no_empty_data_file(tmp_path):
    w = onnx.numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")
    small = _model([_info("x", [3])], [_info("y", [3])], [oh.make_node("Add", ["x", "w"], ["y"])], [w])
    files = model_io.save_model(small, tmp_path / "small" / "model.onnx", external_data=True)
    assert files == [tmp_path / "small" / "model.onnx"]
    assert not (tmp_path / "small" / "model.onnx.data").exists()
    big = onnx.numpy_helper.from_array(np.ones(1024, np.float32), "w")
    large = _model([_info("x", [1024])], [_info("y", [1024])], [oh.make_node("Add", ["x", "w"], ["y"])], [big])
    files = model_io.save_model(large, tmp_path / "large" / "model.onnx", external_data=True)
    assert [f.name for f in files] == ["model.onnx", "model.onnx.data"] and files[1].stat().st_size == 4096
