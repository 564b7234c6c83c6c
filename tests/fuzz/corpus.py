"""A named corpus of malformed (and a few odd but valid) models, generated in code.

In the spirit of onnx's checker tests and Polygraphy's: no graph, an undefined input, a wrong
attribute type, a type mismatch, an unknown op or domain, a bad opset import, an empty graph,
outputs nothing produces, two producers of one value, initializers whose bytes do not match
their dims, external data out of the model's directory, subgraphs reading undefined values,
sparse initializer garbage, value_info contradicting an initializer, string tensors, zero-sized
inputs... ``CORPUS[name]()`` returns a :class:`~tests.fuzz.strategies.Case` or raw bytes;
``write_entry(name, root)`` writes it as ``root/model/m.onnx`` and returns the path.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from onnx import TensorProto, numpy_helper

from tests.fuzz.corpus_base import CORPUS, F, W, X, Y, _one, entry, write_entry
from tests.fuzz.strategies import relu_add
from tests.helpers import make_model

__all__ = ["CORPUS", "write_entry"]


# -- the file itself -----------------------------------------------------------------------------


@entry
def empty_file():
    return b""


@entry
def not_protobuf():
    return b"this is not an onnx model\n" * 8


@entry
def truncated_proto():
    raw = relu_add().SerializeToString()
    return raw[: len(raw) // 2]


@entry
def flipped_tag_byte():
    raw = bytearray(relu_add().SerializeToString())
    raw[0] ^= 0xFF
    return bytes(raw)


@entry
def missing_graph():
    return onnx.ModelProto(ir_version=10, opset_import=[oh.make_opsetid("", 18)])


@entry
def no_ir_version():
    model = relu_add()
    model.ClearField("ir_version")
    return model


@entry
def ir_version_from_the_future():
    model = relu_add()
    model.ir_version = 99
    return model


# -- graph structure --------------------------------------------------------------------------------


@entry
def empty_graph():
    return make_model([], [], [])


@entry
def graph_outputs_not_produced():
    return make_model([oh.make_node("Relu", ["x"], ["r"])], [X], [Y])


@entry
def node_reads_undefined_value():
    return _one(oh.make_node("Add", ["x", "undefined"], ["y"], name="add"))


@entry
def names_with_newlines():
    return _one(oh.make_node("Add", ["x", "un\ndefined"], ["y"], name="add\nnode"))


@entry
def two_producers_of_one_value():
    nodes = [oh.make_node("Relu", ["x"], ["y"], name="a"), oh.make_node("Neg", ["x"], ["y"], name="b")]
    return make_model(nodes, [X], [Y])


@entry
def node_writes_a_graph_input():
    nodes = [oh.make_node("Relu", ["x"], ["x"], name="r"), oh.make_node("Neg", ["x"], ["y"], name="n")]
    return make_model(nodes, [X], [Y])


@entry
def node_writes_an_initializer():
    nodes = [oh.make_node("Relu", ["x"], ["w"], name="r"), oh.make_node("Add", ["x", "w"], ["y"], name="a")]
    return make_model(nodes, [X], [Y], [W])


@entry
def cycle_of_two_nodes():
    nodes = [oh.make_node("Add", ["x", "b"], ["a"], name="first"), oh.make_node("Relu", ["a"], ["b"], name="second"),
             oh.make_node("Neg", ["a"], ["y"], name="out")]
    return make_model(nodes, [X], [Y])


@entry
def node_reads_its_own_output():
    return _one(oh.make_node("Add", ["x", "y"], ["y"], name="self"))


@entry
def nodes_out_of_order():
    nodes = [oh.make_node("Neg", ["r"], ["y"], name="second"), oh.make_node("Relu", ["x"], ["r"], name="first")]
    return make_model(nodes, [X], [Y])


@entry
def node_without_outputs():
    nodes = [oh.make_node("Relu", ["x"], [], name="void"), oh.make_node("Neg", ["x"], ["y"], name="n")]
    return make_model(nodes, [X], [Y])


@entry
def node_with_empty_output_name():
    nodes = [oh.make_node("Relu", ["x"], [""], name="r"), oh.make_node("Neg", ["x"], ["y"], name="n")]
    return make_model(nodes, [X], [Y])


@entry
def duplicate_graph_inputs():
    return _one(oh.make_node("Relu", ["x"], ["y"]), inputs=(X, X))


@entry
def duplicate_graph_outputs():
    return _one(oh.make_node("Relu", ["x"], ["y"]), outputs=(Y, Y))


@entry
def output_is_the_input():
    return make_model([], [X], [oh.make_tensor_value_info("x", F, [2, 3])])


@entry
def output_is_an_initializer():
    return make_model([], [], [oh.make_tensor_value_info("w", F, [2, 3])], [W])


@entry
def constant_only():
    return make_model([oh.make_node("Constant", [], ["y"], value=W)], [], [Y])


@entry
def untyped_graph_input():
    return _one(oh.make_node("Relu", ["x"], ["y"]), inputs=(onnx.ValueInfoProto(name="x"),))


@entry
def sequence_typed_input():
    seq = oh.make_tensor_sequence_value_info("x", F, [2, 3])
    length = oh.make_tensor_value_info("y", TensorProto.INT64, [])
    return _one(oh.make_node("SequenceLength", ["x"], ["y"]), inputs=(seq,), outputs=(length,))


# -- ops, attributes, types ----------------------------------------------------------------------


@entry
def unknown_op():
    return _one(oh.make_node("FooBar", ["x"], ["y"], name="foo"))


@entry
def unknown_domain():
    return _one(oh.make_node("Foo", ["x"], ["y"], domain="my.custom", name="foo"), extra_opsets=[("my.custom", 1)])


@entry
def domain_without_opset_import():
    return _one(oh.make_node("Relu", ["x"], ["y"], domain="my.custom", name="r"))


@entry
def ms_domain_op_with_wrong_arity():
    node = oh.make_node("FusedMatMul", ["x"], ["y"], domain="com.microsoft", name="fmm")
    return _one(node, extra_opsets=[("com.microsoft", 1)])


@entry
def opset_99():
    return _one(oh.make_node("Relu", ["x"], ["y"]), opset=99)


@entry
def opset_0():
    return _one(oh.make_node("Relu", ["x"], ["y"]), opset=0)


@entry
def no_opset_import():
    model = _one(oh.make_node("Relu", ["x"], ["y"]))
    model.ClearField("opset_import")
    return model


@entry
def two_default_opset_imports():
    model = _one(oh.make_node("Relu", ["x"], ["y"]))
    model.opset_import.append(oh.make_opsetid("", 11))
    return model


@entry
def op_newer_than_opset():
    return _one(oh.make_node("Gelu", ["x"], ["y"], name="gelu"), opset=13)


@entry
def wrong_attribute_type():
    return _one(oh.make_node("Softmax", ["x"], ["y"], axis="last", name="sm"))


@entry
def attribute_type_field_mismatch():
    model = _one(oh.make_node("Transpose", ["x"], ["y"], perm=[1, 0], name="t"),
                 outputs=(oh.make_tensor_value_info("y", F, [3, 2]),))
    model.graph.node[0].attribute[0].type = onnx.AttributeProto.FLOAT
    return model


@entry
def missing_required_attribute():
    return _one(oh.make_node("Cast", ["x"], ["y"], name="cast"))


@entry
def out_of_range_axis():
    return _one(oh.make_node("Softmax", ["x"], ["y"], axis=7, name="sm"))


@entry
def graph_attribute_on_a_plain_op():
    body = oh.make_graph([], "body", [], [])
    return _one(oh.make_node("Relu", ["x"], ["y"], name="r", body=body))


@entry
def ref_attr_outside_a_function():
    node = oh.make_node("Softmax", ["x"], ["y"], name="sm")
    attr = onnx.AttributeProto(name="axis", ref_attr_name="axis", type=onnx.AttributeProto.INT)
    node.attribute.append(attr)
    return _one(node)


@entry
def type_mismatch():
    ints = numpy_helper.from_array(np.ones((2, 3), np.int64), "w")
    return _one(oh.make_node("Add", ["x", "w"], ["y"], name="add"), inits=(ints,))


@entry
def declared_output_type_wrong():
    return _one(oh.make_node("Relu", ["x"], ["y"]), outputs=(oh.make_tensor_value_info("y", TensorProto.INT64, [2, 3]),))


@entry
def undefined_elem_type():
    return _one(oh.make_node("Relu", ["x"], ["y"]), inputs=(oh.make_tensor_value_info("x", 0, [2, 3]),))


@entry
def elem_type_out_of_range():
    return _one(oh.make_node("Relu", ["x"], ["y"]), inputs=(oh.make_tensor_value_info("x", 99, [2, 3]),))


@entry
def string_tensors():
    s = oh.make_tensor_value_info("x", TensorProto.STRING, [2])
    t = oh.make_tensor_value_info("y", TensorProto.STRING, [2])
    return _one(oh.make_node("Identity", ["x"], ["y"]), inputs=(s,), outputs=(t,))


@entry
def string_initializer():
    words = numpy_helper.from_array(np.array(["a", "b"], dtype=object), "w")
    out = oh.make_tensor_value_info("y", TensorProto.STRING, [2])
    return make_model([oh.make_node("Identity", ["w"], ["y"])], [], [out], [words])


@entry
def bool_and_float16_inputs():
    b = oh.make_tensor_value_info("b", TensorProto.BOOL, [2, 3])
    h = oh.make_tensor_value_info("h", TensorProto.FLOAT16, [2, 3])
    nb = oh.make_tensor_value_info("nb", TensorProto.BOOL, [2, 3])
    rh = oh.make_tensor_value_info("rh", TensorProto.FLOAT16, [2, 3])
    nodes = [oh.make_node("Not", ["b"], ["nb"]), oh.make_node("Relu", ["h"], ["rh"])]
    return make_model(nodes, [b, h], [nb, rh])


# -- dims ------------------------------------------------------------------------------------------


def _relu_with_dims(dims) -> onnx.ModelProto:
    x = oh.make_tensor_value_info("x", F, dims)
    y = oh.make_tensor_value_info("y", F, dims)
    return _one(oh.make_node("Relu", ["x"], ["y"]), inputs=(x,), outputs=(y,))


@entry
def zero_sized_input():
    return _relu_with_dims([0, 3])


@entry
def zero_and_symbolic_dims():
    return _relu_with_dims(["batch", 0])


@entry
def scalar_input():
    return _relu_with_dims([])


@entry
def negative_dim():
    return _relu_with_dims([-1, 3])


@entry
def huge_dim():
    return _relu_with_dims([2**40, 3])


@entry
def int64_max_dims():
    return _relu_with_dims([2**63 - 1, 2**63 - 1])


@entry
def empty_symbolic_dim():
    return _relu_with_dims(["", 3])


@entry
def reshape_to_a_huge_shape():
    shape = numpy_helper.from_array(np.array([2**40, -1], np.int64), "shape")
    out = oh.make_tensor_value_info("y", F, None)
    return _one(oh.make_node("Reshape", ["x", "shape"], ["y"], name="reshape"), outputs=(out,), inits=(shape,))


@entry
def value_info_contradicts_initializer():
    model = _one(oh.make_node("Add", ["x", "w"], ["y"], name="add"), inits=(W,))
    model.graph.value_info.append(oh.make_tensor_value_info("w", F, [5]))
    return model


@entry
def initializer_also_a_graph_input_with_other_shape():
    w_in = oh.make_tensor_value_info("w", F, [7, 7])
    return _one(oh.make_node("Add", ["x", "w"], ["y"], name="add"), inputs=(X, w_in), inits=(W,))


@entry
def value_info_contradicts_producer():
    model = _one(oh.make_node("Relu", ["x"], ["r"]))
    model.graph.node.append(oh.make_node("Neg", ["r"], ["y"]))
    model.graph.node[0].output[0] = "r"
    model.graph.value_info.append(oh.make_tensor_value_info("r", TensorProto.INT32, [9, 9, 9]))
    return model



# The initializer, external-data and subgraph entries register themselves on import.
from tests.fuzz import corpus_data  # noqa: E402, F401
