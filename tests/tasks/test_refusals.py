"""What an artifact cannot do is one line: the wrong task, no task record, a broken record."""

from __future__ import annotations

import numpy as np
import pytest

import llmc
from llmc.spec.task import SENTENCE_EMBEDDING, TaskSpec
from llmc.tasks.model import TaskModel


@pytest.mark.parametrize(
    ("fixture", "call", "message"),
    [
        ("sentiment", lambda r: r.embed("hi"), "a text-classification model cannot embed; read it with runner.classify"),
        ("embedder", lambda r: r.classify("hi"), "a sentence-embedding model cannot classify; read it with runner.embed"),
        ("ner", lambda r: r.answer("q?", "c"), "a token-classification model cannot answer questions"),
        ("qa", lambda r: r.extract("hi"), "a question-answering model cannot extract entities; read it with "
                                          "runner.answer"),
        ("qa", lambda r: r.rerank("q", ["d"]), "a question-answering model cannot rerank"),
    ],
)
def test_a_task_the_model_was_not_exported_for_is_one_line(request, fixture, call, message):
    model = request.getfixturevalue(fixture)
    with pytest.raises(llmc.LlmcError) as error:
        call(llmc.load(model.artifact))
    text = str(error.value)
    assert text.startswith(f"{model.artifact}: {message}") and "\n" not in text


def test_an_artifact_without_a_task_record_says_re_export(tiny_bert_legacy, tmp_path):
    llmc.build(tiny_bert_legacy, output=tmp_path / "old")
    runner = llmc.load(tmp_path / "old")
    assert runner.task is None
    with pytest.raises(llmc.LlmcError, match="records no task .*re-export it with `llmc export`"):
        runner.embed("hi")


def test_a_record_whose_outputs_the_model_lacks_says_re_export(sentiment):
    runner = llmc.load(sentiment.artifact)
    model = TaskModel("x", TaskSpec(SENTENCE_EMBEDDING), runner.run, runner.input_names, runner.output_names)
    with pytest.raises(llmc.LlmcError, match="no output 'sentence_embedding' .*re-export"):
        model.require("embed", SENTENCE_EMBEDDING)


def test_bad_arguments_are_one_line(sentiment, qa):
    runner = llmc.load(sentiment.artifact)
    for call, message in [
        (lambda: runner.classify([1, 2]), "texts: give a text or a list of texts"),
        (lambda: runner.classify(["a", "b", "c"], ["x", "y"]), "text_pair: give one text, or one per text"),
        (lambda: runner.classify("a", pairs=[("a", "b")]), "not both"),
        (lambda: runner.classify("a", top_k=0), "top_k must be at least 1"),
        (lambda: runner.classify("a", batch_size=0), "batch_size"),
        (lambda: llmc.load(qa.artifact).answer("", "context"), "not empty"),
    ]:
        with pytest.raises(llmc.LlmcError, match=message):
            call()


def test_the_spec_is_read_from_the_onnx_file_without_a_session(sentiment):
    """A TensorRT runner has no ONNX Runtime session: the record comes from model.onnx."""
    from llmc.spec.task import read_spec
    from llmc.tasks.model import metadata_of

    runner = llmc.load(sentiment.artifact)
    from_file = read_spec(metadata_of(object(), sentiment.artifact / "model.onnx"), "x")
    assert from_file == runner.task == sentiment.spec


def test_outputs_of_the_wrong_shape_are_one_line(ner):
    """A record that says token-classification over a graph whose logits are per text."""
    from llmc.spec.task import TOKEN_CLASSIFICATION
    from llmc.tasks.extract import extract

    def run(feeds):
        return {"logits": np.zeros((feeds["input_ids"].shape[0], 5), dtype=np.float32)}

    model = TaskModel("x", TaskSpec(TOKEN_CLASSIFICATION), run, ["input_ids", "attention_mask"], ["logits"], ner.artifact)
    with pytest.raises(llmc.LlmcError, match=r"x: its output 'logits' has shape \[1, 5\] .*\[batch, sequence, labels\]"):
        extract(model, ["hello"])
