"""``llmc cache``: what the build cache holds, and clearing it."""

from __future__ import annotations

import shutil
import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from llmc.cli.app import LlmcTyper, app, console, user_errors

cache_app = LlmcTyper(
    help="The build cache: artifacts and int8 calibration statistics by content key (also TensorRT engines).",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _engine_dirs() -> list:
    """TensorRT engines and timing caches: --target trt's and ONNX Runtime's TensorRT EP's."""
    from llmc.model.files import cache_root

    return [cache_root() / "trt", cache_root() / "ort-trt"]


@cache_app.command("info")
@user_errors
def info() -> None:
    """Where the cache is, its size per section and its limit."""
    from llmc.compiler.cache import BuildCache, cache_disabled
    from llmc.compiler.cache_trust import key_path

    cache = BuildCache()
    entries = cache.entries()
    console.print(f"cache: {escape(str(cache.root))} (LLMC_CACHE_DIR){escape('  [disabled: LLMC_NO_CACHE]') if cache_disabled() else ''}")
    for section in ("builds", "calibration"):
        found = [e for e in entries if e[0] == section]
        console.print(f"{section}: {len(found)} entries, {_mb(sum(e[2] for e in found))}")
    console.print(f"limit: {_mb(cache.limit)} (LLMC_CACHE_MAX_MB), least recently used entries go first")
    console.print(f"signing key: {escape(str(key_path()))} (entries it did not sign are misses)")
    for engines in _engine_dirs():
        size = sum(p.stat().st_size for p in engines.rglob("*") if p.is_file()) if engines.is_dir() else 0
        console.print(f"TensorRT engines and timing cache: {escape(str(engines))}, {_mb(size)} (not counted in the limit)")


@cache_app.command("list")
@user_errors
def list_entries() -> None:
    """Every entry, least recently used first: key, size, last use, source, target, precision."""
    from llmc.compiler.cache import BuildCache

    cache = BuildCache()
    table = Table(title=f"llmc cache ({escape(str(cache.root))})")
    for col in ("section", "key", "size", "last used", "source", "target", "precision"):
        table.add_column(col)
    for section, path, size, used in cache.entries():
        entry = cache.describe(path)
        table.add_row(
            section, path.stem[:16], _mb(size), time.strftime("%Y-%m-%d %H:%M", time.localtime(used)),
            escape(str(entry.get("source") or "-")), entry.get("target", "-"), entry.get("precision", "-"),
        )
    console.print(table)


@cache_app.command("clear")
@user_errors
def clear(
    builds: Annotated[bool, typer.Option("--builds", help="Only the cached artifacts.")] = False,
    calibration: Annotated[bool, typer.Option("--calibration", help="Only the int8 calibration statistics.")] = False,
    engines: Annotated[bool, typer.Option("--engines", help="Also the TensorRT engines and timing cache.")] = False,
) -> None:
    """Remove cached artifacts and calibration statistics (all of both unless one is named)."""
    from llmc.compiler.cache import BuildCache

    sections = tuple(s for s, on in (("builds", builds), ("calibration", calibration)) if on) or ("builds", "calibration")
    count, freed = BuildCache().clear(sections)
    console.print(f"removed {count} entries ({_mb(freed)}) from {', '.join(sections)}")
    for folder in _engine_dirs() if engines else []:
        if folder.is_dir():
            shutil.rmtree(folder)
            console.print(f"removed {escape(str(folder))}")
