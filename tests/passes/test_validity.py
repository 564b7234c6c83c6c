"""The validity check after every pass: a pass that writes an invalid graph fails the pipeline (and
the build) naming that pass, the node and the checker's reason; valid graphs with contrib ops pass."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from typer.testing import CliRunner

from llmc.compiler.stages import target_passes
from llmc.errors import LlmcError
from llmc.passes import registry
from llmc.passes.manager import PassManager
from llmc.passes.pipeline import parse_pipeline
from llmc.passes.registry import LlmcPass
from llmc.passes.validity import INLINE_LIMIT, InvalidGraphError, checkable_proto, describe, find_problem
from tests.passes.pass_helpers import I64, build, const, node, vi


def reshape_model() -> ir.Model:
    """y = Relu(Reshape(x, [3, 2])) with a dead Neg for prune to remove."""
    return build(
        [
            node("Neg", ["x"], ["dead"]),
            node("Reshape", ["x", "s"], ["r"], name="rs"),
            node("Relu", ["r"], ["y"], name="relu"),
        ],
        [vi("x", [2, 3])],
        [vi("y", [3, 2])],
        [const("s", np.array([3, 2], np.int64))],
    )


class TwoMinusOnes(LlmcPass):
    """A deliberately broken pass: every Reshape target becomes [-1, -1]."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for n in model.graph:
            if n.op_type == "Reshape":
                n.replace_input_with(1, ir.val("bad_shape", const_value=ir.tensor(np.array([-1, -1], np.int64))))
                model.graph.register_initializer(n.inputs[1])
        return ir.passes.PassResult(model, modified=True)


@pytest.fixture()
def broken_pass(monkeypatch):
    """``two_minus_ones`` in the registry for one test, registered the way plugins register."""
    registry.get_pass("prune")  # the built-in passes first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register("two_minus_ones", "test: writes an invalid Reshape")(lambda options: TwoMinusOnes())
    return "two_minus_ones"


def test_a_broken_pass_is_named_with_node_and_reason(broken_pass):
    manager = PassManager(parse_pipeline(f"prune,{broken_pass},cse"))
    with pytest.raises(InvalidGraphError) as excinfo:
        manager.run(reshape_model())
    message = str(excinfo.value)
    assert message == (
        "pass 'two_minus_ones' wrote an invalid graph: node 'rs' (Reshape): Target shape may not have "
        "multiple -1 dimensions; rebuild with --disable-pass two_minus_ones and report it"
    )
    assert isinstance(excinfo.value, LlmcError) and "\n" not in message
    assert [r.name for r in manager.records] == ["prune", "two_minus_ones"]


