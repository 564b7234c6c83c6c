"""``llmc triton`` never writes through links, and a bad ``-o`` or option value is one line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.serving import triton
from llmc.serving.triton import TritonOptions, write_repository
from tests.helpers import make_model

pytest.importorskip("tritonclient")
runner = CliRunner()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("triton-out")
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])
    w = onnx.numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")
    onnx.save(make_model([oh.make_node("Add", ["x", "w"], ["y"])], [x], [y], [w]), root / "add.onnx")
    return llmc.build(root / "add.onnx", output=root / "add", cache=False).path


def _tree(path: Path) -> list[tuple[str, bool]]:
    return sorted((str(p.relative_to(path)), p.is_symlink()) for p in path.rglob("*"))


def _cli(*args: str):
    result = runner.invoke(app, ["triton", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def _one_line(result, *words: str) -> None:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for word in words:
        assert word in result.output, result.output


@pytest.mark.parametrize("dangling", [False, True])
def test_an_output_that_is_a_symlink_is_refused(artifact, tmp_path, dangling):
    elsewhere = tmp_path / "elsewhere"
    if not dangling:
        elsewhere.mkdir()
    (tmp_path / "repo").symlink_to(elsewhere)
    _one_line(_cli(str(artifact), "-o", str(tmp_path / "repo")), "symlink", "-o")
    assert not elsewhere.exists() or list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_an_output_that_is_a_file_or_under_one_is_one_line(artifact, tmp_path, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "repo"
    _one_line(_cli(str(artifact), "-o", str(out)), "-o", "not a directory")
    assert (tmp_path / "f").read_text() == "x"


def test_an_unwritable_output_is_one_line(artifact, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _one_line(_cli(str(artifact), "-o", str(locked / "repo")), "permission denied")


def test_a_model_directory_that_is_a_link_is_refused(artifact, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "m").symlink_to(elsewhere)
    _one_line(_cli(str(artifact), "-o", str(tmp_path / "repo"), "--name", "m"), "symlink")
    assert list(elsewhere.iterdir()) == []


def test_a_planted_partial_directory_is_never_written_into(artifact, tmp_path):
    """The old writer used REPO/.NAME.partial: a directory planted there, with links inside, is
    left alone; the repository is written into a fresh private directory instead."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    repo = tmp_path / "repo"
    planted = repo / ".m.llmc-planted"  # the new writer's prefix: still never reused
    planted.mkdir(parents=True)
    (planted / "1").symlink_to(elsewhere)
    (planted / "config.pbtxt").symlink_to(elsewhere / "config.pbtxt")
    (repo / ".m.partial").symlink_to(elsewhere)  # the old writer's fixed name: a link to elsewhere
    before = _tree(repo)
    target = write_repository(artifact, repo, TritonOptions(name="m"))
    assert list(elsewhere.iterdir()) == []
    assert not any(p.is_symlink() for p in target.rglob("*"))
    assert sorted(set(_tree(repo)) - set(before)) == sorted(
        [("m", False), ("m/1", False), ("m/1/model.onnx", False), ("m/config.pbtxt", False)]
    )
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~triton._umask()


def test_a_directory_planted_at_the_last_moment_is_not_replaced(tmp_path):
    source = tmp_path / "new"
    (source / "1").mkdir(parents=True)
    (tmp_path / "m").mkdir()  # empty: a plain rename would replace it
    with pytest.raises(LlmcError, match="exists"):
        triton._rename_noreplace(source, tmp_path / "m")
    assert (source / "1").is_dir() and list((tmp_path / "m").iterdir()) == []


@pytest.mark.parametrize("flag,value", [
    ("--max-batch-size", "-1"), ("--max-batch-size", str(2**40)), ("--instances", "0"), ("--instances", str(2**31)),
    ("--threads", "-2"), ("--threads", "100000"), ("--batch-wait-us", "-5"), ("--batch-wait-us", str(10**12)),
])
def test_a_bad_numeric_option_is_one_line_naming_it(artifact, tmp_path, flag, value):
    _one_line(_cli(str(artifact), "-o", str(tmp_path / "repo"), flag, value), flag)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("name", ["a/b", ".hidden", "", "x\ny", "..", "a\\b"])
def test_a_bad_name_is_one_line(artifact, tmp_path, name):
    with pytest.raises(LlmcError, match="--name") as info:
        write_repository(artifact, tmp_path / "repo", TritonOptions(name=name))
    assert "\n" not in str(info.value)
