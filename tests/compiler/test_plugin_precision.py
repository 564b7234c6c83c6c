"""A precision registered from outside llmc (this test module) builds like the built-in ones:
its options join the option table, its stage runs between the passes and verification, its
judgement decides the build, its report is a manifest section. No llmc module is edited."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

import llmc
from llmc.errors import LlmcError
from llmc.spec.options import Option, Section
from llmc.spec.precision import Precision, Result, Step
from tests.helpers import make_model


@dataclasses.dataclass(frozen=True)
class RoundSettings:
    mantissa_bits: int = 7  # bfloat16's


class RoundedWeights(Precision):
    """Float32 weights rounded to ``mantissa_bits`` of mantissa, kept as float32: a toy
    precision that changes the numbers a little and says so in its manifest section."""

    def check(self, request: Any, target: Any) -> None:
        if not 1 <= self.settings(request).mantissa_bits <= 22:
            raise LlmcError("--mantissa-bits must be 1..22")

    def apply(self, step: Step) -> Result:
        bits = self.settings(step.request).mantissa_bits
        rounded = 0
        for value in step.model.graph.initializers.values():
            array = value.const_value.numpy()
            if array.dtype != np.float32 or array.size < 2:
                continue
            as_int = array.view(np.uint32).astype(np.uint64)
            drop = 23 - bits
            as_int = ((as_int + (1 << (drop - 1))) >> drop) << drop  # round to nearest
            value.const_value = ir.tensor(as_int.astype(np.uint32).view(np.float32), name=value.name)
            rounded += 1
        return Result(step.model, {"mantissa_bits": bits, "tensors_rounded": rounded})


TOY = RoundedWeights(
    "toy-rounded", "float32 weights rounded to a few mantissa bits", tolerance=5e-2,
    section=Section("toy", RoundSettings, (Option("mantissa_bits", 7, "Mantissa bits kept.", int, "toy", "toy"),),
                    "toy"),
    manifest_section="toy", step_name="weight rounding",
)


@pytest.fixture()
def toy_precision():
    llmc.register_precision(TOY)
    yield TOY
    from llmc.compiler.registry import unregister_precision

    unregister_precision(TOY)


def _mlp(tmp_path) -> Any:
    rng = np.random.default_rng(0)
    w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((16, 32), (32, 8)))
    model = make_model(
        [oh.make_node("MatMul", ["x", "w1"], ["h"]), oh.make_node("Relu", ["h"], ["r"]),
         oh.make_node("MatMul", ["r", "w2"], ["y"])],
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 16])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 8])],
        [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")],
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    return path


def test_a_registered_precision_builds_with_its_options_stage_and_section(toy_precision, tmp_path):
    source = _mlp(tmp_path)
    artifact = llmc.build(source, precision="toy-rounded", output=tmp_path / "a", mantissa_bits=3, cache=False)
    manifest = artifact.manifest
    assert manifest["precision"] == "toy-rounded"
    assert manifest["toy"] == {"mantissa_bits": 3, "tensors_rounded": 2}
    assert manifest["verification"]["tolerance"] == 5e-2  # the precision's default tolerance
    # The stage really ran: every weight now has at most 3 mantissa bits.
    weights = [t for t in onnx.load(artifact.path / "model.onnx").graph.initializer]
    assert weights and all(
        (onnx.numpy_helper.to_array(t).view(np.uint32) & ((1 << 20) - 1) == 0).all() for t in weights
    )
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    assert np.isfinite(llmc.load(artifact.path).run({"x": x})["y"]).all()


def test_a_registered_precision_is_judged_and_checked(toy_precision, tmp_path):
    source = _mlp(tmp_path)
    with pytest.raises(LlmcError, match="changed output 'y'"):  # 1 mantissa bit is too coarse for 1e-3
        llmc.build(source, precision="toy-rounded", output=tmp_path / "b", mantissa_bits=1, tolerance=1e-3)
    with pytest.raises(LlmcError, match="--mantissa-bits must be 1..22"):
        llmc.build(source, precision="toy-rounded", output=tmp_path / "c", mantissa_bits=40)
    with pytest.raises(LlmcError, match="unknown precision 'toy-rounded'"):
        from llmc.compiler.registry import unregister_precision

        unregister_precision(TOY)
        try:
            llmc.build(source, precision="toy-rounded", output=tmp_path / "d")
        finally:
            llmc.register_precision(TOY)