def test_the_build_fails_naming_the_pass(broken_pass, tmp_path):
    import llmc

    proto = ir.serde.serialize_model(reshape_model())
    with pytest.raises(LlmcError, match="pass 'two_minus_ones' wrote an invalid graph: node 'rs' .Reshape."):
        llmc.build(proto, passes=f"prune,{broken_pass}", output=tmp_path / "out", cache=False)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_the_cli_prints_one_line_naming_the_pass(broken_pass, tmp_path):
    from llmc.cli.main import app

    path = tmp_path / "m.onnx"
    onnx.save(ir.serde.serialize_model(reshape_model()), path)
    result = CliRunner().invoke(app, ["build", str(path), "--passes", f"prune,{broken_pass}", "--no-cache"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "pass 'two_minus_ones' wrote an invalid graph" in lines[0]
    assert "--disable-pass two_minus_ones" in lines[0]


def test_passes_that_report_no_change_are_not_checked(monkeypatch):
    registry.get_pass("prune")
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class Quiet(TwoMinusOnes):
        def call(self, model):
            super().call(model)
            return ir.passes.PassResult(model, modified=False)

    registry.register("quiet", "test")(lambda options: Quiet())
    manager = PassManager(parse_pipeline("quiet"))
    manager.run(reshape_model())  # not checked: the pass said it changed nothing
    assert manager.validity.checked == 1  # the source, before the pipeline


def test_validate_false_turns_the_check_off(broken_pass):
    manager = PassManager(parse_pipeline(broken_pass), validate=False)
    manager.run(reshape_model())
    assert manager.validity is None


def test_default_pipelines_pass_the_check_and_count_it():
    for target in ("ort", "trt"):
        manager = PassManager(*target_passes(target))
        manager.run(reshape_model())
        modified = sum(r.modified for r in manager.records)
        assert manager.validity.checked == 1 + modified and manager.validity.skipped is None


def test_a_source_that_fails_the_check_is_not_blamed_on_the_passes():
    model = build(
        [node("Relu", ["x"], ["y"], name="relu", foo=1), node("Neg", ["x"], ["dead"])],
        [vi("x", [2])],
        [vi("y", [2])],
    )
    manager = PassManager(parse_pipeline("prune"))
    assert manager.run(model)
    assert manager.validity.skipped.startswith("the source model fails the ONNX checker (node 'relu' (Relu):")
    assert manager.validity.checked == 1


@pytest.mark.parametrize(
    "nodes, opset, extra",
    [
        ([node("Attention", ["x"], ["y"], domain="com.microsoft", num_heads=2)], 18, [("com.microsoft", 1)]),
        ([node("SimplifiedLayerNormalization", ["x", "g"], ["y"], axis=-1, epsilon=1e-6)], 18, []),
        ([node("LayerNormalization", ["x", "g"], ["y"], axis=-1, epsilon=1e-6)], 14, []),
        ([node("Foo", ["x"], ["y"], domain="my.custom")], 18, [("my.custom", 1)]),
    ],
    ids=["contrib", "ort-onnx-domain", "layernorm-before-17", "custom-domain"],
)
def test_graphs_onnx_runtime_runs_are_valid(nodes, opset, extra):
    model = build(nodes, [vi("x", [2, 4])], [vi("y", [2, 4])], [const("g", np.ones(4, np.float32))], opset, extra)
    assert find_problem(model) is None


def test_unknown_onnx_op_and_topological_order_are_named():
    unknown = build([node("NoSuchOp", ["x"], ["y"], name="bad")], [vi("x", [2])], [vi("y", [2])])
    assert find_problem(unknown) == "node 'bad' (NoSuchOp): No Op registered for NoSuchOp with domain_version of 18"
    model = build([node("Neg", ["x"], ["t"], name="n"), node("Relu", ["t"], ["y"], name="r")], [vi("x", [2])], [vi("y", [2])])
    nodes = list(model.graph)
    model.graph.remove(nodes[0])
    model.graph.append(nodes[0])
    problem = find_problem(model)
    assert problem.startswith("node 'r' (Relu): Nodes in a graph must be topologically sorted")


def test_weights_are_checked_by_type_and_shape_only():
    big = np.ones((INLINE_LIMIT + 1,), np.float32)
    model = build(
        [node("Add", ["x", "w"], ["a"]), node("Reshape", ["a", "s"], ["y"])],
        [vi("x", [INLINE_LIMIT + 1])],
        [vi("y", [1, INLINE_LIMIT + 1])],
        [const("w", big), const("s", np.array([1, -1], np.int64))],
    )
    tensor = model.graph.initializers["w"].const_value
    proto = checkable_proto(model)
    assert [t.name for t in proto.graph.initializer] == ["s"]  # the shape constant keeps its data
    assert [i.name for i in proto.graph.input] == ["x", "w"]
    assert model.graph.initializers["w"].const_value is tensor  # the model is left as it was
    assert find_problem(model) is None
    assert proto.ByteSize() < big.nbytes


def test_describe_keeps_one_line():
    message = (
        "[ShapeInferenceError] Inference error(s): (op_type:Reshape, node name: a): [ShapeInferenceError] "
        "Target shape may not have multiple -1 dimensions.\n(op_type:Reshape, node name: b): "
        "[ShapeInferenceError] Target shape may not have multiple -1 dimensions.\n"
    )
    assert describe(message) == (
        "node 'a' (Reshape): Target shape may not have multiple -1 dimensions"
    )
    checker = "Unrecognized attribute: foo for operator Relu\n\n==> Context: Bad node spec for node. Name: r OpType: Relu"
    assert describe(checker) == "node 'r' (Relu): Unrecognized attribute: foo for operator Relu"
    assert describe("[TypeInferenceError] something odd") == "something odd"


def test_int64_shape_helper_dtype():  # the stripped weights keep their element type
    model = build(
        [node("Gather", ["w", "i"], ["y"])],
        [vi("i", [2], I64)],
        [vi("y", [2])],
        [const("w", np.arange(INLINE_LIMIT + 5, dtype=np.float32))],
    )
    inputs = {i.name: i for i in checkable_proto(model).graph.input}
    assert inputs["w"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inputs["w"].type.tensor_type.shape.dim] == [INLINE_LIMIT + 5]


def test_a_graph_that_cannot_be_serialized_is_named(monkeypatch):
    registry.get_pass("prune")
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class StringWeights(LlmcPass):
        def call(self, model):
            model.graph.initializers["s"].const_value = ir.Tensor(np.array(["a", "b"], dtype=object))
            return ir.passes.PassResult(model, modified=True)

    registry.register("strings", "test")(lambda options: StringWeights())
    with pytest.raises(InvalidGraphError, match=r"pass 'strings' wrote an invalid graph: it cannot be serialized to ONNX \("):
        PassManager(parse_pipeline("strings")).run(reshape_model())


def test_a_build_step_that_is_not_a_pass_is_checked_and_named():
    manager = PassManager(parse_pipeline("prune"))
    manager.run(reshape_model())
    broken = reshape_model()
    TwoMinusOnes().call(broken)
    with pytest.raises(InvalidGraphError, match="int8 quantization wrote an invalid graph: node 'rs' .*; fix it"):
        manager.validity.check_step("int8 quantization", broken, "fix it")
    assert manager.validity.to_dict()["checked"] >= 2 and manager.validity.to_dict()["skipped"] is None


def test_the_manifest_records_what_the_check_did(tmp_path, relu_model):
    import llmc

    validity = llmc.build(relu_model, output=tmp_path / "o", cache=False).manifest["validity"]
    assert validity["checked"] >= 1 and validity["seconds"] >= 0 and validity["skipped"] is None
