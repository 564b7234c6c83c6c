"""Sequence packing: texts end to end in rows, each attending to itself, give what each text gets
alone; what cannot be packed is refused with its reason, and the build decides the default."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
import pytest

import llmc
from llmc.errors import LlmcError
from llmc.model.packing import pack_graph
from llmc.runtime.ort.runner import run_model
from llmc.runtime.padding.layout import PaddingLayout
from llmc.runtime.padding.pack import PackingRunner, packed_feeds, plan_rows
from tests.helpers import make_model

HIDDEN, HEADS, VOCAB = 8, 2, 40
LAYOUT = PaddingLayout("attention_mask", ("input_ids", "attention_mask"), {"hidden": (0, 1), "pooled": (0, None)})


def test_rows_are_filled_first_fit_longest_first():
    lengths = np.array([5, 30, 2, 30, 33, 9])
    rows = plan_rows(lengths, 40)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(lengths[row].sum() <= 40 for row in rows)
    assert rows == [[4, 0, 2], [1, 5], [3]]
    assert plan_rows(np.array([64, 64]), 64) == [[0], [1]]


def test_packed_feeds_place_every_token_and_keep_the_mask_zeros():
    mask = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0]])
    ids = np.arange(12).reshape(3, 4) + 1
    feeds = {"input_ids": ids * mask, "attention_mask": mask}
    lengths = np.array([3, 3, 2])
    rows = plan_rows(lengths, 6)
    packed = packed_feeds(feeds, LAYOUT, lengths, rows, 6)
    flat = packed["packed_input_ids"].reshape(-1)
    for i, length in enumerate(lengths):
        np.testing.assert_array_equal(flat[packed["unpack_index"][i, :length]], feeds["input_ids"][i, :length])
    segments = packed["packed_segments"].reshape(-1)[packed["unpack_index"][1, :3]]
    assert segments[1] == 0 and segments[0] == segments[2] > 0  # a zero inside the row stays masked
    assert packed["packed_positions"].reshape(-1)[packed["unpack_index"][0, :3]].tolist() == [0, 1, 2]


def _encoder(positions: str, mask_slot: int = 3) -> onnx.ModelProto:
    """Embeddings (token + position), one fused Attention masked from ``attention_mask``, a
    feed-forward MatMul, then the token states and their masked mean: the shape of a BERT
    encoder and its pooling. ``positions``: ``range`` (from the shape) or ``cumsum`` (from the
    mask's values, as RoBERTa counts them)."""
    rng = np.random.default_rng(0)
    weights = {
        "words": rng.standard_normal((VOCAB, HIDDEN)), "places": rng.standard_normal((32, HIDDEN)),
        "qkv": rng.standard_normal((HIDDEN, 3 * HIDDEN)) * 0.5, "qkv_bias": rng.standard_normal(3 * HIDDEN) * 0.1,
        "ffn": rng.standard_normal((HIDDEN, HIDDEN)) * 0.5,
    }
    initializers = [onh.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    initializers += [onh.from_array(np.array(v, dtype=np.int64), k) for k, v in
                     {"zero": 0, "one": 1, "axis1": [1], "axis2": [2], "axes12": [1, 2]}.items()]
    nodes = [oh.make_node("Gather", ["words", "input_ids"], ["token"])]
    if positions == "range":
        nodes += [oh.make_node("Shape", ["attention_mask"], ["shape"], start=1, end=2),
                  oh.make_node("Squeeze", ["shape"], ["length"]),
                  oh.make_node("Range", ["zero", "length", "one"], ["position_ids"])]
    else:
        nodes += [oh.make_node("CumSum", ["attention_mask", "one"], ["position_ids"])]
    nodes += [
        oh.make_node("Gather", ["places", "position_ids"], ["place"]),
        oh.make_node("Add", ["token", "place"], ["x"]),
        oh.make_node("Cast", ["attention_mask"], ["mask_index"], to=onnx.TensorProto.INT32),
        oh.make_node("Cast", ["attention_mask"], ["maskf"], to=onnx.TensorProto.FLOAT),
        oh.make_node("Sub", ["onef", "maskf"], ["masked"]),
        oh.make_node("Mul", ["masked", "lowest"], ["bias2"]),
        oh.make_node("Unsqueeze", ["bias2", "axes12"], ["keys"]),  # [batch, 1, 1, sequence]
        oh.make_node("Unsqueeze", ["maskf", "axes13"], ["queries"]),  # [batch, 1, sequence, 1]
        oh.make_node("Mul", ["queries", "zerof"], ["nothing"]),
        oh.make_node("Add", ["nothing", "keys"], ["bias4"]),  # [batch, 1, sequence, sequence]
    ]
    initializers += [onh.from_array(np.array(v, np.float32), k) for k, v in {"onef": 1, "zerof": 0, "lowest": -1e9}.items()]
    initializers += [onh.from_array(np.array([1, 3], np.int64), "axes13")]
    mask_inputs = ["mask_index", "", ""] if mask_slot == 3 else ["", "", "bias4"]
    nodes += [
        oh.make_node("Attention", ["x", "qkv", "qkv_bias", *mask_inputs], ["attended"], domain="com.microsoft", num_heads=HEADS),
        oh.make_node("MatMul", ["attended", "ffn"], ["projected"]),
        oh.make_node("Add", ["projected", "x"], ["hidden"]),
        oh.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        oh.make_node("Mul", ["hidden", "mask3"], ["kept"]),
        oh.make_node("ReduceSum", ["kept", "axis1"], ["total"], keepdims=0),
        oh.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
        oh.make_node("Div", ["total", "count"], ["pooled"]),
    ]
    seq = ["batch", "sequence"]
    return make_model(
        nodes,
        [oh.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, seq),
         oh.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, seq)],
        [oh.make_tensor_value_info("hidden", onnx.TensorProto.FLOAT, [*seq, HIDDEN]),
         oh.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, ["batch", HIDDEN])],
        initializers, extra_opsets=[("com.microsoft", 1)],
    )


