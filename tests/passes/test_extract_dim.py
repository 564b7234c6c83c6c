"""``Slice(Shape(Transpose(Reshape(x, [.., -1, ..], allowzero=1))))``: the canonical ExtractDim rule
must not hand out the -1 as a dim (OPT's ``view(bsz, -1, heads, head_dim)`` became a Reshape with
two -1 dims, which ONNX Runtime refuses); a -1 whose size is static becomes that size."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

from llmc.compiler.stages import target_passes
from llmc.passes.manager import PassManager
from llmc.runtime.ort import run_model
from tests.passes.pass_helpers import I64, F, const, node, vi


def _model(view: list, extra_nodes, outputs, value_info=()) -> ir.Model:
    """x [batch, seq, 64] -> Reshape(x, Concat(view), allowzero=1) -> Transpose -> Shape -> ..."""
    parts = [f"p{i}" for i in range(4)]
    nodes = [node("Shape", ["x"], ["b"], start=0, end=1), node("Shape", ["x"], ["s"], start=1, end=2)]
    inits = []
    for name, part in zip(parts, view, strict=True):
        if isinstance(part, int):
            inits.append(const(name, np.array([part], np.int64)))
        else:
            nodes.append(node("Identity", [part], [name]))
    nodes += [
        node("Concat", parts, ["shape4"], axis=0),
        node("Reshape", ["x", "shape4"], ["r"], allowzero=1),
        node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]),
        node("Shape", ["t"], ["ts"]),
        *extra_nodes,
    ]
    graph = oh.make_graph(nodes, "g", [vi("x", ["batch", "seq", 64])], outputs, initializer=inits + [
        const("m2", np.array([-2], np.int64)), const("m1", np.array([-1], np.int64)),
        const("one", np.array([1], np.int64)), const("two", np.array([2], np.int64)),
        const("d16", np.array([16], np.int64)),
    ], value_info=list(value_info))
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=10)
    return ir.serde.deserialize_model(proto)


def _reshape_targets(model: ir.Model) -> list[list[int]]:
    return [
        n.inputs[1].const_value.numpy().tolist()
        for n in model.graph
        if n.op_type == "Reshape" and n.inputs[1].const_value is not None
    ]


@pytest.mark.parametrize("target", ["ort", "trt"])
def test_inferred_sequence_dim_is_not_extracted_as_minus_one(target):
    # OPT: q = x.view(bsz, -1, 4, 16).transpose(1, 2); then q.reshape(-1, q.shape[-2], 16).
    model = _model(
        ["b", -1, 4, 16],
        [node("Slice", ["ts", "m2", "m1"], ["seq_dim"]), node("Concat", ["m1", "seq_dim", "d16"], ["k3"], axis=0),
         node("Reshape", ["t", "k3"], ["y"])],
        [vi("y", ["bh", "seq", 16])],
    )
    x = np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32)
    reference = run_model(model, {"x": x})
    PassManager(*target_passes(target)).run(model)  # validity checked
    assert all(target.count(-1) <= 1 for target in _reshape_targets(model))
    np.testing.assert_array_equal(run_model(model, {"x": x})["y"], reference["y"])


def test_static_minus_one_dim_becomes_its_size():
    # BERT: x.view(bsz, seq, -1, 16): the heads dim (4) is static; Shape(..)[1:2] must give 4, not -1.
    model = _model(
        ["b", "s", -1, 16],
        [node("Slice", ["ts", "one", "two"], ["heads"]), node("Mul", ["heads", "two"], ["y"])],
        [vi("y", [1], I64)],
        [oh.make_tensor_value_info("r", F, ["batch", "seq", 4, 16])],
    )
    x = np.zeros((3, 7, 64), np.float32)
    assert run_model(model, {"x": x})["y"].tolist() == [8]
    manager = PassManager(*target_passes("trt"))
    manager.run(model)
    assert "Shape" not in [n.op_type for n in model.graph]  # the rule fired: no Shape chain left
    assert run_model(model, {"x": x})["y"].tolist() == [8]


@pytest.mark.parametrize("target", ["trt", "ort"])
def test_opt_export_builds_for_trt_fp16(tmp_path, target):
    """The reported failure: an OPT export (learned positions, ``view(bsz, -1, heads, dim)``)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import llmc
    from llmc.export import _randomize_norms_and_biases, export_encoder

    config = transformers.OPTConfig(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=4, ffn_dim=128, vocab_size=500,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    model = _randomize_norms_and_biases(transformers.OPTModel(config).eval())
    path = export_encoder(model, tmp_path / "opt.onnx")
    options = {"precision": "fp16", "no_engine": True} if target == "trt" else {}
    artifact = llmc.build(path, target=target, output=tmp_path / target, cache=False, **options)
    saved = onnx.load(str(tmp_path / target / "model.onnx"))
    for n in saved.graph.node:
        if n.op_type == "Reshape":
            shape = next((t for t in saved.graph.initializer if t.name == n.input[1]), None)
            assert shape is None or list(onnx.numpy_helper.to_array(shape)).count(-1) <= 1, n.name
    assert artifact.manifest["verification"]["passed"]
