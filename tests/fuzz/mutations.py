"""Structural mutations of a model (``MUTATIONS``), each drawn by hypothesis; see ``strategies``."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from hypothesis import strategies as st
from onnx import TensorProto, numpy_helper

from tests.fuzz.models import ROOT_TOKEN, value_info

# -- mutations -------------------------------------------------------------------------------------

# Tiny, zero, negative or far beyond memory: never a size that allocates gigabytes.
DIM_VALUES = [0, 1, 2, 3, -1, -7, 2**40, 2**62, 2**63 - 1, -(2**63)]
SYMBOLS = ["batch", "seq", "N", "", "2", "x y", "ü"]
DTYPES = [0, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT64,
          TensorProto.INT32, TensorProto.INT8, TensorProto.UINT8, TensorProto.BOOL, TensorProto.STRING,
          TensorProto.COMPLEX64, TensorProto.FLOAT8E4M3FN, TensorProto.INT4, 99, -3]
INTS = [-(2**63), -(2**40), -2, -1, 0, 1, 2, 3, 7, 2**40, 2**63 - 1]
NAMES = ["", "nowhere", "x", "y", "w", "s", " x", "x\ny", "ü"]
OP_TYPES = ["FooBar", "Identity", "Relu", "Softmax", "Cast", "If", "Loop", "Constant", "", "relu",
            "LayerNormalization", "Attention", "Gelu", "MatMul", "Split", "Size"]
DOMAINS = ["com.microsoft", "my.custom", "ai.onnx.ml", "ai.onnx.preview.training", "ai.onnx", "com.foo"]
OPSETS = [0, 1, 5, 7, 12, 16, 21, 23, 24, 99, 2**31 - 1, -1]
IR_VERSIONS = [0, 1, 3, 7, 11, 12, 99, -1]
ATTR_NAMES = ["axis", "perm", "transB", "to", "epsilon", "keepdims", "alpha", "bogus", ""]


class Inapplicable(Exception):
    """A mutation has nothing to act on (an earlier one removed it): the next one is drawn."""


def _pick(draw, items) -> int:
    """An index into ``items`` (shrinks towards the first)."""
    if not len(items):
        raise Inapplicable
    return draw(st.integers(0, len(items) - 1))


def _node(draw, model: onnx.ModelProto, need=lambda n: True) -> onnx.NodeProto:
    nodes = [n for n in model.graph.node if need(n) and n.output]
    return nodes[_pick(draw, nodes)]


def _value_names(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    names = [v.name for v in g.input] + [t.name for t in g.initializer]
    return names + [o for n in g.node for o in n.output] + [v.name for v in g.output]


def drop_input(draw, model):
    node = _node(draw, model, lambda n: len(n.input) > 0)
    i = _pick(draw, node.input)
    del node.input[i]
    return f"drop input {i} of {node.name}"


def rename_input(draw, model):
    node = _node(draw, model, lambda n: len(n.input) > 0)
    i = _pick(draw, node.input)
    new = draw(st.sampled_from(NAMES + _value_names(model)))
    node.input[i] = new
    return f"input {i} of {node.name} := {new!r}"


def rename_output(draw, model):
    node = _node(draw, model)
    new = draw(st.sampled_from(NAMES + _value_names(model)))
    node.output[0] = new
    return f"output 0 of {node.name} := {new!r}"


def _attribute_value(draw, name: str) -> onnx.AttributeProto:
    kind = draw(st.sampled_from(["int", "float", "string", "ints", "floats", "tensor", "graph"]))
    if kind == "int":
        return oh.make_attribute(name, draw(st.sampled_from(INTS)))
    if kind == "float":
        return oh.make_attribute(name, draw(st.sampled_from([0.0, -1.0, 1e-5, float("nan"), float("inf"), 1e300])))
    if kind == "string":
        return oh.make_attribute(name, draw(st.sampled_from(["", "abc", "NOTSET", "ü"])))
    if kind == "ints":
        return oh.make_attribute(name, draw(st.lists(st.sampled_from(INTS), max_size=4)), attr_type=onnx.AttributeProto.INTS)
    if kind == "floats":
        return oh.make_attribute(name, [1.0, float("nan")])
    if kind == "tensor":
        return oh.make_attribute(name, numpy_helper.from_array(np.array([1.0, 2.0], np.float32)))
    empty = oh.make_graph([], "empty", [], [])
    return oh.make_attribute(name, empty)


def change_attribute(draw, model):
    node = _node(draw, model)
    how = draw(st.sampled_from(["replace", "retype", "remove", "add"]))
    if how != "add" and not node.attribute:
        how = "add"
    if how == "add":
        attr = _attribute_value(draw, draw(st.sampled_from(ATTR_NAMES)))
        node.attribute.append(attr)
        return f"{node.name}: add attribute {attr.name!r} ({onnx.AttributeProto.AttributeType.Name(attr.type)})"
    i = _pick(draw, node.attribute)
    name = node.attribute[i].name
    if how == "remove":
        del node.attribute[i]
        return f"{node.name}: remove attribute {name!r}"
    if how == "retype":  # the declared type no longer matches the field that holds the value
        node.attribute[i].type = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 0, 99]))
        return f"{node.name}: attribute {name!r} type := {node.attribute[i].type}"
    node.attribute[i].CopyFrom(_attribute_value(draw, name))
    return f"{node.name}: attribute {name!r} := {onnx.AttributeProto.AttributeType.Name(node.attribute[i].type)}"


def _typed_values(model):
    g = model.graph
    return [*g.input, *g.output, *g.value_info]


def change_dtype(draw, model):
    dtype = draw(st.sampled_from(DTYPES))
    if model.graph.initializer and draw(st.booleans()):
        init = model.graph.initializer[_pick(draw, model.graph.initializer)]
        init.data_type = dtype
        return f"initializer {init.name} dtype := {dtype}"
    values = _typed_values(model)
    value = values[_pick(draw, values)]
    value.type.tensor_type.elem_type = dtype
    return f"{value.name} dtype := {dtype}"


def change_dim(draw, model):
    if model.graph.initializer and draw(st.integers(0, 3)) == 0:
        init = model.graph.initializer[_pick(draw, model.graph.initializer)]
        dims = list(init.dims) or [1]
        dims[_pick(draw, dims)] = draw(st.sampled_from(DIM_VALUES))
        init.ClearField("dims")
        init.dims.extend(dims)
        return f"initializer {init.name} dims := {dims}"
    values = _typed_values(model)
    value = values[_pick(draw, values)]
    shape = value.type.tensor_type.shape
    how = draw(st.sampled_from(["value", "symbol", "clear", "add", "remove", "unknown-rank"]))
    if how == "unknown-rank":
        value.type.tensor_type.ClearField("shape")
        return f"{value.name}: no shape"
    if how == "add" or not shape.dim:
        shape.dim.add().dim_value = draw(st.sampled_from([1, 2, 2**40]))
        return f"{value.name}: one more dim"
    i = _pick(draw, shape.dim)
    if how == "remove":
        del shape.dim[i]
        return f"{value.name}: dim {i} removed"
    if how == "clear":
        shape.dim[i].Clear()
        return f"{value.name}: dim {i} unset"
    if how == "symbol":
        shape.dim[i].dim_param = draw(st.sampled_from(SYMBOLS))
        return f"{value.name}: dim {i} := {shape.dim[i].dim_param!r}"
    shape.dim[i].dim_value = draw(st.sampled_from(DIM_VALUES))
    return f"{value.name}: dim {i} := {shape.dim[i].dim_value}"


def duplicate_output(draw, model):
    nodes = [n for n in model.graph.node if n.output]
    src, dst = nodes[_pick(draw, nodes)], nodes[_pick(draw, nodes)]
    inputs = [v.name for v in model.graph.input] + [t.name for t in model.graph.initializer]
    name = draw(st.sampled_from([src.output[0], *inputs]))
    if draw(st.booleans()):
        dst.output.append(name)  # the same name twice, or a second producer of it
    else:
        dst.output[0] = name
    return f"{dst.name} also writes {name!r}"


def add_cycle(draw, model):
    nodes = model.graph.node
    first, last = nodes[_pick(draw, nodes)], nodes[-1]
    if not first.input:
        first.input.append(last.output[0])
    else:
        first.input[_pick(draw, first.input)] = last.output[0]
    return f"{first.name} reads {last.output[0]!r} of {last.name}"


def remove_initializer(draw, model):
    inits = model.graph.initializer
    i = _pick(draw, inits)
    name = inits[i].name
    del inits[i]
    return f"initializer {name} removed"


def wrong_opset(draw, model):
    how = draw(st.sampled_from(["version", "domain", "clear", "duplicate", "ir"]))
    if how == "ir":
        model.ir_version = draw(st.sampled_from(IR_VERSIONS))
        return f"ir_version := {model.ir_version}"
    if how == "clear":
        model.ClearField("opset_import")
        return "no opset imports"
    if how == "duplicate":
        model.opset_import.append(oh.make_opsetid("", draw(st.sampled_from(OPSETS))))
        return f"second default opset {model.opset_import[-1].version}"
    if how == "domain":
        model.opset_import[0].domain = draw(st.sampled_from(DOMAINS))
        return f"opset domain := {model.opset_import[0].domain}"
    model.opset_import[0].version = draw(st.sampled_from(OPSETS))
    return f"opset := {model.opset_import[0].version}"


def wrong_domain(draw, model):
    node = _node(draw, model)
    node.domain = draw(st.sampled_from(DOMAINS))
    if draw(st.booleans()):
        model.opset_import.append(oh.make_opsetid(node.domain, draw(st.sampled_from([1, 2, 99]))))
    return f"{node.name}: domain := {node.domain}"


def change_op_type(draw, model):
    node = _node(draw, model)
    node.op_type = draw(st.sampled_from(OP_TYPES))
    return f"{node.name}: op_type := {node.op_type!r}"


def edit_graph_io(draw, model):
    g = model.graph
    how = draw(st.sampled_from(["drop-input", "drop-output", "ghost-output", "untyped-input", "extra-input",
                                "output-is-input", "no-nodes"]))
    if how == "drop-input" and g.input:
        del g.input[_pick(draw, g.input)]
    elif how == "drop-output":
        del g.output[_pick(draw, g.output)]
    elif how == "ghost-output":
        g.output.append(value_info("ghost", [2]))
    elif how == "untyped-input":
        g.input.append(onnx.ValueInfoProto(name="untyped"))
    elif how == "extra-input":
        g.input.append(value_info(draw(st.sampled_from(["extra", g.output[0].name, "x", ""])), [1]))
    elif how == "output-is-input" and g.input:
        g.output[0].name = g.input[0].name
    elif how == "no-nodes":
        g.ClearField("node")
    return f"graph io: {how}"


def reorder_nodes(draw, model):
    nodes = list(model.graph.node)
    order = draw(st.permutations(range(len(nodes))))
    model.graph.ClearField("node")
    model.graph.node.extend(nodes[i] for i in order)
    return f"node order {list(order)}"


def remove_node(draw, model):
    nodes = model.graph.node
    i = _pick(draw, nodes)
    name = nodes[i].name
    del nodes[i]
    return f"node {name} removed"


def corrupt_initializer_data(draw, model):
    inits = [t for t in model.graph.initializer if t.HasField("raw_data")]
    init = inits[_pick(draw, inits)]
    how = draw(st.sampled_from(["short", "long", "empty", "both", "segments"]))
    if how == "short":
        init.raw_data = init.raw_data[: len(init.raw_data) // 2]
    elif how == "long":
        init.raw_data = init.raw_data + b"\0" * 3
    elif how == "empty":
        init.ClearField("raw_data")
    elif how == "both":
        init.float_data.extend([1.0, 2.0])
    else:
        init.segment.begin, init.segment.end = 0, 10**6
    return f"initializer {init.name} data: {how}"


def bad_value_info(draw, model):
    """A value_info for an intermediate or initializer that contradicts it."""
    names = [o for n in model.graph.node for o in n.output] + [t.name for t in model.graph.initializer]
    name = names[_pick(draw, names)]
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.sampled_from([*DIM_VALUES[:6], "sym"]), max_size=4))
    model.graph.value_info.append(value_info(name, shape, dtype))
    return f"value_info {name}: dtype {dtype} shape {shape}"


def sparse_initializer(draw, model):
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sp")
    indices = numpy_helper.from_array(np.array(draw(st.sampled_from([[0, 1], [5, -1], [0]])), np.int64), "")
    dims = draw(st.sampled_from([[2], [4, 4], [0], [-1]]))
    sparse = oh.make_sparse_tensor(values, indices, dims)
    model.graph.sparse_initializer.append(sparse)
    if model.graph.node and draw(st.booleans()):
        model.graph.node[0].input[0] = "sp"
    return f"sparse initializer sp dims {dims}"


EXTERNAL_LOCATIONS = ["w.bin", "missing.bin", "../outside.bin", f"{ROOT_TOKEN}/outside.bin", "sub/../../outside.bin",
                      "", ".", "/etc/passwd", "/dev/zero", "w.bin\0x", "sub/w.bin", "m.onnx"]


def external_data(draw, model):
    """Move an initializer's bytes to a data file, recorded with a drawn location/offset/length."""
    inits = [t for t in model.graph.initializer if t.HasField("raw_data")]
    init = inits[_pick(draw, inits)]
    data = init.raw_data
    location = draw(st.sampled_from(EXTERNAL_LOCATIONS))
    entries = {"location": location, "offset": "0", "length": str(len(data))}
    tweak = draw(st.sampled_from(["none", "none", "offset", "length", "negative", "text", "no-location"]))
    if tweak == "offset":
        entries["offset"] = str(draw(st.sampled_from([1, 4096, 2**40])))
    elif tweak == "length":
        entries["length"] = str(draw(st.sampled_from([0, 1, len(data) * 2, 2**40])))
    elif tweak == "negative":
        entries["offset"] = "-4"
    elif tweak == "text":
        entries["length"] = "ten"
    elif tweak == "no-location":
        del entries["location"]
    init.ClearField("raw_data")
    init.data_location = TensorProto.EXTERNAL
    for key, value in entries.items():
        init.external_data.add(key=key, value=value)
    return f"initializer {init.name} external: {entries} ({len(data)} bytes)", data


MUTATIONS = [drop_input, rename_input, rename_output, change_attribute, change_dtype, change_dim,
             duplicate_output, add_cycle, remove_initializer, wrong_opset, wrong_domain, change_op_type,
             edit_graph_io, reorder_nodes, remove_node, corrupt_initializer_data, bad_value_info,
             sparse_initializer, external_data]


