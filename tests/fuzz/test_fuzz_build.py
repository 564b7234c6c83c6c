"""Fuzzing `llmc build` with mutated models: a verified artifact or one `error: ` line, nothing else.

Each example starts from a tiny valid model (``strategies.BASE_MODELS``), applies a few random
mutations (and maybe corrupts the file's bytes), builds it and checks the contract in
``tests/fuzz/contract.py``. The example counts are small for `make test`; set
``LLMC_FUZZ_EXAMPLES=N`` to run N times as many (e.g. ``LLMC_FUZZ_EXAMPLES=50 pytest tests/fuzz``).
"""

from __future__ import annotations

import pytest
from hypothesis import given

import llmc
from llmc.errors import LlmcError
from tests.fuzz.contract import (
    assert_artifact,
    fuzz_settings,
    invoke_build,
    invoke_readonly,
    snapshot,
    tree,
    workspace,
)
from tests.fuzz.strategies import BASE_MODELS, Case, mutated_cases


@pytest.mark.parametrize("name", sorted(BASE_MODELS))
def test_every_base_model_builds(name):
    """The mutations start from models that build: otherwise the fuzzing tests little."""
    with workspace() as root:
        path = Case(name, (), BASE_MODELS[name]()).write(root)
        result = invoke_build(root, ["build", str(path), "-o", str(root / "out")], root / "out")
        assert result.exit_code == 0, result.output


@fuzz_settings(100)
@given(case=mutated_cases())
def test_build_of_a_mutated_model_keeps_the_contract(case):
    with workspace() as root:
        path = case.write(root)
        invoke_build(root, ["build", str(path), "-o", str(root / "out")], root / "out")


@fuzz_settings(30)
@given(case=mutated_cases(max_mutations=2))
def test_build_over_an_earlier_artifact_keeps_it_on_failure(case):
    from tests.fuzz.contract import earlier_artifact

    with workspace() as root:
        path = case.write(root)
        out = earlier_artifact(root / "out")
        invoke_build(root, ["build", str(path), "-o", str(out)], out)


def _python_build(root, model, out):
    """llmc.build: an Artifact that loads, or an LlmcError of one line; -o untouched on error."""
    before, out_before = snapshot(root, out), tree(out)
    try:
        artifact = llmc.build(model, output=out, cache=False)
    except LlmcError as exc:
        message = str(exc).strip()
        assert message and "\n" not in message, f"LlmcError of {len(message.splitlines())} lines: {message!r}"
        assert tree(out) == out_before, "-o changed by a failed build"
    else:
        assert artifact.path == out
        assert_artifact(out, f"llmc.build({model!r})")
    assert snapshot(root, out) == before


@fuzz_settings(40)
@given(case=mutated_cases(max_mutations=2))
def test_python_build_of_a_mutated_file_raises_only_llmc_error(case):
    with workspace() as root:
        _python_build(root, case.write(root), root / "out")


@fuzz_settings(40)
@given(case=mutated_cases(max_mutations=2, corrupt=False))
def test_python_build_of_a_mutated_proto_in_memory_raises_only_llmc_error(case):
    with workspace() as root:
        case.write(root)  # the data files beside the model, should a relative location find them
        _python_build(root, case.proto, root / "out")


@fuzz_settings(30)
@given(case=mutated_cases(max_mutations=2))
def test_inspect_check_and_bench_of_a_mutated_model_keep_the_contract(case):
    with workspace() as root:
        src = str(case.write(root))
        invoke_readonly(root, ["inspect", src])
        invoke_readonly(root, ["inspect", src, "--memory"])
        invoke_readonly(root, ["check", src, src])
        invoke_readonly(root, ["bench", src, "--runs", "1", "--warmup", "0", "--no-rss"])
