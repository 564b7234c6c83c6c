"""``llmc predict`` through typer's runner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llmc.cli.main import app

runner = CliRunner()


def invoke(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def as_json(*args) -> dict:
    return json.loads(invoke(*args, "--json"))


def test_help_lists_predict():
    assert "predict" in invoke("--help")
    out = invoke("predict", "--help")
    for flag in ("--text", "--file", "--pair", "--question", "--top-k", "--json"):
        assert flag in out


def test_classify_prints_labels_with_scores(sentiment, tmp_path):
    out = invoke("predict", sentiment.artifact, "--text", "I loved it", "--top-k", "2")
    assert out.splitlines()[0] == '"I loved it"' and len(out.splitlines()) == 3
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\n\nsecond text\n")
    data = as_json("predict", sentiment.artifact, "--file", texts)
    assert data["task"] == "text-classification" and data["reading"] == "classify"
    assert [r["text"] for r in data["results"]] == ["first text", "second text"]
    assert {e["label"] for e in data["results"][0]["labels"]} == {"negative", "neutral", "positive"}


def test_pairs_and_reranking(cross_encoder):
    data = as_json("predict", cross_encoder.artifact, "--text", "a", "--text", "b", "--pair", "c")
    assert [r["pair"] for r in data["results"]] == ["c", "c"]
    data = as_json("predict", cross_encoder.artifact, "--question", "q", "--text", "a", "--text", "b")
    assert data["reading"] == "rerank" and sorted(r["index"] for r in data["results"]["ranking"]) == [0, 1]
    assert "1. " in invoke("predict", cross_encoder.artifact, "--question", "q", "--text", "a", "--text", "b")
    data = as_json("predict", cross_encoder.artifact, "--question", "q", "--text", "a", "--text", "b", "--top-k", "1")
    assert len(data["results"]["ranking"]) == 1  # the best document


def test_embeddings_show_size_and_first_values(embedder):
    out = invoke("predict", embedder.artifact, "--text", "hello")
    assert "64-d vector, norm 1.0000: [" in out
    data = as_json("predict", embedder.artifact, "--text", "hello")
    assert data["results"][0]["dimension"] == len(data["results"][0]["embedding"]) == 64


def test_entities_and_answers(ner, qa):
    data = as_json("predict", ner.artifact, "--text", "John Smith lives in Paris")
    assert data["reading"] == "extract" and all("entity_group" in e for e in data["results"][0]["entities"])
    invoke("predict", ner.artifact, "--text", "John Smith lives in Paris")
    context = "John Smith lives in Paris."
    data = as_json("predict", qa.artifact, "--question", "Where?", "--text", context)
    found = data["results"][0]
    assert found["answer"] == context[found["start"] : found["end"]]
    assert "answer " in invoke("predict", qa.artifact, "--question", "Where?", "--text", context)


@pytest.mark.parametrize(
    ("fixture", "args", "message"),
    [
        ("ner", ["--text", "a", "--question", "q"], "which answers no question"),
        ("embedder", ["--text", "a", "--pair", "b"], "which reads no text pairs"),
        ("qa", ["--text", "a"], "give --question"),
        ("sentiment", [], "give the text(s) to read"),
        ("sentiment", ["--text", "a", "--text", "b", "--text", "c", "--pair", "x", "--pair", "y"], "--pair: give one"),
        ("sentiment", ["--file", "missing.txt"], "--file missing.txt: no such file"),
        ("ner", ["--text", "a", "--top-k", "3"], "ranks no labels"),
        ("embedder", ["--text", "a", "--top-k", "2"], "drop --top-k"),
        ("qa", ["--text", "a", "--question", "q", "--top-k", "2"], "drop --top-k"),
        ("cross_encoder", ["--text", "a", "--question", "q", "--top-k", "0"], "--top-k 0: must be at least 1"),
    ],
)
def test_what_the_artifact_cannot_do_is_one_line(request, fixture, args, message):
    out = invoke("predict", request.getfixturevalue(fixture).artifact, *args, code=1)
    assert message in out and len(out.strip().splitlines()) == 1


def test_an_old_artifact_says_re_export(tiny_bert_legacy, tmp_path):
    import llmc

    llmc.build(tiny_bert_legacy, output=tmp_path / "old")
    out = invoke("predict", tmp_path / "old", "--text", "a", code=1)
    assert "records no task" in out and "llmc export" in out and len(out.strip().splitlines()) == 1
