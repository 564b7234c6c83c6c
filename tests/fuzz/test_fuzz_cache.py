"""Fuzzing the build cache: tampered entries are misses (never another model), broken settings
are one line before any compile. Generators and the contract: ``tests/fuzz/cache_cases.py``.
Example counts scale with ``LLMC_FUZZ_EXAMPLES``."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import cache_cases
from tests.fuzz.cache_cases import ENTRY_ATTACKS, HARMLESS, SETTING_ATTACKS, environment
from tests.fuzz.contract import fuzz_settings, invoke_build, workspace


def _build_a(root: Path) -> tuple[object, Path]:
    model = root / "a.onnx"
    if not model.exists():
        shutil.copyfile(cache_cases.seed()["dir"] / "models" / "a.onnx", model)
    out = root / f"out{len(list(root.glob('out*')))}"
    return invoke_build(root, ["build", str(model), "-o", str(out)], out), out


def _served(out: Path) -> tuple[bytes, bool]:
    manifest = json.loads((out / "manifest.json").read_text())
    return (out / "model.onnx").read_bytes(), manifest["cache"]["hit"]


@pytest.mark.parametrize("kind", ENTRY_ATTACKS)
@fuzz_settings(2)
@given(data=st.data())
def test_a_tampered_entry_is_a_miss_never_another_model(kind, data):
    seed = cache_cases.seed()
    with workspace() as root, tempfile.TemporaryDirectory(prefix="llmc-fuzz-c-") as private:
        cache, config = cache_cases.copy_seed(Path(private))
        cache_cases.attack_entry(kind, cache, data.draw)
        with environment(cache, config):
            result, out = _build_a(root)
            assert result.exit_code == 0, result.output
            model, hit = _served(out)
            assert model == seed["model_a"], f"{kind}: the build served another model's bytes"
            assert hit == (kind in HARMLESS), f"{kind}: hit={hit}"
            again, out2 = _build_a(root)  # the rebuild's own entry replaced the damaged one
            assert again.exit_code == 0 and _served(out2) == (seed["model_a"], True), f"{kind}: {again.output}"


@pytest.mark.parametrize("setting", SETTING_ATTACKS, ids=lambda s: f"{s[0]}={s[1]!r}")
def test_cache_settings_that_make_no_sense_are_one_line(setting):
    what, value = setting
    seed = cache_cases.seed()
    with workspace() as root, tempfile.TemporaryDirectory(prefix="llmc-fuzz-c-") as private:
        cache, config = cache_cases.copy_seed(Path(private))
        cache_dir, max_mb, refusal = cache_cases.apply_setting(what, value, cache, config)
        with environment(cache_dir, config, max_mb), cache_cases.owner_patch(value):
            result, out = _build_a(root)
        if refusal is not None:
            assert result.exit_code == 1 and refusal in result.output, f"{setting}: {result.output}"
        else:
            assert result.exit_code == 0, f"{setting}: {result.output}"
            assert _served(out)[0] == seed["model_a"]
