"""The text the demo, the benchmarks and the tests read: ``benchmarks/data/sentences.txt``, 2,000
English sentences from the CPython 3.11 standard library's docstrings (source and licence in
``benchmarks/data/README.md``). Importing this module does nothing else (``benchmarks.harness``,
which re-exports it, also sets up the benchmarks' environment)."""

from pathlib import Path

SENTENCES = Path(__file__).resolve().parent / "data" / "sentences.txt"
