"""Memory planning: liveness, arena plans (checked valid), schedulers, shapes, manifest, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmc.passes.memory.arena import check_plan, plan_arena
from llmc.passes.memory.liveness import (
    ACTIVATION,
    INPUT,
    OUTPUT,
    WEIGHT,
    MemoryGraph,
    Op,
    Tensor,
    inplace_candidates,
    liveness,
    with_inplace,
)
from llmc.passes.memory.schedule import choose_order, dfs_order, list_order
from tests.helpers import make_model


@st.composite
def random_graphs(draw) -> MemoryGraph:
    """A random DAG: inputs, weights, ops reading 1-3 earlier tensors, views, dead and graph outputs."""
    tensors = [Tensor("in0", draw(st.integers(0, 5000)), INPUT)]
    tensors += [Tensor(f"w{i}", 100, WEIGHT) for i in range(draw(st.integers(0, 2)))]
    ops = []
    for i in range(draw(st.integers(1, 30))):
        ins = tuple(draw(st.lists(st.integers(0, len(tensors) - 1), min_size=1, max_size=3)))
        view = draw(st.booleans()) and draw(st.booleans())
        outs = []
        for j in range(1 if view else draw(st.integers(1, 2))):
            size = tensors[ins[0]].nbytes if view and j == 0 else draw(st.integers(0, 20000))
            kind = OUTPUT if draw(st.integers(0, 9)) == 0 else ACTIVATION
            outs.append(len(tensors))
            tensors.append(Tensor(f"t{i}_{j}", size, kind))
        ops.append(Op(f"op{i}", "Reshape" if view else "Add", ins, tuple(outs), view=view, elementwise=not view))
    return MemoryGraph(tensors, ops)


def brute_force_bound(graph: MemoryGraph, order: list[int], alignment: int) -> int:
    """The most aligned bytes live at one step, from tensors directly (no buffer bookkeeping)."""
    step = {op: s for s, op in enumerate(order)}
    storage = list(range(len(graph.tensors)))
    for op in graph.ops:  # a view's output lives in its input's storage
        if op.view and graph.tensors[op.inputs[0]].nbytes == graph.tensors[op.outputs[0]].nbytes:
            storage[op.outputs[0]] = storage[op.inputs[0]]
    spans: dict[int, list[int]] = {}
    for i, op in enumerate(graph.ops):
        for t in (*op.inputs, *op.outputs):
            spans.setdefault(storage[t], []).append(step[i])
    external = {
        storage[t] for t, tensor in enumerate(graph.tensors) if tensor.kind in (INPUT, WEIGHT, OUTPUT)
    }
    best = 0
    for s in range(len(order)):
        total = 0
        for root, steps in spans.items():
            if root not in external and min(steps) <= s <= max(steps):
                total += -(-graph.tensors[root].nbytes // alignment) * alignment
        best = max(best, total)
    return best


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs(), st.sampled_from([1, 16, 64]))
def test_plans_on_random_graphs_are_valid_and_bounded(graph, alignment):
    for order in (list(range(len(graph.ops))), dfs_order(graph), list_order(graph)):
        graph.check_order(order)
        live = liveness(graph, order, alignment)
        assert live.lower_bound() == brute_force_bound(graph, order, alignment)
        plan = plan_arena(live)
        assert plan.problems() == []
        assert (plan.offsets % alignment == 0).all()
        assert live.lower_bound() <= plan.arena_bytes <= int(plan.sizes.sum())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_chosen_order_never_raises_the_bound(graph):
    choice = choose_order([graph], 64)
    graph.check_order(choice.order)
    assert liveness(graph, choice.order).lower_bound() <= liveness(graph).lower_bound()
    assert min(min(v) for v in choice.lower_bounds.values()) == liveness(graph, choice.order).lower_bound()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_inplace_reuse_never_raises_the_bound(graph):
    live = liveness(graph)
    merged = with_inplace(graph, inplace_candidates(live))
    assert liveness(merged).lower_bound() <= live.lower_bound()


def _chain() -> MemoryGraph:
    # x -> a (100) -> b (200) -> c (300, graph output); b's Reshape view r shares b's buffer.
    tensors = [
        Tensor("x", 10, INPUT), Tensor("a", 100), Tensor("b", 200), Tensor("r", 200), Tensor("c", 300, OUTPUT),
    ]
    ops = [
        Op("A", "Relu", (0,), (1,)),
        Op("B", "Relu", (1,), (2,)),
        Op("R", "Reshape", (2,), (3,), view=True),
        Op("C", "Relu", (3,), (4,)),
    ]
    return MemoryGraph(tensors, ops)


def test_chain_bound_views_and_external_buffers():
    graph = _chain()
    live = liveness(graph, alignment=1)
    assert live.lower_bound() == 300  # a + b at step B; the view adds nothing; c is an output
    assert graph.bytes_of(INPUT) == 10 and graph.bytes_of(OUTPUT) == 300
    plan = plan_arena(live)
    assert plan.arena_bytes == 300 and plan.problems() == []
    assert liveness(graph, alignment=64).lower_bound() == 128 + 256


def test_checker_rejects_overlap_misalignment_and_overflow():
    sizes = np.array([64, 64])
    start, end = np.array([0, 1]), np.array([2, 3])
    assert check_plan(sizes, start, end, np.array([0, 64]), 128, 64) == []
    assert "overlap" in check_plan(sizes, start, end, np.array([0, 0]), 128, 64)[0]
    assert "aligned" in check_plan(sizes, start, end, np.array([0, 96]), 192, 64)[0]
    assert "past the arena" in check_plan(sizes, start, end, np.array([0, 64]), 100, 64)[0]
    # Not live together: sharing bytes is fine.
    assert check_plan(sizes, np.array([0, 3]), np.array([2, 4]), np.array([0, 0]), 64, 64) == []


def _branches() -> MemoryGraph:
    # Two branches each make a big temporary then a small result; C joins them. The graph order
    # runs both big ops first, so both big tensors are live together.
    tensors = [Tensor("x", 8, INPUT), Tensor("big1", 1000), Tensor("big2", 1000), Tensor("s1", 10),
               Tensor("s2", 10), Tensor("y", 10, OUTPUT)]
    ops = [
        Op("A", "MatMul", (0,), (1,)),
        Op("B", "MatMul", (0,), (2,)),
        Op("A2", "ReduceSum", (1,), (3,)),
        Op("B2", "ReduceSum", (2,), (4,)),
        Op("C", "Add", (3, 4), (5,)),
    ]
    return MemoryGraph(tensors, ops)


def test_schedulers_lower_the_peak_of_a_bad_order():
    graph = _branches()
    assert liveness(graph, alignment=1).lower_bound() == 2010  # big1 + big2 + s1 at A2
    for order in (dfs_order(graph), list_order(graph)):
        assert liveness(graph, order, alignment=1).lower_bound() == 1020  # big2 + s1 + s2 at B2
    choice = choose_order([graph], 1)
    assert choice.scheduler in ("dfs", "list")


def test_inplace_candidates_need_an_input_that_dies_there():
    graph = _chain()
    found = inplace_candidates(liveness(graph))
    assert [graph.ops[c.op].name for c in found] == []  # sizes differ along the chain
    tensors = [Tensor("x", 10, INPUT), Tensor("a", 100), Tensor("b", 100), Tensor("c", 100, OUTPUT)]
    ops = [Op("A", "Relu", (0,), (1,)), Op("B", "Relu", (1,), (2,), elementwise=True), Op("C", "Add", (1, 2), (3,))]
    graph = MemoryGraph(tensors, ops)
    assert inplace_candidates(liveness(graph)) == []  # a is still read by C
    ops[2] = Op("C", "Neg", (2,), (3,))
    graph = MemoryGraph(tensors, ops)
    (c,) = inplace_candidates(liveness(graph))
    assert (c.input, c.output) == (1, 2)
    assert liveness(with_inplace(graph, [c]), alignment=1).lower_bound() == 100


# --- ONNX graphs ---------------------------------------------------------------------------------


def _all_intermediate_shapes(path, feeds) -> dict[str, tuple[int, ...]]:
    """Every node output's real shape, from ONNX Runtime with all of them as graph outputs."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    names = [o for n in model.graph.node for o in n.output if o]
    del model.graph.output[:]
    model.graph.output.extend(oh.make_empty_tensor_value_info(n) for n in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return {n: tuple(a.shape) for n, a in zip(names, session.run(names, feeds), strict=True)}


@pytest.mark.parametrize("fixture", ["tiny_bert_dynamo", "tiny_gpt2_dynamo", "tiny_llama_dynamo", "tiny_gpt2_legacy"])
def test_tensor_shapes_match_onnx_runtime(fixture, request):
    from llmc.model.feeds import make_feeds, resolve_shapes
    from llmc.model.io import load_model
    from llmc.passes.memory.concrete_shapes import tensor_shapes

    path = request.getfixturevalue(fixture)
    model = load_model(path)
    shapes, _ = resolve_shapes(model, {"input_ids": (3, 7)})
    feeds = make_feeds(model, shapes)
    ours = tensor_shapes(model, shapes, feeds)
    for name, shape in _all_intermediate_shapes(path, feeds).items():
        assert ours[name][0] == shape, name


def test_int8_ops_are_sized(tiny_bert_dynamo, tmp_path):
    import llmc
    from llmc.model.io import load_model
    from llmc.passes.memory.planner import analyze_memory

    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_ids=rng.integers(0, 1000, (8, 16)), attention_mask=np.ones((8, 16), np.int64),
             token_type_ids=np.zeros((8, 16), np.int64))
    model = load_model(tiny_bert_dynamo)
    names = {v.name for v in model.graph.inputs}
    data = dict(np.load(calib))
    np.savez(calib, **{k: v for k, v in data.items() if k in names})
    art = llmc.build(tiny_bert_dynamo, output=tmp_path / "int8", precision="int8", calibration_data=calib,
                     shapes={"input_ids": (1, 16)})
    assert art.manifest["memory"]["arena_bytes"] > 0
    quantized = load_model(art.model_path)
    ops = {n.op_type for n in quantized.graph}
    assert ops & {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention"}
    analysis = analyze_memory(quantized, [{"input_ids": (2, 16), "attention_mask": (2, 16)}])
    assert analysis.sets[0].plan.problems() == []


def _two_branch_model(path):
    """y = ReduceSum(x @ W1) + ReduceSum(x @ W2), written with both MatMuls first."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 1])
    rng = np.random.default_rng(0)
    w1 = onnx.numpy_helper.from_array(rng.standard_normal((64, 512)).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array(rng.standard_normal((64, 512)).astype(np.float32), "w2")
    axes = onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"),
        oh.make_node("MatMul", ["x", "w2"], ["b"], name="mm2"),
        oh.make_node("ReduceSum", ["a", "axes"], ["ra"], name="r1"),
        oh.make_node("ReduceSum", ["b", "axes"], ["rb"], name="r2"),
        oh.make_node("Add", ["ra", "rb"], ["y"], name="add"),
    ]
    onnx.save(make_model(nodes, [x], [y], [w1, w2, axes]), path)
    return path


def test_memory_pass_reorders_and_the_artifact_keeps_the_order(tmp_path):
    import llmc
    from llmc.model.io import load_model

    source = _two_branch_model(tmp_path / "branches.onnx")
    art = llmc.build(source, output=tmp_path / "out", shapes={"x": (32, 64)})
    memory = art.manifest["memory"]
    assert memory["order_changed"] is True
    assert memory["lower_bound_bytes"] < memory["lower_bound_before_reorder_bytes"]
    assert memory["lower_bound_bytes"] == 2 * 32 * 512 * 4 // 2 + 2 * 128  # one [32, 512] + two [32, 1]
    assert art.manifest["session"]["options"]["execution_order"] == "priority_based"
    order = [n.name for n in load_model(art.model_path).graph]
    assert order.index("r1") < order.index("mm2") or order.index("r2") < order.index("mm1")
    x = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    ref = llmc.load(art.path).run({"x": x})["y"]
    import onnxruntime as ort

    expected = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(ref, expected, rtol=1e-5, atol=1e-4)


def test_build_manifest_records_memory(tiny_gpt2_dynamo, tmp_path):
    import llmc

    art = llmc.build(tiny_gpt2_dynamo, output=tmp_path / "out", shapes={"input_ids": (2, 4), "attention_mask": (2, 10)})
    memory = art.manifest["memory"]
    for key in ("arena_bytes", "lower_bound_bytes", "naive_bytes", "weights_bytes", "peak_node", "shapes", "order_changed"):
        assert key in memory, key
    assert memory["shapes"]["input_ids"] == [2, 4]
    assert memory["lower_bound_bytes"] <= memory["arena_bytes"] <= memory["naive_bytes"]
    assert memory["weights_bytes"] > 0
    layers, heads, head = 2, 4, 16  # TINY_GPT2
    assert memory["kv_cache"]["present_bytes"] == layers * 2 * 2 * heads * 10 * head * 4
    assert memory["kv_cache"]["bytes_per_token"] == layers * 2 * heads * head * 4
    assert memory["kv_cache"]["past_bytes"] == layers * 2 * 2 * heads * 6 * head * 4
    assert art.manifest["passes"][-1]["name"] == "memory"


def test_parse_shape_sets():
    from llmc.model.feeds import parse_shape_sets

    assert parse_shape_sets(None) == [{}]
    assert parse_shape_sets(["input_ids=1x128", "attention_mask=1x128", "input_ids=8x512"]) == [
        {"input_ids": (1, 128), "attention_mask": (1, 128)},
        {"input_ids": (8, 512)},
    ]


def test_inspect_memory_cli(tiny_llama_dynamo, tmp_path):
    from typer.testing import CliRunner

    from llmc.cli.main import app

    runner = CliRunner()
    plot = tmp_path / "memory.png"
    args = ["inspect", str(tiny_llama_dynamo), "--memory", "--shape", "input_ids=1x16", "--shape",
            "attention_mask=1x16", "--shape", "input_ids=4x64", "--shape", "attention_mask=4x64"]
    result = runner.invoke(app, [*args, "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    for text in ("activation arena", "lower bound", "no-reuse total", "KV cache", "peak at node", "input_ids=4x64"):
        assert text in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, [*args, "--json"])
    report = json.loads(result.output)
    assert report["shapes"]["input_ids"] == [1, 16] and report["shape_sets"][0]["shapes"]["input_ids"] == [4, 64]
    assert report["kv_cache"]["tokens"] == 16
    assert report["shape_sets"][0]["lower_bound_bytes"] > report["lower_bound_bytes"]


@pytest.mark.parametrize(
    "extra, message",
    [(["--plot", "x.jpg"], "write a .png"), (["--alignment", "0"], "at least 1 byte"), (["--shape", "nope=1x2"], "unknown input")],
)
def test_inspect_memory_errors(tiny_bert_dynamo, extra, message):
    from typer.testing import CliRunner

    from llmc.cli.main import app

    result = CliRunner().invoke(app, ["inspect", str(tiny_bert_dynamo), "--memory", *extra])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_build_cli_prints_memory_and_takes_alignment(tiny_bert_dynamo, tmp_path):
    from typer.testing import CliRunner

    from llmc.cli.main import app

    result = CliRunner().invoke(
        app, ["build", str(tiny_bert_dynamo), "-o", str(tmp_path / "out"), "--shape", "input_ids=2x16", "--alignment", "256"]
    )
    assert result.exit_code == 0, result.output
    assert "memory at the verification shapes: activation arena" in result.output
    memory = json.loads((tmp_path / "out" / "manifest.json").read_text())["memory"]
    assert memory["alignment"] == 256 and memory["arena_bytes"] % 256 == 0
    assert memory["shapes"]["input_ids"] == [2, 16]
