"""Corpus entries: initializers, external data, subgraphs and functions (see ``corpus``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from onnx import TensorProto, numpy_helper

from tests.fuzz.corpus_base import F, X, Y, _one, entry
from tests.fuzz.strategies import MODEL_NAME, ROOT_TOKEN
from tests.helpers import make_model

# -- initializers -------------------------------------------------------------------------------------


def _add_w(w: TensorProto) -> onnx.ModelProto:
    return _one(oh.make_node("Add", ["x", "w"], ["y"], name="add"), inits=(w,))


@entry
def initializer_raw_data_too_short():
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    w.raw_data = w.raw_data[:7]
    return _add_w(w)


@entry
def initializer_raw_data_too_long():
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    w.raw_data = w.raw_data + b"\0" * 16
    return _add_w(w)


@entry
def initializer_without_data():
    return _add_w(TensorProto(name="w", data_type=F, dims=[2, 3]))


@entry
def initializer_huge_dims_no_data():
    return _add_w(TensorProto(name="w", data_type=F, dims=[2**40]))


@entry
def initializer_negative_dims():
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    w.dims[0] = -2
    return _add_w(w)


@entry
def initializer_undefined_dtype():
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    w.data_type = 0
    return _add_w(w)


@entry
def initializer_without_name():
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "")
    return make_model([oh.make_node("Relu", ["x"], ["y"])], [X], [Y], [w])


@entry
def initializer_int4_odd_size():
    w = oh.make_tensor("w4", TensorProto.INT4, [3], [1, 2, 3])
    return make_model([oh.make_node("Relu", ["x"], ["y"])], [X], [Y], [w], opset=21)


@entry
def sparse_initializer_out_of_range():
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w")
    indices = numpy_helper.from_array(np.array([5, 99], np.int64), "")
    model = _one(oh.make_node("Add", ["x", "w"], ["y"], name="add"))
    model.graph.sparse_initializer.append(oh.make_sparse_tensor(values, indices, [2, 3]))
    return model


@entry
def sparse_initializer_without_values():
    sparse = onnx.SparseTensorProto(dims=[2, 3])
    model = _one(oh.make_node("Add", ["x", "w"], ["y"], name="add"))
    model.graph.sparse_initializer.append(sparse)
    return model


@entry
def constant_with_sparse_garbage():
    values = numpy_helper.from_array(np.array([1.0], np.float32), "")
    indices = numpy_helper.from_array(np.array([-3], np.int64), "")
    node = oh.make_node("Constant", [], ["c"], name="const", sparse_value=oh.make_sparse_tensor(values, indices, [2, 3]))
    return make_model([node, oh.make_node("Add", ["x", "c"], ["y"], name="add")], [X], [Y])


@entry
def constant_without_value():
    return make_model([oh.make_node("Constant", [], ["c"], name="const"), oh.make_node("Add", ["x", "c"], ["y"])], [X], [Y])


def _external(location: str, offset: int = 0, length: int | None = None):
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    data = w.raw_data
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    w.external_data.add(key="offset", value=str(offset))
    w.external_data.add(key="length", value=str(len(data) if length is None else length))
    return _add_w(w), data


@entry
def external_data_parent_escape():
    return _external("../outside.bin")


@entry
def external_data_absolute_path_outside():
    return _external(f"{ROOT_TOKEN}/outside.bin")


@entry
def external_data_etc_passwd():
    return _external("/etc/passwd")


@entry
def external_data_dev_zero():
    return _external("/dev/zero")


@entry
def external_data_missing_file():
    return _external("missing.bin")


@entry
def external_data_offset_beyond_file():
    return _external("w.bin", offset=2**40)


@entry
def external_data_length_wrong():
    return _external("w.bin", length=5)


@entry
def external_data_is_a_directory():
    return _external("sub")


@entry
def external_data_is_the_model():
    return _external(MODEL_NAME)


@entry
def external_data_location_with_nul():
    return _external("w.bin\0x")


@entry
def external_data_length_not_a_number():
    model, data = _external("w.bin")
    model.graph.initializer[0].external_data[2].value = "ten"
    return model, data


@entry
def external_data_inside_dir_is_fine():
    return _external("w.bin")


# -- subgraphs and functions ------------------------------------------------------------------------


def _if(then_nodes, then_out: str) -> onnx.ModelProto:
    cond = oh.make_tensor_value_info("cond", TensorProto.BOOL, [])
    out = oh.make_tensor_value_info(then_out, F, [2, 3])
    then = oh.make_graph(then_nodes, "then", [], [out])
    other = oh.make_graph([oh.make_node("Neg", ["x"], ["e"])], "else", [], [oh.make_tensor_value_info("e", F, [2, 3])])
    node = oh.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other)
    return make_model([node], [cond, X], [Y])


@entry
def if_valid_outer_scope():
    return _if([oh.make_node("Relu", ["x"], ["t"])], "t")


@entry
def if_branch_reads_undefined():
    return _if([oh.make_node("Relu", ["undefined_in_branch"], ["t"], name="inner")], "t")


@entry
def if_branch_output_not_produced():
    return _if([oh.make_node("Relu", ["x"], ["t"])], "nothing")


@entry
def if_without_branches():
    cond = oh.make_tensor_value_info("cond", TensorProto.BOOL, [])
    return make_model([oh.make_node("If", ["cond"], ["y"], name="if")], [cond, X], [Y])


@entry
def loop_body_reads_undefined():
    i = oh.make_tensor_value_info("i", TensorProto.INT64, [])
    c = oh.make_tensor_value_info("c", TensorProto.BOOL, [])
    acc = oh.make_tensor_value_info("acc", F, [2, 3])
    body = oh.make_graph(
        [oh.make_node("Identity", ["c"], ["c_out"]), oh.make_node("Add", ["acc", "ghost"], ["acc_out"], name="inner")],
        "body", [i, c, acc],
        [oh.make_tensor_value_info("c_out", TensorProto.BOOL, []), oh.make_tensor_value_info("acc_out", F, [2, 3])],
    )
    trip = numpy_helper.from_array(np.array(2, np.int64), "trip")
    keep = numpy_helper.from_array(np.array(True), "keep")
    node = oh.make_node("Loop", ["trip", "keep", "x"], ["y"], name="loop", body=body)
    return make_model([node], [X], [Y], [trip, keep])


@entry
def local_function_reads_undefined():
    fn = oh.make_function("local", "F", ["a"], ["b"], [oh.make_node("Add", ["a", "ghost"], ["b"])],
                          [oh.make_opsetid("", 18)])
    model = make_model([oh.make_node("F", ["x"], ["y"], domain="local", name="call")], [X], [Y],
                       extra_opsets=[("local", 1)])
    model.functions.append(fn)
    return model


@entry
def recursive_local_function():
    fn = oh.make_function("local", "F", ["a"], ["b"], [oh.make_node("F", ["a"], ["b"], domain="local")],
                          [oh.make_opsetid("", 18), oh.make_opsetid("local", 1)])
    model = make_model([oh.make_node("F", ["x"], ["y"], domain="local", name="call")], [X], [Y],
                       extra_opsets=[("local", 1)])
    model.functions.append(fn)
    return model
