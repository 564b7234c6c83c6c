"""The contract every llmc command keeps for any input, as assertions the fuzz tests share.

``llmc build MODEL -o OUT ...`` either exits 0 with a verified artifact in ``OUT`` (a directory
with ``manifest.json`` and ``model.onnx`` that ``llmc.load`` accepts: every file's sha256 is
checked), or exits 1 with exactly one line starting ``error: ``. Never a traceback, never a
file written outside ``OUT`` (llmc's own hidden ``.OUT.llmc-*`` entries beside it excepted), and
on failure ``OUT`` is untouched. ``inspect``, ``check`` and ``bench`` write nothing at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from typer.testing import CliRunner

from llmc.cli.main import app

# The fuzz tests' example counts scale with this factor: LLMC_FUZZ_EXAMPLES=20 runs 20 times as
# many examples as `make test` does (a longer fuzz run); 1 is the default.
SCALE = max(1, int(os.environ.get("LLMC_FUZZ_EXAMPLES", "1")))

runner = CliRunner()


def fuzz_settings(examples: int) -> settings:
    """Deterministic, database-free settings: ``examples`` times ``LLMC_FUZZ_EXAMPLES``."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # no "explain"
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    """Run with ``path`` as the working directory, so relative writes land where we look."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A fresh temporary directory that is also the working directory."""
    with tempfile.TemporaryDirectory(prefix="llmc-fuzz-") as tmp:
        root = Path(tmp).resolve()
        with chdir(root):
            yield root


def _entry(path: Path) -> tuple[Any, ...]:
    if path.is_symlink():
        return ("link", os.readlink(path))
    if path.is_dir():
        return ("dir",)
    if path.is_file():
        return ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return ("other",)


def _is_llmc_private(path: Path, out: Path | None) -> bool:
    return out is not None and path.parent == out.parent and path.name.startswith(f".{out.name}.llmc-")


def snapshot(root: Path, out: Path | None = None) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (symlinks not followed) but ``out`` and llmc's hidden entries."""
    found: dict[str, tuple[Any, ...]] = {}
    out_abs = Path(os.path.abspath(out)) if out is not None else None
    pending = [root]
    while pending:
        folder = pending.pop()
        for child in sorted(folder.iterdir()):
            if (out_abs is not None and child == out_abs) or _is_llmc_private(child, out_abs):
                continue
            found[str(child.relative_to(root))] = _entry(child)
            if child.is_dir() and not child.is_symlink():
                pending.append(child)
    return found


def tree(path: Path) -> Any:
    """The state of ``-o``: None if absent, else every entry under it (a link is not followed)."""
    if not path.is_symlink() and not path.exists():
        return None
    if path.is_symlink() or not path.is_dir():
        return _entry(path)
    return {str(p.relative_to(path)): _entry(p) for p in sorted(path.rglob("*"))}


def describe(args: list[str], result) -> str:
    """The command, its output and the exception's last frames, for an assertion message."""
    text = f"\n$ llmc {' '.join(repr(a) if (not a or ' ' in a) else a for a in args)}\n"
    text += f"exit code {result.exit_code}\n--- output ---\n{result.output}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "--- exception ---\n" + exception_tail(result.exception)
    return text


def exception_tail(exc: BaseException, frames: int = 4) -> str:
    """The last frames of ``exc``'s traceback and the first line of its message."""
    full = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in full if f"{os.sep}llmc{os.sep}" in f.filename]
    lines = [f"  {Path(f.filename).name}:{f.lineno} in {f.name}: {f.line}" for f in full[-frames:]]
    if ours and ours[-1] not in full[-frames:]:
        lines.insert(0, f"  (last llmc frame) {ours[-1].filename}:{ours[-1].lineno} in {ours[-1].name}: {ours[-1].line}")
    message = (str(exc).strip().splitlines() or [""])[0][:300]
    where = f" ({full[-1].filename}:{full[-1].lineno})" if full else ""
    return "\n".join([*lines, f"{type(exc).__name__}: {message}{where}"]) + "\n"


