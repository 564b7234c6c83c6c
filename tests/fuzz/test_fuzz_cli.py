"""Fuzzing the arguments of `llmc build`: --shape, --tolerance, --threads, --passes, --precision,
--target, --inputs and -o (files, symlinks, paths under a file, earlier artifacts...).

The contract is the one of ``tests/fuzz/contract.py``. Example counts scale with
``LLMC_FUZZ_EXAMPLES`` (default 1; e.g. ``LLMC_FUZZ_EXAMPLES=50`` for a longer run).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.contract import fuzz_settings, invoke_build, prepare_output, workspace
from tests.fuzz.strategies import BASE_MODELS, OUTPUT_KINDS, Case, build_options


@st.composite
def cli_cases(draw):
    name = draw(st.sampled_from(sorted(BASE_MODELS)))
    model = BASE_MODELS[name]()
    options = draw(build_options([v.name for v in model.graph.input]))
    return Case(name, (), model), options, draw(st.sampled_from(OUTPUT_KINDS))


@fuzz_settings(100)
@given(drawn=cli_cases())
def test_build_options_keep_the_contract(drawn):
    case, options, output_kind = drawn
    with workspace() as root:
        path = case.write(root)
        arg, out = prepare_output(output_kind, root, path)
        invoke_build(root, ["build", str(path), "-o", arg, *options], out)


# Values the option parser itself refuses (not a number where one is expected): still one line.
UNPARSEABLE = {
    "--tolerance": ["text", "", "1e-4x", "0x1p-3"],
    "--threads": ["abc", "1.5", "", "nan"],
    "--seed": ["x", "1e3"],
    "--alignment": ["sixty-four", "6.4"],
    "--calibration-samples": ["many"],
}


@fuzz_settings(12)
@given(flag=st.sampled_from(sorted(UNPARSEABLE)), data=st.data())
def test_unparseable_option_values_are_one_line(flag, data):
    value = data.draw(st.sampled_from(UNPARSEABLE[flag]))
    with workspace() as root:
        path = Case("relu_add", (), BASE_MODELS["relu_add"]()).write(root)
        invoke_build(root, ["build", str(path), "-o", str(root / "out"), flag, value], root / "out")


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _inputs_file(kind: str, names: list[str]) -> bytes:
    """An --inputs file: right, or wrong in one way."""
    first = names[0]
    right = {n: np.ones((2, 3), np.float32) for n in names}
    if kind == "text":
        return b"not an npz\n"
    if kind == "empty":
        return b""
    if kind == "truncated":
        return _npz(right)[:40]
    if kind == "wrong-name":
        return _npz({"nosuch": np.ones((2, 3), np.float32)})
    if kind == "wrong-dtype":
        return _npz({**right, first: np.ones((2, 3), np.int64)})
    if kind == "wrong-rank":
        return _npz({**right, first: np.ones((2, 3, 4, 5), np.float32)})
    if kind == "empty-array":
        return _npz({**right, first: np.ones((0, 3), np.float32)})
    if kind == "nan":
        return _npz({**right, first: np.full((2, 3), np.nan, np.float32)})
    if kind == "strings":
        return _npz({**right, first: np.array([["a", "b", "c"]] * 2)})
    if kind == "object":  # needs pickle to load: must be refused, never unpickled
        buffer = io.BytesIO()
        np.savez(buffer, **{first: np.array([{"a": 1}], dtype=object)})
        return buffer.getvalue()
    if kind == "zip-not-npy":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(f"{first}.npy", b"garbage")
        return buffer.getvalue()
    return _npz(right)


INPUT_KINDS = ["right", "text", "empty", "truncated", "wrong-name", "wrong-dtype", "wrong-rank", "empty-array",
               "nan", "strings", "object", "zip-not-npy", "missing", "directory"]


@fuzz_settings(25)
@given(name=st.sampled_from(["relu_add", "two_inputs", "attention"]), kind=st.sampled_from(INPUT_KINDS),
       suffix=st.sampled_from([".npz", ".npy", ""]))
def test_inputs_files_keep_the_contract(name, kind, suffix):
    model = BASE_MODELS[name]()
    with workspace() as root:
        path = Case(name, (), model).write(root)
        inputs = root / f"inputs{suffix}"
        if kind == "directory":
            inputs.mkdir()
        elif kind != "missing":
            inputs.write_bytes(_inputs_file(kind, [v.name for v in model.graph.input]))
        out = root / "out"
        invoke_build(root, ["build", str(path), "-o", str(out), "--inputs", str(inputs)], out)


@fuzz_settings(12)
@given(kind=st.sampled_from(["missing", "empty-dir", "text", "garbage-npz", "dir-of-garbage"]),
       samples=st.sampled_from(["-1", "0", "1", "2"]))
def test_int8_calibration_data_keeps_the_contract(kind, samples):
    with workspace() as root:
        path = Case("matmul_chain", (), BASE_MODELS["matmul_chain"]()).write(root)
        data = root / "calib"
        if kind in ("empty-dir", "dir-of-garbage"):
            data.mkdir()
            if kind == "dir-of-garbage":
                (data / "a.npz").write_bytes(b"garbage")
                (data / "b.npz").write_bytes(_npz({"nosuch": np.ones(3, np.float32)}))
        elif kind == "text":
            data = root / "calib.txt"
            data.write_text("some text\nmore text\n")
        elif kind == "garbage-npz":
            data = root / "calib.npz"
            data.write_bytes(_npz({"x": np.ones((4, 3), np.float32)}))
        out = root / "out"
        args = ["build", str(path), "-o", str(out), "--precision", "int8", "--calibration-data", str(data),
                "--calibration-samples", samples, "--holdout-samples", samples]
        invoke_build(root, args, Path(out))
