"""extract against transformers' token-classification pipeline (aggregation "simple")."""

from __future__ import annotations

import numpy as np

import llmc
from tests.tasks.reference import pipeline

TEXTS = [
    "John Smith moved from Paris to Los Angeles in 2019.",
    "Xylophonists rehearsed unbelievably, un-self-consciously.",  # ## continuations, hyphens
    "Ångström met Müller at the café ☃ near Zürich",  # accents stripped by the tokenizer, [UNK]
    "no entities here, or maybe there are",
    "a",
]


def _plain(entities):
    return [(e["entity_group"], e["word"], e["start"], e["end"]) for e in entities]


def test_extract_matches_the_token_classification_pipeline(ner):
    ours = llmc.load(ner.artifact).extract(TEXTS)
    theirs = pipeline("token-classification", ner, aggregation_strategy="simple")(TEXTS)
    assert sum(len(e) for e in ours) > 5  # the random head finds entities to compare
    for text, mine, reference in zip(TEXTS, ours, theirs, strict=True):
        assert _plain(mine) == _plain(reference), text
        np.testing.assert_allclose([e["score"] for e in mine], [e["score"] for e in reference], atol=1e-4)
        for e in mine:
            assert set(e) == {"entity_group", "score", "word", "start", "end"}
            assert isinstance(e["score"], float) and isinstance(e["start"], int)


def test_extract_spans_point_into_the_text(ner):
    for text, entities in zip(TEXTS, llmc.load(ner.artifact).extract(TEXTS), strict=True):
        for e in entities:
            assert 0 <= e["start"] < e["end"] <= len(text)
