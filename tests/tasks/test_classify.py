"""classify and rerank against transformers on the same tiny models."""

from __future__ import annotations

import numpy as np
import pytest

import llmc
from llmc.spec.task import TEXT_CLASSIFICATION, TaskSpec
from llmc.tasks.model import TaskModel
from tests.tasks.models import SENTIMENT
from tests.tasks.reference import pipeline, torch_embedding, torch_logits

TEXTS = [
    "I loved this film, the acting was superb!",
    "Terrible.",
    "The package arrived on Tuesday, as expected, and nothing about it was remarkable either way.",
    "Not sure how I feel about it",
]
QUERY = "how do I bake bread at home"
DOCUMENTS = [
    "Preheat the oven, knead the dough and let it rise for an hour.",
    "The stock market closed higher today.",
    "Sourdough needs a starter culture.",
    "Cats sleep for most of the day.",
    "Bread",
]


def _close(ours, theirs):
    assert [label for label, _ in ours] == [entry["label"] for entry in theirs]
    np.testing.assert_allclose([s for _, s in ours], [entry["score"] for entry in theirs], atol=1e-4)


def test_classify_matches_the_text_classification_pipeline(sentiment):
    runner = llmc.load(sentiment.artifact)
    ours = runner.classify(TEXTS)
    theirs = pipeline("text-classification", sentiment, top_k=None)(TEXTS)
    assert len(ours) == len(TEXTS)
    for mine, reference in zip(ours, theirs, strict=True):
        _close(mine, reference)
    assert [len(r) for r in runner.classify(TEXTS, top_k=2)] == [2] * len(TEXTS)
    alone = runner.classify(TEXTS[1])[0]  # one text is a list of one; alone or packed with others, up to rounding
    assert [label for label, _ in alone] == [label for label, _ in ours[1]]
    assert [score for _, score in alone] == pytest.approx([score for _, score in ours[1]], abs=1e-6)


def test_classify_pairs_as_text_pair_or_pairs(cross_encoder):
    runner = llmc.load(cross_encoder.artifact)
    pairs = [(QUERY, d) for d in DOCUMENTS]
    theirs = pipeline("text-classification", cross_encoder, top_k=None)(
        [{"text": a, "text_pair": b} for a, b in pairs]
    )
    ours = runner.classify(pairs=pairs)
    for mine, reference in zip(ours, theirs, strict=True):
        _close(mine, reference)  # one label, no problem type: sigmoid, as transformers
    assert _same(runner.classify(QUERY, DOCUMENTS), ours)  # one text paired with each document
    assert _same(runner.classify([QUERY] * len(DOCUMENTS), text_pair=DOCUMENTS), ours)


def _same(a, b) -> bool:
    return all(x[0][0] == y[0][0] and abs(x[0][1] - y[0][1]) < 1e-6 for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("problem_type", "function"), [("multi_label_classification", "sigmoid"), ("regression", "none")]
)
def test_problem_types_score_as_transformers_does(sentiment, problem_type, function):
    runner = llmc.load(sentiment.artifact)
    spec = TaskSpec(TEXT_CLASSIFICATION, SENTIMENT, problem_type)
    model = TaskModel("x", spec, runner.run, runner.input_names, runner.output_names, sentiment.artifact)
    from llmc.tasks.classify import classify

    theirs = pipeline("text-classification", sentiment, top_k=None, function_to_apply=function)(TEXTS)
    for mine, reference in zip(classify(model, TEXTS), theirs, strict=True):
        _close(mine, reference)


def test_rerank_a_cross_encoder_orders_by_its_logit(cross_encoder):
    ours = llmc.load(cross_encoder.artifact).rerank(QUERY, DOCUMENTS)
    logits = torch_logits(cross_encoder, [QUERY] * len(DOCUMENTS), DOCUMENTS)[:, 0]
    assert [i for i, _ in ours] == list(np.argsort(-logits, kind="stable"))
    np.testing.assert_allclose([s for _, s in ours], np.sort(1 / (1 + np.exp(-logits)))[::-1], atol=1e-5)


def test_rerank_scores_are_sentence_transformers_cross_encoder_scores(cross_encoder, tmp_path):
    """The scores CrossEncoder.predict gives the same weights (its default activation: one label,
    a sigmoid), in the order CrossEncoder.rank gives. sentence-transformers reads the directory
    as a CrossEncoder saved before its modules.json format (the fixture's modules.json is the
    minimal one llmc export reads)."""
    import shutil

    sentence_transformers = pytest.importorskip("sentence_transformers")
    plain = tmp_path / "plain"
    shutil.copytree(cross_encoder.source.parent.parent / "hf", plain)
    for name in ("modules.json", "config_sentence_transformers.json"):
        (plain / name).unlink()
    model = sentence_transformers.CrossEncoder(str(plain), device="cpu")
    reference = model.predict([(QUERY, d) for d in DOCUMENTS], convert_to_numpy=True)
    ours = llmc.load(cross_encoder.artifact).rerank(QUERY, DOCUMENTS)
    assert [i for i, _ in ours] == [r["corpus_id"] for r in model.rank(QUERY, DOCUMENTS)]
    np.testing.assert_allclose([ours_score for _, ours_score in sorted(ours)], reference, atol=1e-5)