def _padded(lengths, width, seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(width)[None] < np.array(lengths)[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1, VOCAB, size=mask.shape) * mask, "attention_mask": mask}


@pytest.mark.parametrize("mask_slot", [3, 5])
def test_a_packed_encoder_gives_what_each_text_gets_alone(mask_slot):
    original = ir.serde.deserialize_model(_encoder("range", mask_slot))
    packed = ir.serde.deserialize_model(_encoder("range", mask_slot))
    assert pack_graph(packed, "attention_mask", ("input_ids", "attention_mask")) is None
    assert {v.name for v in packed.graph.outputs} == {"hidden", "pooled"}

    def run(feeds):
        return run_model(original, feeds)

    runner = PackingRunner(run, LAYOUT, lambda: lambda feeds: run_model(packed, {
        k: v for k, v in feeds.items() if k in {i.name for i in packed.graph.inputs}}), width=12)
    feeds = _padded([5, 7, 1, 9, 3, 12], 16)
    got = runner.run(feeds)
    assert got["hidden"].shape == (6, 16, HIDDEN) and got["pooled"].shape == (6, HIDDEN)
    for row, length in enumerate([5, 7, 1, 9, 3, 12]):
        alone = run({k: v[row : row + 1, :length] for k, v in feeds.items()})
        np.testing.assert_allclose(got["hidden"][row, :length], alone["hidden"][0], atol=1e-5)
        np.testing.assert_allclose(got["pooled"][row], alone["pooled"][0], atol=1e-5)


