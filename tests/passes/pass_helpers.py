"""Builders and checks shared by the tests of the built-in passes: small hand-built models,
one pass at a time, ONNX Runtime outputs before and after."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
from onnx import TensorProto, numpy_helper

from llmc.passes.registry import PassOptions, get_pass
from llmc.runtime.ort import run_model

F = TensorProto.FLOAT
I64 = TensorProto.INT64
PASSES = ("prune", "fold", "noop", "cse", "shape")


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
