"""Fuzzing the untrusted inputs of `llmc export`, `llmc build`'s companions, chat templates and
the values of generate/perplexity/compress (strategies in ``tests/fuzz/model_dirs.py``).

The contract is ``tests/fuzz/contract.py``'s, plus: nothing from outside the model directory
reaches an output (every file there holds ``SECRET``), an output holds no link, and a mutation
that must be refused is (one line, exit 1, ``-o`` not created), while a directory with only
harmless mutations (links inside it, a pickle beside the safetensors) exports.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from llmc.errors import LlmcError
from tests.fuzz.contract import (
    assert_one_line_or_success,
    describe,
    fuzz_settings,
    invoke_build,
    runner,
    snapshot,
    workspace,
)
from tests.fuzz.model_dirs import (
    COMPANION_KINDS,
    REFUSED_COMPANIONS,
    SECRET,
    DirCase,
    dir_cases,
    lay_out_companion,
    lay_out_outside,
    templates,
)
from tests.fuzz.strategies import BASE_MODELS, Case


def assert_nothing_from_outside(out: Path, where: str) -> None:
    """No link under ``out`` and no file holding SECRET (a file from outside the model directory)."""
    if not out.exists():
        return
    for path in out.rglob("*"):
        assert not path.is_symlink(), f"{where}\n{path} is a link"
        if path.is_file():
            assert SECRET not in path.read_bytes(), f"{where}\n{path} holds a file from outside the model directory"


@fuzz_settings(30)
@given(case=dir_cases())
def test_export_of_an_untrusted_model_directory_keeps_the_contract(case: DirCase):
    from llmc.cli.main import app

    with workspace() as root:
        model, out = case.write(root), root / "out"
        args = ["export", str(model), "-o", str(out), "--legacy"]
        before = snapshot(root, out)
        result = runner.invoke(app, args)
        where = f"{case}{describe(args, result)}"
        assert_one_line_or_success(args, result)
        assert snapshot(root, out) == before, f"{where}\nfiles changed outside -o"
        assert result.exit_code == (1 if case.refused else 0), where
        if result.exit_code == 1:
            assert not out.exists(), f"{where}\n-o written by a failed export"
        else:
            assert (out / "model.onnx").is_file(), where
        assert_nothing_from_outside(out, where)


@fuzz_settings(20)
@given(kinds=st.dictionaries(st.sampled_from(["tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                               "chat_template.jinja", "generation_config.json"]),
                             st.sampled_from(COMPANION_KINDS), max_size=3),
       cache=st.booleans())
def test_build_carries_only_companions_from_inside(kinds, cache):
    with workspace() as root:
        path = Case("relu_add", (), BASE_MODELS["relu_add"]()).write(root)
        outside = lay_out_outside(root)
        for name, kind in kinds.items():
            lay_out_companion(path.parent, outside, name, kind)
        out, elsewhere = root / "out", snapshot(outside)
        args = ["build", str(path), "-o", str(out), *([] if cache else ["--no-cache"])]
        saved = {name: os.environ.pop(name, None) for name in ("LLMC_CACHE_DIR", "LLMC_NO_CACHE")}
        os.environ["LLMC_CACHE_DIR"] = str(root / "cache")  # the tests' conftest turns the cache off: on here
        try:
            result = invoke_build(root / "model", args, out)  # the model's folder untouched
        finally:
            os.environ.pop("LLMC_CACHE_DIR", None)
            os.environ.update({name: value for name, value in saved.items() if value is not None})
        where = f"{kinds}{describe(args, result)}"
        assert result.exit_code == (1 if REFUSED_COMPANIONS & set(kinds.values()) else 0), where
        assert snapshot(outside) == elsewhere, where
        assert_nothing_from_outside(out, where)
        assert_nothing_from_outside(root / "cache", where)


@fuzz_settings(40)
@given(source=templates())
def test_chat_templates_are_bounded(source):
    from llmc.model import chat

    messages = [{"role": "user", "content": "hi"}]
    start = time.monotonic()
    try:
        text = chat.render(source, "model", max_seconds=0.3, messages=messages, add_generation_prompt=True,
                           bos_token="<s>")
    except LlmcError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("model: the chat template"), source
    else:
        assert isinstance(text, str) and len(text) <= chat.MAX_CHARS, source
    assert time.monotonic() - start < 2.0, source


_TEXT = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(["\udcff", "\ud800", "\udc80"]), max_size=8)
_NUMBER = st.floats(allow_nan=True, allow_infinity=True).map(repr) | st.sampled_from(["nan", "-inf", "inf", "-0.0"])
VALUE_CASES = st.one_of(
    st.tuples(st.just("generate"), st.sampled_from(["--seed"]), st.integers(-2**70, 2**70).map(str)),
    st.tuples(st.just("generate"), st.sampled_from(["--prompt", "--stop"]), _TEXT),
    st.tuples(st.just("generate"), st.sampled_from(["--temperature", "--top-p"]), _NUMBER),
    st.tuples(st.just("perplexity"), st.sampled_from(["--stride", "--max-length"]), st.integers(-2**40, 2**40).map(str)),
    st.tuples(st.just("compress"), st.sampled_from(["--minutes", "--ffn", "--heads", "--target-speedup", "--max-loss"]),
              _NUMBER),
    st.tuples(st.just("compress"), st.just("--layers"), st.integers(-2**40, 2**40).map(str)),
)


@fuzz_settings(40)
@given(drawn=VALUE_CASES)
def test_command_values_are_one_line_before_any_work(drawn):
    """Against a missing artifact/model: whatever the value, one line (the value's or the path's)."""
    from llmc.cli.main import app

    command, flag, value = drawn
    with workspace() as root:
        required = {
            "generate": ["--prompt", "w5"] if flag != "--prompt" else [],
            "perplexity": ["--text", str(root / "t.txt")],
            "compress": ["--data", str(root / "t.txt"), "-o", str(root / "o")],
        }[command]
        args = [command, str(root / "missing"), *required, flag, value]
        before = snapshot(root)
        result = runner.invoke(app, args)
        assert_one_line_or_success(args, result)
        assert result.exit_code == 1, describe(args, result)
        assert snapshot(root) == before, describe(args, result)
