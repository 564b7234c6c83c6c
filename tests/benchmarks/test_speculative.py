"""The speculative decoding benchmark's bookkeeping (no model runs): its prompt sets, the table from
saved results (JSON round trip), ratios and the identical-token count."""

from __future__ import annotations

import json

from benchmarks import speculative


def test_prompt_sets_quote_the_corpus():
    copy, free = speculative.copy_prompts(), speculative.free_prompts()
    assert [k for k, _, _ in copy] == [k for k in speculative.KINDS["copy"] for _ in range(4)]
    assert [k for k, _, _ in free] == ["continue"] * 8 + ["explain"] * 8
    quote = copy[0][1]
    begins = quote.split('begins with "')[1].rstrip('".')
    assert begins in quote.split("\n\n")[0]  # the sentence asked for is in the text
    assert len({text for _, text, _ in copy + free}) == 32 and speculative.copy_prompts(1000) != copy


def _rows(seconds: float, tokens: list[int], drafted: int = 0, accepted: int = 0) -> dict:
    """One answer: its decode time is its wall time less a prefill of 0.5 s."""
    return {"seconds": seconds, "tokens": tokens, "decode_s": seconds - 0.5, "drafted": drafted, "accepted": accepted}


def test_render_from_saved_results():
    sets = {"copy": [("quote", "a", True), ("repeat", "b", True)], "free": [("continue", "c", False)]}
    runs = {
        "copy": [{"off": [_rows(2.0, [1] * 10), _rows(2.0, [2] * 10)],
                  "ngram": [_rows(1.0, [1] * 10, 12, 9), _rows(1.0, [2] * 9 + [3], 4, 1)]}] * 3,
        "free": [{"off": [_rows(1.0, [4] * 5)], "ngram": [_rows(1.0, [4] * 5, 0, 0)]}] * 3,
    }
    costs = {"llmc-int4": {"one_ms": 40.0, "costs": {w: speculative._fit(w) for w in speculative.WIDTHS}}}
    results = json.loads(json.dumps({"sets": sets, "runs": runs, "costs": costs, "new": 96}))
    text = speculative.render(results, 3, 96)
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| **3.00x** (3.00-3.00) | 2.00x | 62% (10/16) |" in lines["| **copy**"]  # decode: 1.5 s vs 0.5 s
    assert lines["| **copy**"].endswith("| 1/2 |")  # the repeat prompt's tokens differ
    assert "**1.00x**" in lines["| **free**"] and "- (0 drafted)" in lines["| **free**"]
    assert text.startswith("<!-- speculative:begin -->") and text.endswith("<!-- speculative:end -->")
    assert "| int4 (defaults, accuracy level 0) | 40.0 ms | 1.00 (1.00) | 1.96 (1.96)" in text
    assert "copy 3.000x against >= 1.6x: met; free 1.000x against >= 0.97x: met" in text
    assert "38% of the drafted tokens were rejected" in text
