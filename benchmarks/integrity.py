"""What the artifact integrity contract costs at load time: hashing every file before use.

    python -m benchmarks.integrity [--rounds 5]

Builds MiniLM and GPT-2 (fp32) once, then per round and per model, each in a fresh process:
``read_artifact`` with the check (manifest + sha256 of every file) and without it, and the whole
``llmc.load`` (check + ONNX Runtime session). Medians go to the "Artifact integrity" section of
RESULTS.md; the check's share of ``llmc.load`` is the figure that matters.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import models
from benchmarks.harness import isolated, job, machine_line, write_section

BEGIN, END = "<!-- integrity:begin -->", "<!-- integrity:end -->"
MODELS = {"all-MiniLM-L6-v2": models.minilm, "GPT-2 (124M)": models.gpt2}


def _build(source: str, out: str) -> dict[str, Any]:
    import llmc

    artifact = llmc.build(source, output=out, threads=2, cache=False)
    return {"bytes": sum((artifact.path / name).stat().st_size for name in artifact.manifest["artifact"]["sha256"])}


def _load(path: str) -> dict[str, Any]:
    """One fresh process: the checked read, the unchecked read, then the whole llmc.load."""
    import time

    import llmc
    from llmc.runtime.artifact import read_artifact

    timings = {}
    for label, call in (
        ("unchecked", lambda: read_artifact(path, check=False)),
        ("checked", lambda: read_artifact(path)),
        ("load", lambda: llmc.load(path, threads=2)),
    ):
        start = time.perf_counter()
        call()
        timings[label] = time.perf_counter() - start
    return timings


def measure(rounds: int) -> dict[str, dict[str, float]]:
    rows = {}
    with tempfile.TemporaryDirectory(prefix="llmc-integrity-") as tmp:
        for name, source in MODELS.items():
            out = str(Path(tmp) / name.split()[0])
            built = job(_build, str(source()), out)
            if "error" in built:
                raise SystemExit(f"{name}: {built['error']}")
            runs = [isolated(_load, out) for _ in range(rounds)]
            row = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            row["mb"] = built["bytes"] / 1e6
            rows[name] = row
            print(name, {k: round(v, 4) for k, v in row.items()}, flush=True)
    return rows


def render(rows: dict[str, dict[str, float]], rounds: int) -> str:
    lines = [
        BEGIN,
        "## Artifact integrity",
        "",
        f"`python -m benchmarks.integrity --rounds {rounds}`. {machine_line()}",
        "fp32 artifacts; each round a fresh process (the files in the page cache); medians. `check` is",
        "what `llmc.load`, `bench`, `check` and `inspect` now do before using an artifact: parse and",
        "validate the manifest, sha256 every file it lists (sequentially, before ONNX Runtime reads a",
        "byte: a model that fails the check is never parsed). Before the integrity contract `llmc.load`",
        "already hashed `model.onnx`, so a single-file artifact costs what it did; what is new is the",
        "external data, engine and calibration files being hashed, and `bench`, `check` and `inspect`",
        "checking at all.",
        "",
        "| model | artifact MB | read, no check ms | read + check ms | check ms | llmc.load ms | check share of load |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        check = r["checked"] - r["unchecked"]
        lines.append(
            f"| {name} | {r['mb']:.0f} | {r['unchecked'] * 1e3:.1f} | {r['checked'] * 1e3:.1f} | {check * 1e3:.1f} "
            f"| {r['load'] * 1e3:.0f} | {check / r['load']:.0%} |"
        )
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = measure(args.rounds)
    write_section(BEGIN, END, render(rows, args.rounds))


if __name__ == "__main__":
    main()
