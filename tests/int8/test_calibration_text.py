"""Text calibration cuts every fourth line to its first one to three words: short inputs (queries)
are calibrated and judged on the held-out rows too."""

from __future__ import annotations

from llmc.int8.calibration_data import SHORT_EVERY, with_short_texts


def test_every_fourth_line_is_cut_to_one_two_or_three_words():
    lines = [f"w{i} a b c d e" for i in range(16)]
    out = with_short_texts(lines)
    assert [i for i, (a, b) in enumerate(zip(lines, out, strict=True)) if a != b] == [3, 7, 11, 15]
    assert [len(out[i].split()) for i in range(SHORT_EVERY - 1, 16, SHORT_EVERY)] == [1, 2, 3, 1]
    assert out[3] == "w3" and out[7] == "w7 a" and out[11] == "w11 a b"
    assert with_short_texts(["one", "two", "three", "four"]) == ["one", "two", "three", "four"]
    assert with_short_texts([]) == []
