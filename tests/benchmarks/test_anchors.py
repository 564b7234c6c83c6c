"""Benchmark anchors (benchmarks/anchors.py) and callable bench targets, on tiny one-node models."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from benchmarks import anchors
from llmc.errors import LlmcError
from llmc.runtime.bench import BenchModel, resolve_bench_model, run_benchmark
from tests.helpers import make_model

F = onnx.TensorProto.FLOAT


def _two_matmuls(path, external: bool = False):
    """y = (x @ w1) reshaped at run time @ w2: the Reshape target is computed from Shape."""
    x = oh.make_tensor_value_info("x", F, ["b", "s", 8])
    y = oh.make_tensor_value_info("y", F, None)
    w1 = onh.from_array(np.ones((8, 6), np.float32), "w1")
    w2 = onh.from_array(np.ones((2, 3, 5), np.float32), "w2")
    last = onh.from_array(np.array([2, 3], np.int64), "last")
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h"]),  # [b, s, 6]
        oh.make_node("Shape", ["h"], ["hs"], end=2),
        oh.make_node("Concat", ["hs", "last"], ["target"], axis=0),
        oh.make_node("Reshape", ["h", "target"], ["h4"]),  # [b, s, 2, 3]
        oh.make_node("Transpose", ["h4"], ["ht"], perm=[0, 2, 1, 3]),  # [b, 2, s, 3]
        oh.make_node("MatMul", ["ht", "w2"], ["y"]),  # batched: [b, 2, s, 3] x [2, 3, 5]
    ]
    model = make_model(nodes, [x], [y], [w1, w2, last])
    if external:
        onnx.save(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("external", [False, True])
def test_matmul_flops_counts_runtime_shapes(tmp_path, external):
    path = _two_matmuls(tmp_path / "mm.onnx", external)
    b, s = 3, 4
    feeds = {"x": np.ones((b, s, 8), np.float32)}
    expected = 2 * b * s * 8 * 6 + 2 * (b * 2) * s * 3 * 5
    assert anchors.matmul_flops(path, feeds) == expected


def test_matmul_flops_gemm_transposed(tmp_path):
    a = oh.make_tensor_value_info("a", F, [5, 4])  # transA: M=4, K=5
    y = oh.make_tensor_value_info("y", F, [4, 7])
    w = onh.from_array(np.ones((7, 5), np.float32), "w")  # transB: N=7
    model = make_model([oh.make_node("Gemm", ["a", "w"], ["y"], transA=1, transB=1)], [a], [y], [w])
    onnx.save(model, str(tmp_path / "gemm.onnx"))
    assert anchors.matmul_flops(tmp_path / "gemm.onnx", {"a": np.ones((5, 4), np.float32)}) == 2 * 4 * 7 * 5


def test_callable_target_interleaves_with_ort(relu_model):
    calls = {"made": 0, "runs": 0}

    def make_runner():
        calls["made"] += 1

        def run(feeds):
            calls["runs"] += 1
            return np.maximum(feeds["x"] + np.arange(3, dtype=np.float32), 0)

        return run

    targets = [resolve_bench_model(relu_model, threads=1), BenchModel("numpy", make_runner=make_runner)]
    feeds = {"x": np.ones((2, 3), np.float32)}
    ort, fn = run_benchmark(targets, feeds, runs=7, warmup=2, block=3, pause_s=0.0, measure_rss=True)
    assert calls["made"] == 1
    # warm-up + timed runs + one untimed run per block switch (ceil(7 / 3) = 3 blocks)
    assert calls["runs"] == 2 + 7 + 3
    assert fn.label == "numpy" and fn.runs == 7 and fn.p50_ms > 0
    assert fn.peak_rss_mb is None and ort.peak_rss_mb is not None and ort.peak_rss_mb > 0
    assert fn.ratio_p50 == pytest.approx(fn.p50_ms / ort.p50_ms)


def test_bench_target_needs_exactly_one_kind(relu_model):
    with pytest.raises(LlmcError):
        BenchModel("neither")
    with pytest.raises(LlmcError):
        BenchModel("both", relu_model, make_runner=lambda: print)


def test_torch_eager_target_runs_keyword_inputs():
    torch = pytest.importorskip("torch")

    class Add(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return input_ids + attention_mask

    run = anchors.torch_eager_target("torch", Add(), ["input_ids", "attention_mask"], threads=1).make_runner()
    out = run(
        {
            "input_ids": np.ones((1, 4), np.int64),
            "attention_mask": np.full((1, 4), 2, np.int64),
            "ignored": np.zeros(1),
        }
    )
    assert out.tolist() == [[3, 3, 3, 3]]


def test_torch_eager_target_positional_order():
    torch = pytest.importorskip("torch")

    class Sub(torch.nn.Module):
        def forward(self, a, *rest):
            return a - rest[0]

    feeds = {"b": np.full((2,), 5, np.int64), "a": np.ones((2,), np.int64)}
    run = anchors.torch_eager_target("torch", Sub(), ["a", "b"], threads=1, positional=True).make_runner()
    assert run(feeds).tolist() == [-4, -4]


def test_transformers_optimizer_failure_is_one_line(tmp_path, relu_model, monkeypatch):
    from onnxruntime.transformers import optimizer

    def crash(*args, **kwargs):
        raise IndexError("list index out of range\n(in onnx_model_gpt2.py)")

    monkeypatch.setattr(optimizer, "optimize_model", crash)
    with pytest.raises(anchors.AnchorFailed) as info:
        anchors.transformers_optimizer(
            relu_model, tmp_path / "out.onnx", model_type="gpt2", num_heads=2, hidden_size=4
        )
    assert info.value.reason == "IndexError: list index out of range (in onnx_model_gpt2.py)"
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.onnx").exists()


def test_transformers_optimizer_caches_and_counts(tmp_path, relu_model):
    dst = anchors.transformers_optimizer(
        relu_model, tmp_path / "opt.onnx", model_type="bert", num_heads=1, hidden_size=3
    )
    assert dst.exists()
    mtime = dst.stat().st_mtime_ns
    assert (
        anchors.transformers_optimizer(relu_model, dst, model_type="bert", num_heads=1, hidden_size=3) == dst
    )
    assert dst.stat().st_mtime_ns == mtime  # cached: not rewritten
    assert anchors.fused_op_counts(dst) == {}


def test_fused_op_counts(tmp_path):
    x = oh.make_tensor_value_info("x", F, [2, 4])
    y = oh.make_tensor_value_info("y", F, [2, 4])
    nodes = [
        oh.make_node("FastGelu", ["x"], ["g"], domain="com.microsoft"),
        oh.make_node("FastGelu", ["g"], ["h"], domain="com.microsoft"),
        oh.make_node("Relu", ["h"], ["y"]),
    ]
    model = make_model(nodes, [x], [y], extra_opsets=[("com.microsoft", 1)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert anchors.fused_op_counts(tmp_path / "m.onnx") == {"FastGelu": 2}


def test_matmul_peak_gflops_small():
    result = anchors.matmul_peak_gflops(
        threads=1, shapes=((16, 32, 32), (8, 16, 4)), rounds=2, runs=3, pause_s=0.0
    )
    assert result["threads"] == 1
    assert list(result["shapes"]) == ["[16x32]x[32x32]", "[8x16]x[16x4]"]
    assert result["peak"] == max(result["shapes"].values()) > 0
