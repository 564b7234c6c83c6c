"""fill_mask against transformers' fill-mask pipeline."""

from __future__ import annotations

import numpy as np
import pytest

import llmc
from tests.tasks.reference import pipeline

TEXTS = [
    "Paris is the [MASK] of France.",
    "The [MASK] sat on the [MASK].",  # two masks: special tokens kept in the sequence
    "[MASK]",
]


def test_fill_mask_matches_the_fill_mask_pipeline(masked_lm):
    ours = llmc.load(masked_lm.artifact).fill_mask(TEXTS, top_k=5)
    fill = pipeline("fill-mask", masked_lm, top_k=5)
    for text, masks in zip(TEXTS, ours, strict=True):
        theirs = fill(text)
        theirs = theirs if isinstance(theirs[0], list) else [theirs]
        assert len(masks) == len(theirs) == text.count("[MASK]")
        for mine, reference in zip(masks, theirs, strict=True):
            assert [(c["token"], c["token_str"], c["sequence"]) for c in mine] == [
                (c["token"], c["token_str"], c["sequence"]) for c in reference
            ]
            np.testing.assert_allclose([c["score"] for c in mine], [c["score"] for c in reference], atol=1e-4)


def test_a_text_without_a_mask_is_one_line(masked_lm):
    with pytest.raises(llmc.LlmcError, match=r"text 2 has no \[MASK\]"):
        llmc.load(masked_lm.artifact).fill_mask(["a [MASK]", "none here"])


def test_predict_fills_masks(masked_lm):
    from tests.tasks.test_predict_cli import as_json, invoke

    data = as_json("predict", masked_lm.artifact, "--text", TEXTS[1], "--top-k", "3")
    assert data["reading"] == "fill" and [len(m) for m in data["results"][0]["masks"]] == [3, 3]
    assert "mask 2: " in invoke("predict", masked_lm.artifact, "--text", TEXTS[1])
