"""The built-in passes (prune, fold, noop, cse, shape), one at a time, on small hand-built models.

For every pass: structural tests (what is removed or replaced, the pass's stats and ``modified``),
numeric tests (ONNX Runtime outputs before and after the pass are the same) and near-miss tests
(a model that almost matches is left alone, ``modified`` False).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest
from onnx import TensorProto, numpy_helper

from llmc.backends.ort import run_model
from llmc.compiler.pass_manager import PassManager
from llmc.compiler.pipeline import default_pipeline
from llmc.compiler.registry import PassOptions, get_pass

F = TensorProto.FLOAT
I64 = TensorProto.INT64
PASSES = ("prune", "fold", "noop", "cse", "shape")


# --------------------------------------------------------------------------- helpers


def vi(name: str, shape, dtype: int = F) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, dtype, shape)


def const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def node(op: str, inputs, outputs, domain: str = "", **attrs) -> onnx.NodeProto:
    return oh.make_node(op, list(inputs), list(outputs), domain=domain, **attrs)


def build(nodes, inputs, outputs, inits=(), opset: int = 18, extra_opsets=(), functions=()) -> ir.Model:
    graph = oh.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(inits))
    opsets = [oh.make_opsetid("", opset), *(oh.make_opsetid(d, v) for d, v in extra_opsets)]
    proto = oh.make_model(graph, opset_imports=opsets, ir_version=10, functions=list(functions))
    return ir.serde.deserialize_model(proto)


def apply(name: str, model: ir.Model, options: PassOptions | None = None):
    """Run one registered pass in place; return (PassResult, stats)."""
    pass_ = get_pass(name).factory(options or PassOptions())
    result = pass_(model)
    assert result.model is model
    return result, pass_.stats


def op_types(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def init_values(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}


def random_feeds(model: ir.Model, seed: int = 0, dynamic: int = 2) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input without an initializer (symbolic dims -> dynamic)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.inputs:
        if value.const_value is not None:
            continue
        shape = [d if isinstance(d, int) else dynamic for d in value.shape.dims]
        dtype = value.dtype.numpy()
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = rng.integers(-5, 5, size=shape).astype(dtype)
    return feeds


def assert_outputs_equal(before: dict, after: dict, exact: bool = False) -> None:
    assert before.keys() == after.keys()
    for name, ref in before.items():
        assert ref.shape == after[name].shape, name
        assert ref.dtype == after[name].dtype, name
        if exact:
            np.testing.assert_array_equal(after[name], ref, err_msg=name)
        else:
            np.testing.assert_allclose(after[name], ref, rtol=1e-6, atol=1e-6, err_msg=name)


def check_numerics(name: str, model: ir.Model, exact: bool = False, seeds=(0, 1), **feed_kw):
    """Run ``name`` on ``model``; ORT outputs must not change. Returns the pass stats."""
    feeds = [random_feeds(model, seed, **feed_kw) for seed in seeds]
    before = [run_model(model, f) for f in feeds]
    result, stats = apply(name, model)
    assert result.modified, f"{name} did nothing: the numeric check would be vacuous"
    for f, ref in zip(feeds, before, strict=True):
        assert_outputs_equal(ref, run_model(model, f), exact=exact)
    return stats


def snapshot(model: ir.Model) -> tuple:
    """Everything a pass could rewrite (shape annotations aside): equal snapshots, untouched model."""

    def attr(a: ir.Attr):
        return (a.name, a.type.name, str(a.value))

    graph = model.graph
    return (
        [(n.domain, n.op_type, n.name, [v.name if v is not None else "" for v in n.inputs],
          [v.name for v in n.outputs], sorted(attr(a) for a in n.attributes.values())) for n in graph],
        [v.name for v in graph.inputs],
        [v.name for v in graph.outputs],
        {name: (v.const_value.numpy().dtype.str, v.const_value.numpy().tobytes())
         for name, v in graph.initializers.items()},
        dict(model.opset_imports),
        sorted(model.functions),
    )


# --------------------------------------------------------------------------- prune


def dead_code_model() -> ir.Model:
    """y = Sigmoid(Relu(x)), also output a; Neg(x) + u and Exp(x) are dead; u2 is unused."""
    return build(
        [
            node("Relu", ["x"], ["a"]),
            node("Neg", ["x"], ["dead"]),
            node("Add", ["dead", "u"], ["dead2"]),
            node("Exp", ["x"], ["dead3"]),
            node("Sigmoid", ["a"], ["y"]),
        ],
        [vi("x", [2, 3]), vi("unused", [3])],
        [vi("y", None), vi("a", None)],
        [const("u", np.ones(3, np.float32)), const("u2", np.ones(3, np.float32))],
    )


def test_prune_removes_dead_nodes_and_unused_initializers():
    model = dead_code_model()
    result, stats = apply("prune", model)
    assert result.modified
    assert op_types(model) == ["Relu", "Sigmoid"]
    assert stats == {"nodes": 3, "initializers": 2}
    assert list(model.graph.initializers) == []


def test_prune_keeps_graph_inputs_and_outputs():
    model = dead_code_model()
    apply("prune", model)
    # The unused graph input stays: the model's signature does not change.
    assert [v.name for v in model.graph.inputs] == ["x", "unused"]
    # "a" is read by Sigmoid *and* is a graph output; both producers stay.
    assert [v.name for v in model.graph.outputs] == ["y", "a"]


def test_prune_removes_unused_custom_node_opset_and_function():
    fn = oh.make_function(
        "my.fns", "Twice", ["t"], ["u"], [node("Add", ["t", "t"], ["u"])],
        opset_imports=[oh.make_opsetid("", 18)],
    )
    model = build(
        [node("Foo", ["x"], ["f"], domain="my.custom"), node("Relu", ["x"], ["y"])],
        [vi("x", [3])],
        [vi("y", None)],
        extra_opsets=[("my.custom", 1), ("my.fns", 1)],
        functions=[fn],
    )
    result, stats = apply("prune", model)
    assert result.modified
    assert op_types(model) == ["Relu"]
    # "nodes" counts the main graph and the functions: Foo plus the function's Add.
    assert stats == {"nodes": 2, "functions": 1, "opsets": 2}
    assert set(model.opset_imports) == {""}
    assert len(model.functions) == 0


def test_prune_near_miss_every_node_is_needed():
    # Relu's output is only a graph output (no node reads it): it must stay; the unused
    # graph input must stay too.
    model = build(
        [node("Relu", ["x"], ["r"]), node("Add", ["x", "w"], ["y"])],
        [vi("x", [3]), vi("unused", [3])],
        [vi("y", None), vi("r", None)],
        [const("w", np.arange(3, dtype=np.float32))],
    )
    text = snapshot(model)
    result, stats = apply("prune", model)
    assert not result.modified
    assert stats == {}
    assert snapshot(model) == text
    assert [v.name for v in model.graph.inputs] == ["x", "unused"]


def test_prune_outputs_unchanged():
    model = dead_code_model()
    stats = check_numerics("prune", model, exact=True)
    assert stats["nodes"] == 3


# --------------------------------------------------------------------------- fold


def constant_chain_model() -> ir.Model:
    """y = x + (a + b) * b, with a, b initializers and a Constant node k: y2 = x - Neg(k)."""
    return build(
        [
            node("Add", ["a", "b"], ["c"]),
            node("Mul", ["c", "b"], ["d"]),
            node("Add", ["x", "d"], ["y"]),
            node("Constant", [], ["k"], value=const("kv", np.array([1, 2, 3], np.float32))),
            node("Neg", ["k"], ["nk"]),
            node("Sub", ["x", "nk"], ["y2"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", None), vi("y2", None)],
        [const("a", np.array([1, 2, 3], np.float32)), const("b", np.array([2, 2, 2], np.float32))],
    )


def test_fold_replaces_constant_subgraphs_by_initializers():
    model = constant_chain_model()
    result, stats = apply("fold", model)
    assert result.modified
    assert op_types(model) == ["Add", "Sub"]
    assert stats == {"Add": 1, "Mul": 1, "Constant": 1, "Neg": 1}
    values = init_values(model)
    # a and b are no longer read; only the folded results remain
    assert sorted(values) == ["d", "nk"]
    np.testing.assert_array_equal(values["d"], np.array([6, 8, 10], np.float32))
    np.testing.assert_array_equal(values["nk"], np.array([-1, -2, -3], np.float32))


def test_fold_outputs_unchanged():
    check_numerics("fold", constant_chain_model())


def _transpose_weight_model(shared: bool) -> ir.Model:
    """y = x @ W^T (Transpose of a 64x32 weight, 2048 elements); optionally z = x2 @ W too."""
    nodes = [node("Transpose", ["W"], ["wt"], perm=[1, 0]), node("MatMul", ["x", "wt"], ["y"])]
    inputs, outputs = [vi("x", [2, 32])], [vi("y", None)]
    if shared:
        nodes.append(node("MatMul", ["x2", "W"], ["z"]))
        inputs.append(vi("x2", [2, 64]))
        outputs.append(vi("z", None))
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    return build(nodes, inputs, outputs, [const("W", w)])


def test_fold_transposes_a_weight_read_only_there():
    """The counterpart of the near-miss below: an unshared weight is folded (no copy kept)."""
    model = _transpose_weight_model(shared=False)
    w = init_values(model)["W"]
    result, stats = apply("fold", model)
    assert result.modified
    assert stats == {"Transpose": 1}
    assert op_types(model) == ["MatMul"]
    values = init_values(model)
    assert list(values) == ["wt"]  # W itself is gone: still one copy of the weight
    np.testing.assert_array_equal(values["wt"], w.T)


def test_fold_near_miss_shared_large_weight_is_not_duplicated():
    model = _transpose_weight_model(shared=True)
    text = snapshot(model)
    result, stats = apply("fold", model)
    assert not result.modified
    assert stats == {}
    assert op_types(model) == ["Transpose", "MatMul", "MatMul"]
    assert list(model.graph.initializers) == ["W"]
    assert snapshot(model) == text


def test_fold_near_miss_node_reading_a_graph_input():
    model = build(
        [node("Add", ["x", "b"], ["c"]), node("Relu", ["c"], ["y"])],
        [vi("x", [3])],
        [vi("y", None)],
        [const("b", np.array([2, 2, 2], np.float32))],
    )
    text = snapshot(model)
    result, stats = apply("fold", model)
    assert not result.modified and stats == {}
    assert snapshot(model) == text


def test_fold_near_miss_input_with_default_initializer_stays_an_input():
    # "a" is a graph input with an initializer: a default the caller may override.
    model = build(
        [node("Add", ["a", "b"], ["c"]), node("Add", ["x", "c"], ["y"])],
        [vi("x", [3]), vi("a", [3])],
        [vi("y", None)],
        [const("a", np.array([1, 2, 3], np.float32)), const("b", np.array([2, 2, 2], np.float32))],
    )
    result, _ = apply("fold", model)
    assert not result.modified
    assert op_types(model) == ["Add", "Add"]
    assert [v.name for v in model.graph.inputs] == ["x", "a"]


def test_fold_near_miss_random_normal():
    model = build(
        [node("RandomNormal", [], ["r"], shape=[3], seed=3.0), node("Add", ["x", "r"], ["y"])],
        [vi("x", [3])],
        [vi("y", None)],
    )
    result, stats = apply("fold", model)
    assert not result.modified and stats == {}
    assert op_types(model) == ["RandomNormal", "Add"]


def test_fold_respects_the_output_size_limit():
    model_args = (
        [node("Expand", ["one", "shape"], ["e"]), node("Add", ["x", "e"], ["y"])],
        [vi("x", [64, 64])],
        [vi("y", None)],
        [const("one", np.array([1], np.float32)), const("shape", np.array([64, 64], np.int64))],
    )
    capped = build(*model_args)
    result, _ = apply("fold", capped, PassOptions(fold_size_limit=100))
    assert not result.modified
    assert op_types(capped) == ["Expand", "Add"]
    # Near-miss in the other direction: under the default limit the same Expand folds.
    uncapped = build(*model_args)
    result, stats = apply("fold", uncapped)
    assert result.modified and stats == {"Expand": 1}


# --------------------------------------------------------------------------- noop

# name -> (nodes, initializers, stats key, op types left). x: float [2, 3] input, y: output.
NOOP_CASES = {
    "mul_by_1": ([node("Mul", ["x", "one"], ["a"]), node("Relu", ["a"], ["y"])],
                 [const("one", np.float32(1))], "mul_by_1", ["Relu"]),
    "1_mul": ([node("Mul", ["one", "x"], ["a"]), node("Relu", ["a"], ["y"])],
              [const("one", np.float32(1))], "mul_by_1", ["Relu"]),
    "add_0": ([node("Add", ["x", "zero"], ["a"]), node("Relu", ["a"], ["y"])],
              [const("zero", np.float32(0))], "add_0", ["Relu"]),
    "sub_0": ([node("Sub", ["x", "zero"], ["a"]), node("Relu", ["a"], ["y"])],
              [const("zero", np.float32(0))], "sub_0", ["Relu"]),
    "div_by_1": ([node("Div", ["x", "one"], ["a"]), node("Relu", ["a"], ["y"])],
                 [const("one", np.float32(1))], "div_by_1", ["Relu"]),
    "identity": ([node("Identity", ["x"], ["a"]), node("Relu", ["a"], ["y"])], [], "identity", ["Relu"]),
    "cast_same_type": ([node("Cast", ["x"], ["a"], to=F), node("Relu", ["a"], ["y"])],
                       [], "cast_same_type", ["Relu"]),
    "transpose_identity": ([node("Transpose", ["x"], ["a"], perm=[0, 1]), node("Relu", ["a"], ["y"])],
                           [], "transpose_identity", ["Relu"]),
    "transpose_transpose": ([node("Transpose", ["x"], ["a"], perm=[1, 0]),
                             node("Transpose", ["a"], ["b"], perm=[1, 0]), node("Relu", ["b"], ["y"])],
                            [], "transpose_transpose", ["Relu"]),
    "expand_same_shape": ([node("Expand", ["x", "s"], ["a"]), node("Relu", ["a"], ["y"])],
                          [const("s", np.array([2, 3], np.int64))], "expand_same_shape", ["Relu"]),
    "reshape_reshape": ([node("Reshape", ["x", "s1"], ["a"]), node("Reshape", ["a", "s2"], ["y"])],
                        [const("s1", np.array([3, 2], np.int64)), const("s2", np.array([6], np.int64))],
                        "reshape_reshape", ["Reshape"]),
    "unsqueeze_unsqueeze": ([node("Unsqueeze", ["x", "ax1"], ["a"]), node("Unsqueeze", ["a", "ax2"], ["y"])],
                            [const("ax1", np.array([0], np.int64)), const("ax2", np.array([3], np.int64))],
                            "unsqueeze_unsqueeze", ["Constant", "Unsqueeze"]),
}


def noop_model(case: str) -> ir.Model:
    nodes, inits, _, _ = NOOP_CASES[case]
    return build(nodes, [vi("x", [2, 3])], [vi("y", None)], inits)


@pytest.mark.parametrize("case", sorted(NOOP_CASES))
def test_noop_removes(case):
    _, _, rule, left = NOOP_CASES[case]
    model = noop_model(case)
    result, stats = apply("noop", model)
    assert result.modified
    assert stats == {rule: 1}
    assert op_types(model) == left
    assert [v.name for v in model.graph.outputs] == ["y"]


@pytest.mark.parametrize("case", sorted(NOOP_CASES))
def test_noop_outputs_bit_identical(case):
    check_numerics("noop", noop_model(case), exact=True)


def test_noop_keeps_output_name_when_removing_the_last_node():
    model = build([node("Relu", ["x"], ["r"]), node("Mul", ["r", "one"], ["y"])],
                  [vi("x", [2, 3])], [vi("y", None)], [const("one", np.float32(1))])
    stats = check_numerics("noop", model, exact=True)
    assert stats == {"mul_by_1": 1}
    assert op_types(model) == ["Relu"]
    assert [v.name for v in model.graph.outputs] == ["y"]


def test_noop_keeps_identity_from_input_to_output():
    model = build([node("Identity", ["x"], ["y"])], [vi("x", [2, 3])], [vi("y", None)])
    result, stats = apply("noop", model)
    assert not result.modified and stats == {}
    assert op_types(model) == ["Identity"]
    assert [v.name for v in model.graph.inputs] == ["x"]
    assert [v.name for v in model.graph.outputs] == ["y"]


NOOP_NEAR_MISSES = {
    "mul_by_2": ([node("Mul", ["x", "c"], ["y"])], [const("c", np.float32(2))]),
    "add_nonzero": ([node("Add", ["x", "c"], ["y"])], [const("c", np.float32(0.5))]),
    "sub_nonzero": ([node("Sub", ["x", "c"], ["y"])], [const("c", np.float32(-1))]),
    "zero_sub": ([node("Sub", ["c", "x"], ["y"])], [const("c", np.float32(0))]),
    "one_div": ([node("Div", ["c", "x"], ["y"])], [const("c", np.float32(1))]),
    # Close to the neutral element is not the neutral element: a LayerNorm epsilon must stay.
    "add_epsilon": ([node("Add", ["x", "c"], ["y"])], [const("c", np.float32(1e-12))]),
    "mul_almost_1": ([node("Mul", ["x", "c"], ["y"])], [const("c", np.float32(1.000001))]),
    "div_almost_1": ([node("Div", ["x", "c"], ["y"])], [const("c", np.float32(0.999999))]),
    "cast_other_type": ([node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), node("Cast", ["h"], ["y"], to=F)], []),
    # Multiplying by ones of a bigger shape broadcasts: the output is not the input.
    "mul_broadcasting_ones": ([node("Mul", ["x", "c"], ["y"])], [const("c", np.ones((4, 2, 3), np.float32))]),
    "transpose_not_inverse": ([node("Transpose", ["x"], ["a"], perm=[1, 0]), node("Relu", ["a"], ["y"])], []),
    "expand_bigger": ([node("Expand", ["x", "s"], ["y"])], [const("s", np.array([4, 2, 3], np.int64))]),
}


@pytest.mark.parametrize("case", sorted(NOOP_NEAR_MISSES))
def test_noop_near_miss_left_alone(case):
    nodes, inits = NOOP_NEAR_MISSES[case]
    model = build(nodes, [vi("x", [2, 3])], [vi("y", None)], inits)
    feeds = random_feeds(model)
    feeds["x"] = feeds["x"] * 1e3  # large values, where a factor 1.000001 shows ...
    feeds["x"][0, 0] = 0.0  # ... and a zero, where adding 1e-12 shows
    before = run_model(model, feeds)
    text = snapshot(model)
    result, stats = apply("noop", model)
    assert not result.modified and stats == {}
    assert snapshot(model) == text
    assert_outputs_equal(before, run_model(model, feeds), exact=True)


def test_noop_layernorm_epsilon_keeps_constant_rows_finite():
    """(x - mean) / sqrt(var + 1e-12): dropping the epsilon turns a constant row into NaN."""
    model = build(
        [
            node("ReduceMean", ["x", "axes"], ["mean"], keepdims=1),
            node("Sub", ["x", "mean"], ["d"]),
            node("Mul", ["d", "d"], ["d2"]),
            node("ReduceMean", ["d2", "axes"], ["var"], keepdims=1),
            node("Add", ["var", "eps"], ["ve"]),
            node("Sqrt", ["ve"], ["sd"]),
            node("Div", ["d", "sd"], ["y"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", None)],
        [const("axes", np.array([-1], np.int64)), const("eps", np.float32(1e-12))],
    )
    apply("noop", model)
    assert "Add" in op_types(model)
    out = run_model(model, {"x": np.array([[1, 1, 1], [1, 2, 3]], np.float32)})["y"]
    assert np.isfinite(out).all()


def test_noop_near_miss_mul_by_overridable_default():
    """``x * k`` where k is a graph input whose default (initializer) is 1 is no no-op."""
    import onnxruntime as ort

    model = build(
        [node("Mul", ["x", "k"], ["y"])],
        [vi("x", [3]), vi("k", [])],
        [vi("y", None)],
        [const("k", np.float32(1))],
    )
    result, stats = apply("noop", model)
    assert not result.modified and stats == {}
    assert op_types(model) == ["Mul"]
    assert model.graph.initializers["k"].const_value is not None  # default restored
    session = ort.InferenceSession(
        ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = np.array([1, 2, 3], np.float32)
    (y,) = session.run(None, {"x": x, "k": np.array(2, np.float32)})
    np.testing.assert_array_equal(y, 2 * x)


# --------------------------------------------------------------------------- cse


def cse_model() -> ir.Model:
    """Two identical Softmax(x, axis=1), two identical small constants c1, c2."""
    c = np.arange(3, dtype=np.float32)
    return build(
        [
            node("Softmax", ["x"], ["a"], axis=1),
            node("Softmax", ["x"], ["b"], axis=1),
            node("Add", ["a", "c1"], ["a1"]),
            node("Mul", ["b", "c2"], ["b1"]),
            node("Add", ["a1", "b1"], ["y"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", None)],
        [const("c1", c), const("c2", c.copy())],
    )


def test_cse_merges_identical_nodes_and_constants():
    model = cse_model()
    result, stats = apply("cse", model)
    assert result.modified
    assert stats == {"nodes": 1, "initializers": 1}
    assert op_types(model) == ["Softmax", "Add", "Mul", "Add"]
    assert len(model.graph.initializers) == 1
    add, mul = list(model.graph)[1:3]
    assert add.inputs[0] is mul.inputs[0]  # both read the one Softmax
    assert add.inputs[1] is mul.inputs[1]  # both read the one constant


def test_cse_outputs_unchanged():
    stats = check_numerics("cse", cse_model(), exact=True)
    assert stats == {"nodes": 1, "initializers": 1}


def test_cse_merge_of_two_graph_outputs_keeps_names_and_reports_the_change():
    model = build(
        [node("Relu", ["x"], ["a"]), node("Relu", ["x"], ["b"])],
        [vi("x", [2, 3])],
        [vi("a", None), vi("b", None)],
    )
    check_numerics("cse", model, exact=True)  # asserts modified
    assert [v.name for v in model.graph.outputs] == ["a", "b"]
    assert op_types(model).count("Relu") == 1


def test_cse_near_miss_random_uniform_not_merged():
    model = build(
        [
            node("RandomUniform", [], ["r1"], shape=[3], seed=1.0),
            node("RandomUniform", [], ["r2"], shape=[3], seed=1.0),
            node("Sub", ["r1", "r2"], ["y"]),
        ],
        [],
        [vi("y", None)],
    )
    text = snapshot(model)
    result, stats = apply("cse", model)
    assert not result.modified and stats == {}
    assert snapshot(model) == text


def test_cse_near_miss_different_attributes_not_merged():
    model = build(
        [
            node("Softmax", ["x"], ["a"], axis=0),
            node("Softmax", ["x"], ["b"], axis=1),
            node("Add", ["a", "b"], ["y"]),
        ],
        [vi("x", [3, 3])],
        [vi("y", None)],
    )
    feeds = random_feeds(model)
    before = run_model(model, feeds)
    result, stats = apply("cse", model)
    assert not result.modified and stats == {}
    assert op_types(model) == ["Softmax", "Softmax", "Add"]
    assert_outputs_equal(before, run_model(model, feeds), exact=True)


def test_cse_near_miss_constant_that_is_a_graph_input_not_merged():
    c = np.arange(3, dtype=np.float32)
    model = build(
        [node("Add", ["x", "c1"], ["a"]), node("Mul", ["a", "c2"], ["y"])],
        [vi("x", [3]), vi("c1", [3])],
        [vi("y", None)],
        [const("c1", c), const("c2", c.copy())],
    )
    result, _ = apply("cse", model)
    assert not result.modified
    assert sorted(model.graph.initializers) == ["c1", "c2"]


# --------------------------------------------------------------------------- shape


def test_shape_replaces_static_shape_and_size():
    model = build(
        [
            node("Shape", ["x"], ["s"], start=-2),
            node("Size", ["x"], ["n"]),
            node("Concat", ["neg1", "s"], ["t"], axis=0),
            node("Reshape", ["x", "t"], ["r"]),
            node("Cast", ["n"], ["nf"], to=F),
            node("Mul", ["r", "nf"], ["y"]),
        ],
        [vi("x", [2, 3, 4])],
        [vi("y", None)],
        [const("neg1", np.array([-1], np.int64))],
    )
    result, stats = apply("shape", model)
    assert result.modified
    assert stats == {"Shape": 1, "Size": 1}
    assert "Shape" not in op_types(model) and "Size" not in op_types(model)
    values = init_values(model)
    np.testing.assert_array_equal(values["s"], np.array([3, 4], np.int64))
    assert values["n"].shape == () and values["n"] == 24 and values["n"].dtype == np.int64


def dynamic_reshape_model(start: int | None = 1) -> ir.Model:
    """y = Reshape(x, Concat([-1], Shape(x)[start:])) for x: [N, 3, 4] (N symbolic)."""
    attrs = {} if start is None else {"start": start}
    return build(
        [
            node("Shape", ["x"], ["s"], **attrs),
            node("Concat", ["neg1", "s"], ["t"], axis=0),
            node("Reshape", ["x", "t"], ["r"]),
            node("Relu", ["r"], ["y"]),
        ],
        [vi("x", ["N", 3, 4])],
        [vi("y", None)],
        [const("neg1", np.array([-1], np.int64))],
    )


def test_shape_folds_static_tail_of_dynamic_tensor():
    model = dynamic_reshape_model(start=1)
    result, stats = apply("shape", model)
    assert result.modified and stats == {"Shape": 1}
    assert op_types(model) == ["Concat", "Reshape", "Relu"]
    np.testing.assert_array_equal(init_values(model)["s"], np.array([3, 4], np.int64))


def test_shape_outputs_unchanged_for_several_batch_sizes():
    model = dynamic_reshape_model(start=1)
    feeds = [random_feeds(model, seed=n, dynamic=n) for n in (1, 2, 5)]
    before = [run_model(model, f) for f in feeds]
    result, _ = apply("shape", model)
    assert result.modified
    for f, ref in zip(feeds, before, strict=True):
        assert_outputs_equal(ref, run_model(model, f), exact=True)


def test_shape_near_miss_dynamic_dim_not_baked_in():
    model = dynamic_reshape_model(start=None)  # Shape(x) includes the symbolic N
    result, stats = apply("shape", model)
    assert not result.modified and stats == {}
    assert op_types(model)[0] == "Shape"


@pytest.mark.parametrize("attrs", [{"start": 0, "end": 2}, {"end": -1}, {"start": -3}])
def test_shape_near_miss_slices_that_include_the_dynamic_dim(attrs):
    model = build(
        [node("Shape", ["x"], ["s"], **attrs), node("ReduceSum", ["s"], ["y"], keepdims=0)],
        [vi("x", ["N", 3, 4])],
        [vi("y", None, I64)],
    )
    result, _ = apply("shape", model)
    assert not result.modified
    assert op_types(model) == ["Shape", "ReduceSum"]


def test_shape_near_miss_size_of_dynamic_tensor_and_shape_graph_output():
    model = build(
        [node("Size", ["x"], ["n"]), node("Shape", ["w"], ["ws"]), node("Neg", ["n"], ["y"])],
        [vi("x", ["N", 3]), vi("w", [2, 3])],
        [vi("y", None, I64), vi("ws", None, I64)],
    )
    result, stats = apply("shape", model)
    assert not result.modified and stats == {}
    assert op_types(model) == ["Size", "Shape", "Neg"]
    assert [v.name for v in model.graph.outputs] == ["y", "ws"]


# --------------------------------------------------------------------------- opaque custom ops


def custom_op_model() -> ir.Model:
    """Foo (domain my.custom) on a graph input and on a constant; both outputs are used."""
    return build(
        [
            node("Foo", ["x"], ["f"], domain="my.custom", alpha=2.0),
            node("Foo", ["w"], ["g"], domain="my.custom", alpha=3.0),
            node("Add", ["f", "g"], ["s"]),
            node("Relu", ["s"], ["y"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", None)],
        [const("w", np.ones((2, 3), np.float32))],
        extra_opsets=[("my.custom", 1)],
    )


@pytest.mark.parametrize("name", PASSES)
def test_custom_domain_node_is_opaque(name):
    model = custom_op_model()
    text = snapshot(model)
    result, stats = apply(name, model)
    assert not result.modified and stats == {}
    assert snapshot(model) == text
    foo = [n for n in model.graph if n.op_type == "Foo"]
    assert [(n.domain, n.attributes["alpha"].as_float()) for n in foo] == [("my.custom", 2.0), ("my.custom", 3.0)]


def test_custom_domain_node_survives_the_default_pipeline():
    model = custom_op_model()
    PassManager(default_pipeline("ort")).run(model)
    assert op_types(model) == ["Foo", "Foo", "Add", "Relu"]
    assert "my.custom" in model.opset_imports
    assert "w" in model.graph.initializers


# --------------------------------------------------------------------------- dropout, custom CSE


def dropout_model(training: bool | None, mask_used: bool = False) -> ir.Model:
    inputs = ["x", "ratio"] + (["training"] if training is not None else [])
    inits = [const("ratio", np.float32(0.5))]
    if training is not None:
        inits.append(const("training", np.bool_(training)))
    outputs = [vi("y", [2, 3])] + ([vi("mask", [2, 3], TensorProto.BOOL)] if mask_used else [])
    nodes = [node("Dropout", inputs, ["d", "mask"] if mask_used else ["d"]), node("Relu", ["d"], ["y"])]
    return build(nodes, [vi("x", [2, 3])], outputs, inits, opset=13)


@pytest.mark.parametrize("training", [None, False])
def test_noop_removes_inference_dropout_opset13(training):
    model = dropout_model(training)
    before = run_model(model, random_feeds(model))
    result, stats = apply("noop", model)
    assert result.modified and stats["dropout"] == 1
    assert op_types(model) == ["Relu"]
    assert_outputs_equal(before, run_model(model, random_feeds(model)), exact=True)


def test_noop_near_miss_training_dropout_and_used_mask():
    for model in (dropout_model(True), dropout_model(None, mask_used=True)):
        result, stats = apply("noop", model)
        assert not result.modified and "Dropout" in op_types(model), stats


def test_cse_never_merges_custom_domain_nodes():
    nodes = [
        node("Foo", ["x"], ["a"], domain="my.custom"),
        node("Foo", ["x"], ["b"], domain="my.custom"),
        node("Add", ["a", "b"], ["y"]),
    ]
    model = build(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], extra_opsets=[("my.custom", 1)])
    result, _ = apply("cse", model)
    assert not result.modified
    assert op_types(model).count("Foo") == 2
    assert all("_llmc_cse_guard" not in n.attributes for n in model.graph)
    # Identical ONNX-domain nodes in the same position are merged (the guard is selective).
    nodes[0:2] = [node("Relu", ["x"], ["a"]), node("Relu", ["x"], ["b"])]
    model = build(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])])
    result, _ = apply("cse", model)
    assert result.modified and op_types(model).count("Relu") == 1
