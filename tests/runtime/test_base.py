"""The runner protocol every backend's runner satisfies."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh

from llmc.runtime.base import Runner
from llmc.runtime.ort import OrtRunner, SessionConfig, create_session
from tests.helpers import make_model


def test_ort_runner_is_a_backend_runner(tmp_path):
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 2])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 2])
    path = tmp_path / "relu.onnx"
    onnx.save(make_model([oh.make_node("Relu", ["x"], ["y"])], [x], [y]), path)
    runner = OrtRunner(create_session(path, SessionConfig()))
    assert isinstance(runner, Runner)
    out = runner.run({"x": np.array([[-1.0, 2.0]], np.float32)})
    np.testing.assert_array_equal(out["y"], [[0.0, 2.0]])


def test_the_protocol_checks_the_names():
    class NoOutputs:
        input_names: list[str] = []

        def run(self, feeds):
            return {}

    assert not isinstance(NoOutputs(), Runner)
    assert not isinstance(object(), Runner)