def test_a_dynamically_quantized_attention_after_a_packed_one_is_fed_unpacked():
    """int8 with one attention left float (``exclude_nodes``): DynamicQuantizeLinear runs packed,
    its scalar scale and zero point stay as they are, and the QAttention after it (not packed)
    reads its values unpacked: the packed graph loads and gives every row."""
    model = _encoder("range")
    rng = np.random.default_rng(1)
    model.graph.initializer.extend([
        onh.from_array(rng.integers(-100, 100, (HIDDEN, 3 * HIDDEN)).astype(np.int8), "qkv8"),
        onh.from_array(np.zeros(3 * HIDDEN, np.float32), "qkv8_bias"),
        onh.from_array(np.array(0.01, np.float32), "qkv8_scale"), onh.from_array(np.array(0, np.int8), "qkv8_zero")])
    model.graph.node.extend([
        oh.make_node("DynamicQuantizeLinear", ["hidden"], ["hidden_u8", "hidden_scale", "hidden_zero"]),
        oh.make_node("QAttention", ["hidden_u8", "qkv8", "qkv8_bias", "hidden_scale", "qkv8_scale", "mask_index",
                                    "hidden_zero", "qkv8_zero"], ["second"], domain="com.microsoft", num_heads=HEADS)])
    model.graph.output.append(oh.make_tensor_value_info("second", onnx.TensorProto.FLOAT, ["batch", "sequence", HIDDEN]))
    packed = ir.serde.deserialize_model(model)
    assert pack_graph(packed, "attention_mask", ("input_ids", "attention_mask")) is None
    layout = PaddingLayout("attention_mask", ("input_ids", "attention_mask"),
                           {"hidden": (0, 1), "pooled": (0, None), "second": (0, 1)})
    runner = PackingRunner(lambda feeds: run_model(ir.serde.deserialize_model(model), feeds), layout,
                           lambda: lambda feeds: run_model(packed, {
                               k: v for k, v in feeds.items() if k in {i.name for i in packed.graph.inputs}}), width=12)
    got = runner.run(_padded([5, 7, 1, 9], 10))
    assert got["second"].shape == (4, 10, HIDDEN) and np.isfinite(got["second"]).all()


def test_what_cannot_be_packed_says_why():
    why = pack_graph(ir.serde.deserialize_model(_encoder("cumsum")), "attention_mask", ("input_ids", "attention_mask"))
    assert why is not None and "mask" in why
    table = onh.from_array(np.zeros((VOCAB, HIDDEN), np.float32), "table")
    plain = make_model(
        [oh.make_node("Gather", ["table", "input_ids"], ["hidden"])],
        [oh.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"]),
         oh.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, ["batch", "sequence"])],
        [oh.make_tensor_value_info("hidden", onnx.TensorProto.FLOAT, ["batch", "sequence", HIDDEN])], [table],
    )
    assert "no fused Attention" in pack_graph(ir.serde.deserialize_model(plain), "attention_mask", ("input_ids", "attention_mask"))


def test_the_build_measures_packing_and_an_unpackable_model_refuses_pack_in_one_line(tmp_path):
    art = llmc.build(_encoder("cumsum"), output=tmp_path / "roberta", cache=False, shapes={"input_ids": (2, 8)})
    section = art.manifest["padding"]
    assert section["bucket"]["safe"] and not section["pack"]["applies"] and "mask" in section["pack"]["reason"]
    assert llmc.load(art.path).padding == "bucket"
    with pytest.raises(LlmcError, match="padding 'pack' does not apply") as info:
        llmc.load(art.path, padding="pack")
    assert "\n" not in str(info.value)
    art = llmc.build(_encoder("range"), output=tmp_path / "bert", cache=False, shapes={"input_ids": (2, 8)})
    assert art.manifest["padding"]["pack"]["safe"]
    packing, computing = llmc.load(art.path), llmc.load(art.path, padding="off")
    assert packing.padding == "pack"
    feeds = _padded([3, 8, 2, 5, 1], 10, seed=1)
    got, want = packing.run(feeds), computing.run(feeds)
    np.testing.assert_allclose(got["pooled"], want["pooled"], atol=1e-5)
    real = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(got["hidden"][real], want["hidden"][real], atol=1e-5)


def test_the_packed_session_checks_the_model_file_again(tmp_path):
    """The packed graph is made from model.onnx when a batch first packs, after the load's
    integrity check: a file changed in between is refused in one line, not run."""
    art = llmc.build(_encoder("range"), output=tmp_path / "bert", cache=False, shapes={"input_ids": (2, 8)})
    runner = llmc.load(art.path)
    with open(art.path / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(LlmcError) as info:
        runner.run(_padded([3, 2, 4], 6))
    assert "model.onnx" in str(info.value) and "\n" not in str(info.value)
