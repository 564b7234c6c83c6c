"""Every malformed model of ``tests/fuzz/corpus.py`` through build, inspect, check and bench:
a result or one `error: ` line, never a traceback, nothing written but the artifact."""

from __future__ import annotations

import pytest

from tests.fuzz.contract import invoke_build, invoke_readonly, workspace
from tests.fuzz.corpus import CORPUS, write_entry

COMMANDS = {
    "build": None,
    "inspect": ["inspect", "{src}"],
    "inspect-memory": ["inspect", "{src}", "--memory"],
    "check": ["check", "{src}", "{src}"],
    "bench": ["bench", "{src}", "--runs", "1", "--warmup", "0", "--no-rss"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_entry_keeps_the_contract(name, command):
    with workspace() as root:
        src = str(write_entry(name, root))
        if command == "build":
            invoke_build(root, ["build", src, "-o", str(root / "out")], root / "out")
        else:
            invoke_readonly(root, [arg.format(src=src) for arg in COMMANDS[command]])
