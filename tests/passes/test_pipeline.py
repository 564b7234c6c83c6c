"""Pipelines (parsing, defaults, ``without``), the PassManager's fixed-point groups, and instruments."""

from __future__ import annotations

import numpy as np
import onnx.helper as oh
import onnx_ir as ir
import pytest
from onnx import TensorProto, numpy_helper

from llmc.compiler.registry import TARGETS, get_target
from llmc.errors import LlmcError
from llmc.passes import registry
from llmc.passes.instruments import (
    DifferentialCheckError,
    DifferentialInstrument,
    DumpIRInstrument,
    PassVerificationError,
    TimingInstrument,
    VerifyEachInstrument,
)
from llmc.passes.manager import PassManager
from llmc.passes.pipeline import (
    DEFAULT_MAX_ITERATIONS,
    FixedPoint,
    Step,
    parse_pipeline,
)
from llmc.passes.registry import PassInfo, PassOptions, all_passes, get_pass
from llmc.runtime.ort import run_model
from tests.passes.pass_helpers import build, op_types, vi

F = TensorProto.FLOAT
BUILTIN = ("cse", "fold", "fuse", "logits", "memory", "noop", "prune", "shape")


# --------------------------------------------------------------------------- helpers


def identity_cse_model() -> ir.Model:
    """y = Relu(x) + Relu(Identity(x)) + w: noop exposes a duplicate that only cse then merges."""
    return build(
        [
            oh.make_node("Relu", ["x"], ["a"]),
            oh.make_node("Identity", ["x"], ["xi"]),
            oh.make_node("Relu", ["xi"], ["b"]),
            oh.make_node("Add", ["a", "b"], ["s"]),
            oh.make_node("Add", ["s", "w"], ["y"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", [2, 3])],
        [numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")],
    )


def dead_code_model() -> ir.Model:
    """y = Relu(x) + w, plus two dead nodes."""
    return build(
        [
            oh.make_node("Neg", ["x"], ["d1"]),
            oh.make_node("Exp", ["d1"], ["d2"]),
            oh.make_node("Relu", ["x"], ["r"]),
            oh.make_node("Add", ["r", "w"], ["y"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", [2, 3])],
        [numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")],
    )


def feeds(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((2, 3)).astype(np.float32)}


class FnPass(ir.passes.InPlacePass):
    """A throwaway pass: ``fn(model)`` edits the model and returns whether it changed it."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.stats = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=bool(self.fn(model)))


@pytest.fixture()
def fake_pass(monkeypatch):
    """Register a test-only pass for the duration of one test: ``fake_pass(name, fn)``."""
    get_pass("prune")  # load the built-in passes first

    def add(name, fn=None, factory=None):
        factory = factory or (lambda options: FnPass(fn))
        monkeypatch.setitem(registry._REGISTRY, name, PassInfo(name, "test pass", factory))

    return add


def countdown(changes: int):
    """A pass body that reports a change on its first ``changes`` runs, then none."""
    calls = []

    def fn(model):
        calls.append(1)
        return len(calls) <= changes

    fn.calls = calls
    return fn


def break_constant(model: ir.Model) -> bool:
    """A wrong rewrite: add 1 to the first initializer."""
    value = next(iter(model.graph.initializers.values()))
    value.const_value = ir.tensor(value.const_value.numpy() + 1, name=value.name)
    return True


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ("prune,(fold,cse)*3", "prune,(fold,cse)*3"),
        ("prune", "prune"),
        ("(prune,(fold,cse)*2,noop)*3,shape", "(prune,(fold,cse)*2,noop)*3,shape"),
        ("  prune , ( fold , cse ) * 3  ", "prune,(fold,cse)*3"),
        ("(fold)", f"(fold)*{DEFAULT_MAX_ITERATIONS}"),
    ],
)
def test_parse_round_trip(text, expected):
    pipeline = parse_pipeline(text)
    assert str(pipeline) == expected
    assert parse_pipeline(str(pipeline)) == pipeline


def test_parse_structure_and_default_bound():
    pipeline = parse_pipeline("prune,(fold,cse),(noop)*2")
    assert pipeline.items == (
        Step("prune"),
        FixedPoint((Step("fold"), Step("cse")), DEFAULT_MAX_ITERATIONS),
        FixedPoint((Step("noop"),), 2),
    )
    assert pipeline.names() == ["prune", "fold", "cse", "noop"]


def test_unknown_pass_lists_the_valid_ones():
    with pytest.raises(LlmcError) as excinfo:
        parse_pipeline("prune,(fold,nope)*2")
    message = str(excinfo.value)
    assert "unknown pass 'nope'" in message
    for name in BUILTIN:
        assert name in message


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("(fold,cse", "missing ')'"),
        ("((fold)*2", "missing ')'"),
        ("fold)", "unexpected ')'"),
        ("(fold)*0", "at least once"),
        ("(fold)*", "followed by a number"),
        ("(fold)*x", "followed by a number"),
        ("fold*3", "unexpected '*'"),
        ("fold,", "ends where a pass name is expected"),
        ("fold,,cse", "unexpected ','"),
        ("()", "unexpected ')'"),
        ("", "empty pipeline"),
        ("   ", "empty pipeline"),
        ("fold;cse", "cannot parse"),
        ("(fold)*-1", "cannot parse"),
    ],
)
def test_parse_errors(text, fragment):
    with pytest.raises(LlmcError) as excinfo:
        parse_pipeline(text)
    assert fragment in str(excinfo.value)


def test_default_pipelines():
    for target in TARGETS.values():
        pipeline = parse_pipeline(target.pipeline)
        assert str(pipeline) == target.pipeline
        # logits_to_keep is ONNX Runtime's (a scalar input would be a shape input of TensorRT's profiles)
        assert sorted(set(pipeline.names())) == sorted(n for n in BUILTIN if n != "logits" or target.name == "ort")
    with pytest.raises(LlmcError, match="unknown target 'tpu'.*ort, trt"):
        get_target("tpu")


def test_registry_lists_builtin_passes_and_refuses_duplicates(monkeypatch):
    assert {info.name for info in all_passes()} >= set(BUILTIN)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("fold", "again")(lambda options: FnPass(lambda m: False))


# --------------------------------------------------------------------------- without


def test_without_removes_passes_inside_groups_and_drops_empty_groups():
    pipeline = parse_pipeline("prune,(fold,cse)*3,(fold)*2,((fold)*2,noop)*5,shape")
    reduced = pipeline.without(["fold"])
    assert str(reduced) == "prune,(cse)*3,(noop)*5,shape"
    assert str(pipeline) == "prune,(fold,cse)*3,(fold)*2,((fold)*2,noop)*5,shape"  # unchanged
    assert str(pipeline.without(["fold", "cse", "noop"])) == "prune,shape"
    assert str(pipeline.without([])) == str(pipeline)


def test_without_unknown_pass_is_an_error():
    with pytest.raises(LlmcError, match="unknown pass 'nope'.*fold"):
        parse_pipeline("prune,fold").without(["nope"])


# --------------------------------------------------------------------------- PassManager


def test_fixed_point_group_runs_until_no_change(fake_pass):
    body = countdown(3)
    fake_pass("countdown", body)
    manager = PassManager(parse_pipeline("prune,(countdown)*10,prune"))
    assert manager.run(dead_code_model()) is True
    assert len(body.calls) == 4  # three changes, then one run that changes nothing
    assert [(r.name, r.iteration, r.modified) for r in manager.records] == [
        ("prune", 0, True),
        ("countdown", 0, True),
        ("countdown", 1, True),
        ("countdown", 2, True),
        ("countdown", 3, False),
        ("prune", 0, False),
    ]


def test_fixed_point_group_is_bounded(fake_pass):
    body = countdown(100)
    fake_pass("always", body)
    manager = PassManager(parse_pipeline("(always)*3"))
    assert manager.run(dead_code_model()) is True
    assert len(body.calls) == 3
    assert [r.iteration for r in manager.records] == [0, 1, 2]
    assert all(r.modified for r in manager.records)


def test_fixed_point_group_with_real_passes():
    model = identity_cse_model()
    reference = run_model(model, feeds())
    manager = PassManager(parse_pipeline("(cse,noop)*4"))
    assert manager.run(model) is True
    # iteration 0: noop removes the Identity; 1: cse merges the Relus; 2: nothing, stop.
    assert [(r.name, r.iteration, r.modified) for r in manager.records] == [
        ("cse", 0, False),
        ("noop", 0, True),
        ("cse", 1, True),
        ("noop", 1, False),
        ("cse", 2, False),
        ("noop", 2, False),
    ]
    assert op_types(model) == ["Relu", "Add", "Add"]
    np.testing.assert_array_equal(run_model(model, feeds())["y"], reference["y"])


def test_pass_manager_reports_no_change():
    model = build([oh.make_node("Relu", ["x"], ["y"])], [vi("x", [2, 3])], [vi("y", [2, 3])])
    manager = PassManager(parse_pipeline(get_target("ort").pipeline))
    assert manager.run(model) is False
    assert [r.name for r in manager.records] == [
        "prune",
        "shape",
        "fold",
        "noop",
        "cse",
        "fuse",
        "prune",
        "fold",
        "cse",
        "logits",
        "memory",
    ]
    assert not any(r.modified for r in manager.records)


def test_pass_manager_creates_passes_with_its_options(fake_pass):
    seen = []

    def factory(options):
        seen.append(options)
        return FnPass(lambda model: False)

    fake_pass("spy", factory=factory)
    options = PassOptions(fold_size_limit=7)
    PassManager(parse_pipeline("spy,(spy)*2"), options).run(dead_code_model())
    assert seen == [options, options]  # a fresh pass per run; the group stopped after one


def test_pass_manager_refuses_a_pass_that_is_not_in_place(fake_pass):
    class CopyPass(ir.passes.FunctionalPass):
        def call(self, model):
            return ir.passes.PassResult(ir.from_proto(ir.to_proto(model)), modified=True)

    fake_pass("copy", factory=lambda options: CopyPass())
    with pytest.raises(AssertionError, match="'copy' must run in place"):
        PassManager(parse_pipeline("copy")).run(dead_code_model())


# --------------------------------------------------------------------------- instruments


def test_timing_records_nodes_and_stats():
    model = dead_code_model()
    manager = PassManager(parse_pipeline("prune,fold"))
    manager.run(model)
    prune, fold = manager.records
    assert (prune.name, prune.nodes_before, prune.nodes_after) == ("prune", 4, 2)
    assert prune.stats == {"nodes": 2} and prune.modified
    assert (fold.nodes_before, fold.nodes_after, fold.modified) == (2, 2, False)
    assert prune.seconds >= 0
    assert prune.to_dict()["nodes_after"] == 2
    assert manager.timing.rewrites() == {"nodes": 2}


def test_timing_rewrites_sum_over_passes():
    timing = TimingInstrument()
    manager = PassManager(parse_pipeline("noop,cse,prune"), instruments=[timing])
    manager.run(identity_cse_model())
    assert timing.records == manager.records  # an added instrument sees every record
    assert timing is not manager.timing
    assert manager.timing.rewrites() == {"identity": 1, "nodes": 1}
    assert [r.nodes_after for r in manager.records] == [4, 3, 3]


def test_differential_check_names_the_pass_that_changed_outputs(fake_pass):
    fake_pass("broken", break_constant)
    instrument = DifferentialInstrument(feeds())
    manager = PassManager(parse_pipeline("prune,(noop,broken)*2"), instruments=[instrument])
    with pytest.raises(DifferentialCheckError) as excinfo:
        manager.run(dead_code_model())
    message = str(excinfo.value)
    assert "pass 'broken' changed output 'y'" in message
    assert "--disable-pass broken" in message
    assert isinstance(excinfo.value, LlmcError)
    assert instrument.checked == 2  # prune (changed, same outputs), then broken


def test_differential_check_passes_correct_passes():
    model = identity_cse_model()
    instrument = DifferentialInstrument(feeds(3))
    manager = PassManager(parse_pipeline(get_target("ort").pipeline), instruments=[instrument])
    assert manager.run(model)
    assert instrument.checked == sum(r.modified for r in manager.records) > 0
    assert instrument.reference is not None


def test_differential_check_uses_a_given_reference():
    model = dead_code_model()
    wrong = {"y": run_model(model, feeds())["y"] + 1}
    manager = PassManager(
        parse_pipeline("prune"), instruments=[DifferentialInstrument(feeds(), reference=wrong)]
    )
    with pytest.raises(DifferentialCheckError, match="pass 'prune'"):
        manager.run(model)


def reverse_nodes(model: ir.Model) -> bool:
    graph = model.graph
    nodes = list(graph)
    for n in nodes:
        graph.remove(n)
    graph.extend(reversed(nodes))
    return True


def rename_op(model: ir.Model) -> bool:
    next(iter(model.graph)).op_type = "NoSuchOp"
    return True


@pytest.mark.parametrize(
    "body, fragment",
    [(reverse_nodes, "before it is produced"), (rename_op, "NoSuchOp")],
)
def test_verify_each_names_the_pass_that_broke_the_model(fake_pass, body, fragment):
    fake_pass("vandal", body)
    manager = PassManager(parse_pipeline("prune,vandal,cse"), instruments=[VerifyEachInstrument()])
    with pytest.raises(PassVerificationError) as excinfo:
        manager.run(dead_code_model())
    assert "after pass 'vandal'" in str(excinfo.value)
    assert fragment in str(excinfo.value)
    assert [r.name for r in manager.records] == ["prune", "vandal"]


def test_verify_each_skips_passes_that_report_no_change(fake_pass):
    fake_pass("quiet_vandal", lambda model: reverse_nodes(model) and False)
    manager = PassManager(parse_pipeline("quiet_vandal"), instruments=[VerifyEachInstrument()])
    manager.run(dead_code_model())  # not verified: the pass said it changed nothing


def test_verify_each_accepts_the_default_pipeline():
    model = identity_cse_model()
    manager = PassManager(parse_pipeline(get_target("ort").pipeline), instruments=[VerifyEachInstrument()])
    assert manager.run(model)


def test_dump_ir_writes_selected_passes(tmp_path):
    out = tmp_path / "dumps"
    manager = PassManager(parse_pipeline("prune,(noop,cse)*2"), instruments=[DumpIRInstrument(["cse"], out)])
    manager.run(identity_cse_model())
    files = sorted(p.name for p in out.iterdir())
    # cse runs twice: iteration 0 (after noop) merges the Relus, iteration 1 changes nothing.
    assert files == ["000-input.txt", "001-cse.txt", "002-cse.txt"]
    assert (out / "000-input.txt").read_text().count("Relu") == 2
    assert (out / "000-input.txt").read_text().count("Identity") == 1
    assert (out / "001-cse.txt").read_text().count("Relu") == 1


def test_dump_ir_all(tmp_path):
    manager = PassManager(
        parse_pipeline("prune,fold,noop"), instruments=[DumpIRInstrument(["all"], tmp_path)]
    )
    manager.run(dead_code_model())
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["000-input.txt", "001-prune.txt", "002-fold.txt", "003-noop.txt"]
    assert "Exp" in (tmp_path / "000-input.txt").read_text()
    assert "Exp" not in (tmp_path / "001-prune.txt").read_text()
