"""The output directory: checked before compiling, written privately, moved into place whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import llmc
import llmc.compiler.stages as stages
from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.model.output_dir import OutputWriter
from tests.cli.test_bad_inputs import _assert_one_line_error

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def no_compiling(monkeypatch):
    """Fail the test if the build gets as far as loading the model."""
    monkeypatch.setattr(stages, "prepare", lambda *a, **k: pytest.fail("compiled before checking -o"))


def _build(model: Path, out: Path | str):
    return runner.invoke(app, ["build", str(model), "-o", str(out), "--no-cache"])


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}.llmc-") and p.is_dir())


@pytest.mark.parametrize("link", ["model.onnx", "manifest.json", "model.onnx.data"])
@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlink_inside_the_output_is_replaced_never_written_through(tmp_path, relu_model, link, dangling):
    out = tmp_path / "out"
    llmc.build(relu_model, output=out, cache=False)
    victim = tmp_path / "victim.txt"
    if not dangling:
        victim.write_text("precious")
    (out / link).unlink(missing_ok=True)
    (out / link).symlink_to(victim)
    result = _build(relu_model, out)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious" if not dangling else not victim.exists()
    assert not any(p.is_symlink() for p in out.iterdir())
    llmc.load(out)


@pytest.mark.parametrize("kind", ["file", "dangling", "link_to_dir", "devnull", "foreign_dir", "under_file"])
def test_a_bad_output_is_refused_before_compiling(tmp_path, relu_model, no_compiling, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("x")
    elif kind == "dangling":
        out.symlink_to(tmp_path / "nowhere")
    elif kind == "link_to_dir":
        (tmp_path / "real").mkdir()
        out.symlink_to(tmp_path / "real")
    elif kind == "devnull":
        out = Path("/dev/null")
    elif kind == "foreign_dir":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "out"
    fragment = {"file": "existing file", "dangling": "dangling symlink", "link_to_dir": "symlink",
                "devnull": "existing file", "foreign_dir": "no llmc artifact", "under_file": "not a directory"}[kind]
    _assert_one_line_error(_build(relu_model, out), str(out), fragment)
    if kind == "foreign_dir":
        assert (out / "notes.txt").read_text() == "mine"


def test_a_file_beside_an_artifact_is_never_deleted(tmp_path, relu_model):
    out = tmp_path / "out"
    llmc.build(relu_model, output=out, cache=False)
    (out / "README").write_text("mine")
    _assert_one_line_error(_build(relu_model, out), "README", "not part of an llmc artifact")
    assert (out / "README").read_text() == "mine"


def test_a_failed_rebuild_leaves_the_previous_artifact_whole(tmp_path, relu_model, monkeypatch):
    out = tmp_path / "out"
    llmc.build(relu_model, output=out, cache=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import llmc.compiler.verify as verify_module

    def broken(*args, **kwargs):
        raise LlmcError("stop here")

    monkeypatch.setattr(verify_module, "verify", broken)
    with pytest.raises(LlmcError, match="stop here"):
        llmc.build(relu_model, output=out, cache=False, seed=3)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path, "out") == []


def test_a_killed_rebuild_leaves_the_previous_artifact_whole(tmp_path, relu_model):
    """A process killed (os._exit) mid-write: the old artifact stays; the next build sweeps up."""
    out = tmp_path / "out"
    llmc.build(relu_model, output=out, cache=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    script = (
        "import os, sys, llmc, llmc.compiler.verify as v\n"
        "real = v.write\n"
        "def die(*a, **k):\n"
        "    real(*a, **k)\n"
        "    os._exit(9)\n"
        "v.write = die\n"
        f"llmc.build({str(relu_model)!r}, output={str(out)!r}, cache=False, seed=5)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 9, done.stderr.decode()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(_leftovers(tmp_path, "out")) == 1  # the dead build's private directory
    llmc.build(relu_model, output=out, cache=False, seed=5)
    assert _leftovers(tmp_path, "out") == []
    assert llmc.load(out)


def test_a_second_build_into_the_same_output_is_refused_while_one_runs(tmp_path, relu_model):
    out = tmp_path / "out"
    with OutputWriter(out):
        with pytest.raises(LlmcError, match="another llmc build is writing"):
            llmc.build(relu_model, output=out, cache=False)
        result = _build(relu_model, out)
        _assert_one_line_error(result, "another llmc build")
    assert llmc.build(relu_model, output=out, cache=False).path == out  # the lock is released


def test_the_lock_file_is_never_followed(tmp_path, relu_model):
    victim = tmp_path / "victim"
    (tmp_path / ".out.llmc-lock").symlink_to(victim)
    _assert_one_line_error(_build(relu_model, tmp_path / "out"), "lock file", "symlink")
    assert not victim.exists()


def test_the_artifact_has_the_usual_permissions(tmp_path, relu_model):
    out = llmc.build(relu_model, output=tmp_path / "out", cache=False).path
    mask = os.umask(0)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777) == 0o755 & ~mask


def test_dumps_inside_the_output_are_refused(tmp_path, relu_model, no_compiling):
    with pytest.raises(LlmcError, match="inside -o"):
        llmc.build(relu_model, output=tmp_path / "out", dump_ir_after=["all"], dump_dir=tmp_path / "out" / "ir")