def assert_one_line_or_success(args: list[str], result) -> None:
    """Exit 0, or exit 1 with exactly one ``error: `` line; never a traceback."""
    where = describe(args, result)
    assert result.exception is None or isinstance(result.exception, SystemExit), where
    assert result.exit_code in (0, 1), where
    assert "Traceback" not in result.output, where
    if result.exit_code == 1:  # a line ends at "\n" (a form feed in a name does not start a new one)
        lines = [line for line in result.output.split("\n") if line.strip()]
        assert len(lines) == 1, where
        assert lines[0].startswith("error: "), where


def assert_artifact(out: Path, where: str) -> None:
    import llmc

    assert out.is_dir() and not out.is_symlink(), where
    assert (out / "manifest.json").is_file(), where
    assert (out / "model.onnx").is_file(), where
    try:
        llmc.load(out)
    except Exception as exc:  # the artifact a build wrote must load
        raise AssertionError(f"{where}\nllmc.load({out}) failed: {type(exc).__name__}: {exc}") from exc


def invoke_build(root: Path, args: list[str], out: Path) -> Any:
    """Run ``llmc build ARGS`` (``-o OUT`` included in ``args``) and check the whole contract."""
    before, out_before = snapshot(root, out), tree(out)
    result = runner.invoke(app, args)
    assert_one_line_or_success(args, result)
    where = describe(args, result)
    after = snapshot(root, out)
    if result.exit_code == 0:  # creating the missing parents of -o is part of writing -o
        parents = {str(p.relative_to(root)) for p in Path(os.path.abspath(out)).parents if root in p.parents}
        after = {k: v for k, v in after.items() if k in before or not (k in parents and v == ("dir",))}
    assert after == before, f"{where}\nfiles changed outside -o: {_diff(before, after)}"
    if result.exit_code == 0:
        assert_artifact(out, where)
    else:
        assert tree(out) == out_before, f"{where}\n-o changed by a failed build"
    return result


def invoke_readonly(root: Path, args: list[str]) -> Any:
    """Run a command that must write nothing (inspect, check, bench) and check the contract."""
    before = snapshot(root)
    result = runner.invoke(app, args)
    assert_one_line_or_success(args, result)
    after = snapshot(root)
    assert after == before, f"{describe(args, result)}\nfiles changed: {_diff(before, after)}"
    return result


def _diff(before: dict, after: dict) -> list[str]:
    keys = sorted(set(before) | set(after))
    return [f"{k}: {before.get(k)} -> {after.get(k)}" for k in keys if before.get(k) != after.get(k)][:10]


_EARLIER: dict[str, Path] = {}


def earlier_artifact(into: Path) -> Path:
    """Copy a real artifact (built once per process from a tiny model) to ``into``."""
    if "dir" not in _EARLIER:
        import atexit

        import llmc
        from tests.fuzz.strategies import BASE_MODELS

        keep = Path(tempfile.mkdtemp(prefix="llmc-fuzz-earlier-"))
        atexit.register(shutil.rmtree, keep, True)
        _EARLIER["dir"] = llmc.build(BASE_MODELS["relu_add"](), output=keep / "artifact", cache=False).path
    shutil.copytree(_EARLIER["dir"], into, symlinks=True)
    return into


def prepare_output(kind: str, root: Path, model: Path) -> tuple[str, Path]:
    """Lay out ``-o`` of the given kind (``strategies.OUTPUT_KINDS``) under ``root``: the
    argument to pass and the path it names."""
    if kind in ("dot", "empty-string"):
        return ("." if kind == "dot" else ""), root
    if kind == "model-dir":
        return str(model.parent), model.parent
    if kind == "model-file":
        return str(model), model
    out = _lay_out(kind, root)
    return str(out), out


def _lay_out(kind: str, root: Path) -> Path:
    out = root / "out"
    if kind == "nested-new":
        return root / "a" / "b" / "out"
    if kind == "empty-dir":
        out.mkdir()
    elif kind in ("earlier-artifact", "artifact-with-extra"):
        earlier_artifact(out)
        if kind == "artifact-with-extra":
            (out / "notes.txt").write_text("mine")
    elif kind == "file":
        out.write_text("not a directory")
    elif kind == "symlink-to-dir":
        (root / "real").mkdir()
        out.symlink_to(root / "real")
    elif kind == "dangling-symlink":
        out.symlink_to(root / "nowhere")
    elif kind == "under-file":
        (root / "f").write_text("x")
        return root / "f" / "out"
    elif kind == "foreign-dir":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    return out