@pytest.mark.parametrize("activation", ["Identity", "Tanh"])
def test_a_cross_encoder_saved_by_sentence_transformers_keeps_its_activation(cross_encoder, tmp_path, activation):
    """sentence-transformers 5 and later save a CrossEncoder's ``activation_fn`` in
    config_sentence_transformers.json: the export reads it there, so the scores are predict's."""
    import shutil

    import torch

    import llmc
    from llmc.export import export_pretrained

    sentence_transformers = pytest.importorskip("sentence_transformers")
    plain = tmp_path / "plain"
    shutil.copytree(cross_encoder.source.parent.parent / "hf", plain)
    for name in ("modules.json", "config_sentence_transformers.json"):
        (plain / name).unlink()
    model = sentence_transformers.CrossEncoder(str(plain), device="cpu", activation_fn=getattr(torch.nn, activation)())
    model.save(str(tmp_path / "saved"))
    export_pretrained(tmp_path / "saved", tmp_path / "onnx")
    built = llmc.build(tmp_path / "onnx" / "model.onnx", output=tmp_path / "artifact", cache=False, threads=1)
    assert built.manifest["task"]["score_activation"] == activation.lower()
    reference = model.predict([(QUERY, d) for d in DOCUMENTS], convert_to_numpy=True)
    ours = llmc.load(built.path).rerank(QUERY, DOCUMENTS)
    np.testing.assert_allclose([score for _, score in sorted(ours)], reference, atol=1e-5)


def test_rerank_an_embedding_model_orders_by_cosine(embedder):
    ours = llmc.load(embedder.artifact).rerank(QUERY, DOCUMENTS)
    vectors = torch_embedding(embedder, [QUERY, *DOCUMENTS], normalize=True)
    cosine = vectors[1:] @ vectors[0]
    assert [i for i, _ in ours] == list(np.argsort(-cosine, kind="stable"))
    np.testing.assert_allclose([s for _, s in ours], np.sort(cosine)[::-1], atol=1e-4)


def test_rerank_refuses_a_many_label_classifier(sentiment):
    with pytest.raises(llmc.LlmcError, match="3 labels is not a reranker"):
        llmc.load(sentiment.artifact).rerank(QUERY, DOCUMENTS)


def test_rerank_a_two_label_cross_encoder_by_its_positive_probability(sentiment):
    """A stand-in run whose "relevant" logit is the document's token count: longest first."""
    def run(feeds):
        width = feeds["input_ids"].shape[1]
        return {"logits": np.tile([[0.0, width / 4]], (feeds["input_ids"].shape[0], 1)).astype(np.float32)}

    spec = TaskSpec(TEXT_CLASSIFICATION, ("irrelevant", "relevant"), pair=True)
    model = TaskModel("x", spec, run, ["input_ids", "attention_mask"], ["logits"], sentiment.artifact)
    from llmc.tasks.classify import rerank

    ranking = rerank(model, "q", ["a", "a b c", "a b"], batch_size=1)
    assert [i for i, _ in ranking] == [1, 2, 0]
    assert ranking[0][1] == pytest.approx(1 / (1 + np.exp(-7 / 4)))  # [CLS] q [SEP] a b c [SEP]: 7 tokens


@pytest.mark.parametrize("model", ["cross_encoder", "embedder"])
def test_rerank_many_requests_in_one_pass_equals_each_alone(model, request):
    """What a server does with concurrent rerank requests: one pass, each request's own answer."""
    from llmc.tasks.classify import rerank_many
    from llmc.tasks.model import task_model

    runner = llmc.load(request.getfixturevalue(model).artifact)
    requests = [(QUERY, DOCUMENTS), ("a cat", DOCUMENTS[2:]), ("empty", []), (TEXTS[0], TEXTS)]
    merged = rerank_many(task_model(runner), requests)
    for (query, documents), answer in zip(requests, merged, strict=True):
        alone = runner.rerank(query, documents)
        assert [i for i, _ in answer] == [i for i, _ in alone]
        np.testing.assert_allclose([s for _, s in answer], [s for _, s in alone], atol=1e-6)


def test_raw_scores_are_the_logits(cross_encoder):
    """text-embeddings-inference's raw_scores: classify's and rerank's scores before the activation."""
    from llmc.tasks.classify import classify, rerank_many
    from llmc.tasks.model import task_model

    model = task_model(llmc.load(cross_encoder.artifact))
    logits = torch_logits(cross_encoder, [QUERY] * len(DOCUMENTS), DOCUMENTS)[:, 0]
    raw = classify(model, [QUERY] * len(DOCUMENTS), DOCUMENTS, raw=True)
    np.testing.assert_allclose([labels[0][1] for labels in raw], logits, atol=1e-4)
    (ranked,) = rerank_many(model, [(QUERY, DOCUMENTS)], raw=True)
    np.testing.assert_allclose([s for _, s in sorted(ranked)], logits, atol=1e-4)
