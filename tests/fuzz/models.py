"""The fuzzers' tiny valid base models (``BASE_MODELS``) and the layout constants of a case."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx.helper as oh
from onnx import TensorProto, numpy_helper

from tests.helpers import make_model

F = TensorProto.FLOAT
ROOT_TOKEN = "@ROOT@"  # replaced by the workspace's absolute path when a Case is written
MODEL_DIR = "model"
MODEL_NAME = "m.onnx"


def value_info(name: str, shape, dtype: int = F) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, dtype, shape)


def _w(name: str, shape, seed: int = 0) -> TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _named(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    for i, node in enumerate(nodes):
        node.name = node.name or f"n{i}_{node.op_type}"
    return nodes


def relu_add() -> onnx.ModelProto:
    nodes = [oh.make_node("Add", ["x", "w"], ["s"]), oh.make_node("Relu", ["s"], ["y"])]
    return make_model(_named(nodes), [value_info("x", ["batch", 3])], [value_info("y", ["batch", 3])], [_w("w", [3])])


def matmul_chain() -> onnx.ModelProto:
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h"]),
        oh.make_node("Add", ["h", "b1"], ["hb"]),
        oh.make_node("Relu", ["hb"], ["r"]),
        oh.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    inits = [_w("w1", [4, 4], 1), _w("b1", [4], 2), _w("w2", [4, 2], 3)]
    return make_model(_named(nodes), [value_info("x", [2, 4])], [value_info("y", [2, 2])], inits)


def gemm() -> onnx.ModelProto:
    nodes = [
        oh.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1, alpha=1.0, beta=1.0),
        oh.make_node("Sigmoid", ["g"], ["y"]),
    ]
    return make_model(_named(nodes), [value_info("x", [2, 4])], [value_info("y", [2, 3])], [_w("w", [3, 4]), _w("b", [3])])


def layer_norm() -> onnx.ModelProto:
    """ReduceMean/Sub/Pow/Sqrt/Div: the chain the layer_norm fusion rewrites."""
    nodes = [
        oh.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=1),
        oh.make_node("Sub", ["x", "mean"], ["d"]),
        oh.make_node("Pow", ["d", "two"], ["sq"]),
        oh.make_node("ReduceMean", ["sq", "axes"], ["var"], keepdims=1),
        oh.make_node("Add", ["var", "eps"], ["ve"]),
        oh.make_node("Sqrt", ["ve"], ["sd"]),
        oh.make_node("Div", ["d", "sd"], ["n"]),
        oh.make_node("Mul", ["n", "gamma"], ["m"]),
        oh.make_node("Add", ["m", "beta"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1], np.int64), "axes"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        _w("gamma", [8], 4), _w("beta", [8], 5),
    ]
    return make_model(_named(nodes), [value_info("x", ["batch", 8])], [value_info("y", ["batch", 8])], inits)


def layer_norm_op() -> onnx.ModelProto:
    nodes = [oh.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)]
    inits = [_w("gamma", [8], 6), _w("beta", [8], 7)]
    return make_model(_named(nodes), [value_info("x", [2, 8])], [value_info("y", [2, 8])], inits)


def attention() -> onnx.ModelProto:
    """A one-head attention block with a residual: q k^T / sqrt(d), Softmax, times v."""
    nodes = [
        oh.make_node("MatMul", ["x", "wq"], ["q"]),
        oh.make_node("MatMul", ["x", "wk"], ["k"]),
        oh.make_node("MatMul", ["x", "wv"], ["v"]),
        oh.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        oh.make_node("MatMul", ["q", "kt"], ["s"]),
        oh.make_node("Mul", ["s", "scale"], ["sc"]),
        oh.make_node("Softmax", ["sc"], ["p"], axis=-1),
        oh.make_node("MatMul", ["p", "v"], ["o"]),
        oh.make_node("Add", ["o", "x"], ["y"]),
    ]
    inits = [_w("wq", [8, 8], 8), _w("wk", [8, 8], 9), _w("wv", [8, 8], 10),
             numpy_helper.from_array(np.array(8**-0.5, np.float32), "scale")]
    return make_model(_named(nodes), [value_info("x", [1, "seq", 8])], [value_info("y", [1, "seq", 8])], inits)


def reshape_softmax() -> onnx.ModelProto:
    nodes = [
        oh.make_node("Reshape", ["x", "shape"], ["r"]),
        oh.make_node("Softmax", ["r"], ["sm"], axis=1),
        oh.make_node("Cast", ["sm"], ["c"], to=TensorProto.DOUBLE),
        oh.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT),
    ]
    inits = [numpy_helper.from_array(np.array([3, 4], np.int64), "shape")]
    return make_model(_named(nodes), [value_info("x", [2, 6])], [value_info("y", [3, 4])], inits)


def two_inputs() -> onnx.ModelProto:
    nodes = [
        oh.make_node("Mul", ["a", "b"], ["m"]),
        oh.make_node("Tanh", ["m"], ["t"]),
        oh.make_node("Concat", ["t", "a"], ["y"], axis=1),
    ]
    return make_model(_named(nodes), [value_info("a", [2, 3]), value_info("b", [2, 3])], [value_info("y", [2, 6])])


BASE_MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    f.__name__: f
    for f in (relu_add, matmul_chain, gemm, layer_norm, layer_norm_op, attention, reshape_softmax, two_inputs)
}

