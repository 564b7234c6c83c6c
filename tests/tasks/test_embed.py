"""embed against the torch model pooled the same way; batching by length; truncation."""

from __future__ import annotations

import numpy as np
import pytest

import llmc
from llmc.tasks.batching import length_batches
from tests.tasks.reference import torch_embedding

TEXTS = [
    "A short one.",
    "This sentence is somewhat longer than the first one, with a few more words in it.",
    "Mid-length text about embeddings.",
    "x",
    "The quick brown fox jumps over the lazy dog while the cat watches from the windowsill, unimpressed.",
    "Another mid-length sentence here.",
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_sentence_embedding_matches_torch(embedder):
    ours = llmc.load(embedder.artifact).embed(TEXTS)
    assert ours.shape == (len(TEXTS), 64) and ours.dtype == np.float32
    assert _cosines(ours, torch_embedding(embedder, TEXTS, normalize=True)).min() >= 0.9999


def test_feature_extraction_embeds_by_mean_pooling(features):
    runner = llmc.load(features.artifact)
    assert "token_type_ids" not in runner.input_names
    ours = runner.embed(TEXTS)
    theirs = torch_embedding(features, TEXTS, normalize=False)
    assert _cosines(ours, theirs).min() >= 0.9999
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("batch_size", [1, 2, 4, 32])
def test_batching_by_length_keeps_input_order(embedder, batch_size):
    runner = llmc.load(embedder.artifact)
    one_at_a_time = np.stack([runner.embed(text)[0] for text in TEXTS])
    np.testing.assert_allclose(runner.embed(TEXTS, batch_size=batch_size), one_at_a_time, atol=1e-5)


@pytest.mark.parametrize("padding", ["off", "auto"])
def test_batching_by_length_on_token_outputs(features, ner, padding):
    """Rows padded to their batch's longest (padding off: computed; auto: skipped again by the
    runner) give each text what it gets alone."""
    runner = llmc.load(features.artifact, padding=padding)
    single = np.stack([runner.embed(t)[0] for t in TEXTS])
    np.testing.assert_allclose(runner.embed(TEXTS, batch_size=3), single, atol=1e-5)
    runner = llmc.load(ner.artifact, padding=padding)
    assert _entities(runner.extract(TEXTS, batch_size=3)) == _entities([runner.extract(t)[0] for t in TEXTS])


def _entities(groups):
    return [[(e["entity_group"], e["word"], e["start"], e["end"], round(e["score"], 4)) for e in g] for g in groups]


def test_length_batches_sort_by_length_and_cut():
    batches = length_batches([5, 1, 3, 3, 9, 2], 2)
    assert [list(b) for b in batches] == [[1, 5], [2, 3], [0, 4]]
    with pytest.raises(llmc.LlmcError, match="batch_size"):
        length_batches([1], 0)


def test_a_text_past_the_model_length_is_truncated(features):
    text = " ".join(["word"] * 700)
    ours = llmc.load(features.artifact).embed([text, "short"])
    theirs = torch_embedding(features, [text], normalize=False)  # transformers truncates to 512 too
    assert _cosines(ours[:1], theirs).min() >= 0.9999


def test_the_task_models_pack_their_batches_by_default(embedder, features, sentiment, ner):
    """Their builds measured packing safe: a batch's texts share rows, and what each text gets
    matches the padded batch computed in full."""
    for model in (embedder, features, sentiment, ner):
        packed, computed = llmc.load(model.artifact), llmc.load(model.artifact, padding="off")
        assert (packed.padding, computed.padding) == ("pack", "off"), model.artifact
    runner, full = llmc.load(embedder.artifact), llmc.load(embedder.artifact, padding="off")
    np.testing.assert_allclose(runner.embed(TEXTS, batch_size=6), full.embed(TEXTS, batch_size=6), atol=1e-5)
    runner, full = llmc.load(sentiment.artifact), llmc.load(sentiment.artifact, padding="off")
    for ours, theirs in zip(runner.classify(TEXTS, batch_size=6), full.classify(TEXTS, batch_size=6), strict=True):
        assert [label for label, _ in ours] == [label for label, _ in theirs]
        np.testing.assert_allclose([score for _, score in ours], [score for _, score in theirs], atol=1e-5)
