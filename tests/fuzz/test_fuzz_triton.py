"""Fuzzing `llmc triton`: -o laid out as links, files, planted partial directories; bad names and
numbers. The contract: exit 0 with REPO/NAME a real directory (no links in it) holding the
artifact's own files and a config Triton's schema reads, and nothing else changed anywhere; or
exit 1 with one ``error: `` line and nothing changed at all. Never a write through a link.
Example counts scale with ``LLMC_FUZZ_EXAMPLES``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmc.cli.main import app
from tests.fuzz.contract import (
    assert_one_line_or_success,
    describe,
    earlier_artifact,
    fuzz_settings,
    runner,
    snapshot,
    workspace,
)

pytest.importorskip("tritonclient")

REPO_KINDS = ["new", "new", "nested-new", "empty-dir", "dot", "symlink-to-dir", "dangling-symlink", "file",
              "under-file", "name-exists", "name-is-link", "name-dangling-link", "name-is-file",
              "planted-partial-link", "planted-partial-dir", "planted-temp-dir", "artifact-dir"]
NAMES = [None, None, "m", "", ".m", "a/b", "../m", "m\nx", "a\\b", " ", "..", "m" * 300, "ok_1"]
NUMBERS = {
    "--max-batch-size": ["-1", "0", "1", "8", str(2**31 - 1), str(2**31), str(2**64), "abc", "1.5"],
    "--instances": ["-1", "0", "1", "2", str(2**31), "x"],
    "--threads": ["-1", "0", "1", "4", str(2**31), "many"],
    "--batch-wait-us": ["-1", "0", "100", "1000", str(60_000_001), str(2**64), "soon"],
}


@st.composite
def options(draw, bad: bool) -> list[str]:
    """--name and the numeric options: any value (``bad``), or mostly ones that make sense."""
    args: list[str] = []
    names = NAMES if bad else [None, None, None, "m", "ok_1", ".m", ""]
    name = draw(st.sampled_from(names))
    if name is not None:
        args += ["--name", name]
    for flag, values in NUMBERS.items():
        if draw(st.integers(0, 2 if bad else 5)) == 0:
            args += [flag, draw(st.sampled_from(values if bad else GOOD[flag]))]
    return args


GOOD = {"--max-batch-size": ["0", "1", "8"], "--instances": ["1", "2"], "--threads": ["0", "1"],
        "--batch-wait-us": ["0", "100"]}


def _lay_out(kind: str, root: Path, artifact: Path, name: str) -> tuple[str, Path]:
    """-o of the given kind under ``root``: the argument and the path it names."""
    repo, elsewhere = root / "repo", root / "elsewhere"
    elsewhere.mkdir()
    if kind == "nested-new":
        return str(root / "a" / "b" / "repo"), root / "a" / "b" / "repo"
    if kind == "dot":
        return ".", root
    if kind == "artifact-dir":
        return str(artifact), artifact
    if kind == "symlink-to-dir":
        repo.symlink_to(elsewhere)
    elif kind == "dangling-symlink":
        repo.symlink_to(root / "nowhere")
    elif kind == "file":
        repo.write_text("not a directory")
    elif kind == "under-file":
        (root / "f").write_text("x")
        return str(root / "f" / "repo"), root / "f" / "repo"
    elif kind != "new":
        repo.mkdir()
        _plant(kind, repo, elsewhere, name)
    return str(repo), repo


def _plant(kind: str, repo: Path, elsewhere: Path, name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        return
    try:
        target = repo / name
        if kind == "name-exists":
            target.mkdir()
        elif kind == "name-is-link":
            target.symlink_to(elsewhere)
        elif kind == "name-dangling-link":
            target.symlink_to(elsewhere / "nowhere")
        elif kind == "name-is-file":
            target.write_text("x")
        elif kind == "planted-partial-link":  # the fixed name an older llmc wrote through
            (repo / f".{name}.partial").symlink_to(elsewhere)
        elif kind in ("planted-partial-dir", "planted-temp-dir"):
            planted = repo / (f".{name}.partial" if kind == "planted-partial-dir" else f".{name}.llmc-planted")
            planted.mkdir()
            (planted / "1").symlink_to(elsewhere)
            (planted / "config.pbtxt").symlink_to(elsewhere / "config.pbtxt")
    except OSError:  # a name the file system refuses (too long): nothing planted
        pass


def _model_name(args: list[str], artifact: Path) -> str:
    return args[args.index("--name") + 1] if "--name" in args else artifact.name


def _check_repository(target: Path, artifact: Path, where: str) -> None:
    from google.protobuf import text_format

    from llmc.serving.triton import model_config_pb2

    assert target.is_dir() and not target.is_symlink(), where
    assert not any(p.is_symlink() for p in target.rglob("*")), where
    text_format.Parse((target / "config.pbtxt").read_text(), model_config_pb2().ModelConfig())
    recorded = json.loads((artifact / "manifest.json").read_text())["artifact"]["sha256"]
    for item in (target / "1").iterdir():
        assert hashlib.sha256(item.read_bytes()).hexdigest() == recorded[item.name], where


def _run(kind: str, args: list[str]) -> None:
    with workspace() as root:
        artifact = earlier_artifact(root / "artifact")
        name = _model_name(args, artifact)
        arg, repo = _lay_out(kind, root, artifact, name)
        argv = ["triton", str(artifact), "-o", arg, *args]
        before = snapshot(root)
        result = runner.invoke(app, argv)
        assert_one_line_or_success(argv, result)
        where = describe(argv, result)
        after = snapshot(root)
        if result.exit_code == 1:
            assert after == before, f"{where}\nchanged by a failed triton: {_diff(before, after)}"
            return
        target = Path(os.path.abspath(repo)) / name
        _check_repository(target, artifact, where)
        prefix = str(target.relative_to(root))
        added = {k for k in after if k not in before}
        made = {str(p.relative_to(root)) for p in target.parents if root in p.parents}  # -o and its parents
        assert all(k == prefix or k.startswith(prefix + os.sep) or k in made for k in added), where
        assert {k: v for k, v in after.items() if k in before} == before, f"{where}\n{_diff(before, after)}"


@pytest.mark.parametrize("kind", sorted(set(REPO_KINDS)))
@fuzz_settings(3)
@given(args=options(bad=False))
def test_triton_output_layouts_keep_the_contract(kind, args):
    _run(kind, args)


@fuzz_settings(25)
@given(kind=st.sampled_from(["new", "empty-dir", "name-exists"]), args=options(bad=True))
def test_triton_option_values_keep_the_contract(kind, args):
    _run(kind, args)


def _diff(before: dict, after: dict) -> list[str]:
    keys = sorted(set(before) | set(after))
    return [f"{k}: {before.get(k)} -> {after.get(k)}" for k in keys if before.get(k) != after.get(k)][:10]
