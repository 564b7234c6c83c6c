"""The shared bottom-layer helpers: one-line errors, cosine similarity, constant values."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from llmc.errors import LlmcError, first_line
from llmc.model.compare import cosine
from llmc.model.values import const_array

# --- llmc.errors.first_line ------------------------------------------------------------------


def test_first_line_of_a_multi_line_exception():
    error = RuntimeError("[ONNXRuntimeError] : 1 : FAIL : bad node\n  at frame 1\n  at frame 2")
    assert first_line(error) == "[ONNXRuntimeError] : 1 : FAIL : bad node"


def test_first_line_of_an_exception_without_message_is_its_type():
    assert first_line(ValueError()) == "ValueError"
    assert first_line(LlmcError("")) == "LlmcError"


def test_first_line_of_plain_text():
    assert first_line("just this") == "just this"
    assert first_line("") == "unknown error"


def test_first_line_skips_blank_lines_and_strips():
    assert first_line("\n   \n  the cause  \nmore") == "the cause"


def test_first_line_is_cut_at_the_limit():
    assert first_line("x" * 500) == "x" * 300
    assert first_line("abcdef", limit=3) == "abc"


# --- llmc.model.compare.cosine ---------------------------------------------------------------


def test_cosine_of_two_zero_vectors_is_one():
    assert cosine(np.zeros(4), np.zeros(4)) == 1.0


def test_cosine_with_one_zero_vector_is_zero():
    assert cosine(np.zeros(3), np.ones(3)) == 0.0
    assert cosine(np.ones(3), np.zeros(3)) == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_cosine_with_nan_or_inf_is_zero(bad):
    a = np.array([1.0, bad, 2.0])
    assert cosine(a, np.ones(3)) == 0.0
    assert cosine(np.ones(3), a) == 0.0


def test_cosine_of_orthogonal_vectors_is_zero():
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == 0.0


def test_cosine_of_parallel_vectors_is_one():
    a = np.arange(1.0, 7.0).reshape(2, 3)  # compared as flat vectors
    assert cosine(a, 2.5 * a) == pytest.approx(1.0)


# --- llmc.model.values.const_array -----------------------------------------------------------


def test_const_array_of_an_initializer():
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    weight = ir.Value(name="w", const_value=ir.tensor(data))
    graph = ir.Graph([], [], nodes=[], initializers=[weight])

    array = const_array(graph.initializers["w"])

    assert isinstance(array, np.ndarray)
    np.testing.assert_array_equal(array, data)
    assert array.dtype == np.float32


def test_const_array_of_a_non_constant_is_none():
    x = ir.Value(name="x", shape=ir.Shape(["batch", 3]), type=ir.TensorType(ir.DataType.FLOAT))
    assert const_array(x) is None


def test_const_array_of_none_is_none():
    assert const_array(None) is None
