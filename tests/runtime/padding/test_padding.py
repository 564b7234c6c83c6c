"""Padding-aware execution of encoders: trimming and length buckets keep every real position's
outputs, what the build measured decides the default, and what cannot apply is one line."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.runtime.padding.execute import PaddedRunner, plan_buckets, real_lengths
from llmc.runtime.padding.layout import PaddingLayout
from tests.helpers import make_model

runner = CliRunner()


def test_real_lengths_count_to_the_last_real_token():
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]])
    assert real_lengths(mask).tolist() == [2, 1, 1, 3, 4]


def test_buckets_cover_every_row_once_and_follow_the_overhead():
    lengths = np.array([5, 50, 6, 48, 7])
    buckets = plan_buckets(lengths, overhead=4)
    assert sorted(np.concatenate(buckets).tolist()) == [0, 1, 2, 3, 4]
    assert [sorted(b.tolist()) for b in buckets] == [[0, 2, 4], [1, 3]]
    assert len(plan_buckets(lengths, overhead=10_000)) == 1
    assert len(plan_buckets(lengths, overhead=0)) == 5  # no overhead: every distinct length alone
    assert [b.tolist() for b in plan_buckets(np.array([9]))] == [[0]]


def test_runner_restores_shapes_and_axes_of_every_output():
    """A fake model with outputs [B, S, H], [S, B] and [B]: trimmed and bucketed runs give the
    padded run's values at real positions and the request's shapes."""

    def run(feeds):
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        hidden = (ids[..., None] * np.arange(1, 4)).astype(np.float32) * mask[..., None]
        return {"hidden": hidden, "transposed": hidden[..., 0].T.copy(), "pooled": hidden.sum(axis=(1, 2))}

    layout = PaddingLayout("attention_mask", ("input_ids", "attention_mask"),
                           {"hidden": (0, 1), "transposed": (1, 0), "pooled": (0, None)})
    lengths = np.array([3, 9, 1, 4])
    mask = (np.arange(12)[None] < lengths[:, None]).astype(np.int64)
    feeds = {"input_ids": np.arange(48).reshape(4, 12) + 1, "attention_mask": mask}
    want = run(feeds)
    for mode in ("trim", "bucket"):
        got = PaddedRunner(run, layout, mode, overhead=2).run(feeds)
        assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])  # padding rows are 0 in both here


@pytest.fixture(scope="module")
def bert(tiny_bert_dynamo, tmp_path_factory):
    return llmc.build(tiny_bert_dynamo, output=tmp_path_factory.mktemp("pad") / "bert", cache=False)


def _padded(lengths: list[int], width: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (np.arange(width)[None] < np.array(lengths)[:, None]).astype(np.int64)
    ids = rng.integers(1, 100, size=mask.shape) * mask
    return {"input_ids": ids, "attention_mask": mask}


def _assert_real_positions_equal(got, want, mask):
    real = mask.astype(bool)
    for name, array in want.items():
        assert got[name].shape == array.shape
        if array.ndim >= 2 and array.shape[:2] == mask.shape:
            np.testing.assert_allclose(got[name][real], array[real], atol=1e-5, rtol=1e-5)
        else:
            np.testing.assert_allclose(got[name], array, atol=1e-5, rtol=1e-5)


def test_build_measures_padding_and_load_skips_it_by_default(bert):
    section = bert.manifest["padding"]
    assert section["applies"] and section["trim"]["safe"] and section["bucket"]["safe"] and section["pack"]["safe"]
    assert section["mask"] == "attention_mask"
    assert section["outputs"]["last_hidden_state"] == {"batch_axis": 0, "sequence_axis": 1}
    skipping, computing = llmc.load(bert.path), llmc.load(bert.path, padding="off")
    assert (skipping.padding, computing.padding) == ("pack", "off")
    others = [llmc.load(bert.path, padding=mode) for mode in ("trim", "bucket")]
    assert [r.padding for r in others] == ["trim", "bucket"]
    # Ragged lengths (packed two or three to a row), a row of one token, rows that all fill a
    # packed row (buckets), and a batch whose rows are all full.
    cases = (([5, 17, 1, 9, 16], 32), ([1], 16), ([40, 70, 3], 96), ([12, 12], 12), ([3, 3, 3], 20))
    for lengths, width in cases:
        feeds = _padded(lengths, width)
        want = computing.run(feeds)
        for run in (skipping, *others):
            _assert_real_positions_equal(run.run(feeds), want, feeds["attention_mask"])


def test_trimming_that_changes_an_output_stays_off_by_default(tmp_path):
    """An output averaging over every position, padding included: the build measures that
    trimming changes it, so ``auto`` computes the padding; asking for trim is the user's call."""
    table = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    nodes = [
        oh.make_node("Gather", ["table", "input_ids"], ["emb"]),
        oh.make_node("Cast", ["attention_mask"], ["maskf"], to=onnx.TensorProto.FLOAT),
        oh.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        oh.make_node("Mul", ["emb", "mask3"], ["hidden"]),
        oh.make_node("ReduceMean", ["emb", "axis1"], ["pooled"], keepdims=0),
    ]
    model = make_model(
        nodes,
        [oh.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"]),
         oh.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, ["batch", "sequence"])],
        [oh.make_tensor_value_info("hidden", onnx.TensorProto.FLOAT, ["batch", "sequence", 8]),
         oh.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, ["batch", 8])],
        [onh.from_array(table, "table"), onh.from_array(np.array([2], np.int64), "axis2"),
         onh.from_array(np.array([1], np.int64), "axis1")],
    )
    art = llmc.build(model, output=tmp_path / "o", cache=False, shapes={"input_ids": (2, 8)})
    section = art.manifest["padding"]
    assert section["applies"] and not section["trim"]["safe"] and section["trim"]["max_difference"] > 1e-3
    assert llmc.load(art.path).padding == "off"
    assert llmc.load(art.path, padding="trim").padding == "trim"


def test_decoders_and_bad_modes_are_one_line(bert, tiny_llama_dynamo, tmp_path):
    art = llmc.build(tiny_llama_dynamo, output=tmp_path / "llama", cache=False)
    assert not art.manifest["padding"]["applies"] and "decoder" in art.manifest["padding"]["reason"]
    assert llmc.load(art.path).padding == "off"
    for path, mode, words in ((art.path, "trim", "does not apply"), (bert.path, "sideways", "must be one of")):
        with pytest.raises(LlmcError, match=words) as info:
            llmc.load(path, padding=mode)
        assert "\n" not in str(info.value)


def test_bench_padding_option(bert, tmp_path):
    feeds = _padded([5, 17, 1, 9], 32)
    np.savez(tmp_path / "feeds.npz", **feeds)
    for mode in ("bucket", "off"):
        result = runner.invoke(app, ["bench", str(bert.path), "--inputs", str(tmp_path / "feeds.npz"), "--runs", "3",
                                     "--warmup", "1", "--no-rss", "--padding", mode, "--json"])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["bench", str(bert.path), "--padding", "sideways", "--runs", "1", "--no-rss"])
    assert result.exit_code == 1 and "padding must be one of" in result.output
