"""answer against transformers' question-answering pipeline's span choice."""

from __future__ import annotations

import pytest

import llmc
from tests.tasks.reference import qa_answer

CASES = [
    ("Where does John live?", "John Smith lives in Paris. He moved there in 2019 from Los Angeles."),
    ("What did the committee decide?", "After a long debate, the committee decided to postpone the vote "
     "until the spring, citing unresolved budgetary questions."),
    ("Who?", "Ångström's unbelievably self-conscious colleagues, Müller and Zürich-born Xu, wrote it."),
]


@pytest.mark.parametrize(("question", "context"), CASES)
def test_answer_matches_the_question_answering_pipeline(qa, question, context):
    ours = llmc.load(qa.artifact).answer(question, context)
    theirs = qa_answer(qa, question, context)
    assert (ours["start"], ours["end"], ours["answer"]) == (theirs["start"], theirs["end"], theirs["answer"])
    assert ours["score"] == pytest.approx(theirs["score"], abs=1e-4)
    assert ours["answer"] == context[ours["start"] : ours["end"]]


def test_answer_max_answer_len_bounds_the_span(qa):
    question, context = CASES[1]
    ours = llmc.load(qa.artifact).answer(question, context, max_answer_len=2)
    theirs = qa_answer(qa, question, context, max_answer_len=2)
    assert (ours["start"], ours["end"]) == (theirs["start"], theirs["end"])


def test_answer_in_a_context_longer_than_a_window(qa):
    """A context over 384 tokens is read in overlapping windows; the best span of all wins."""
    context = " ".join(f"Sentence {i} says the river number {i} flows north past town {i * 7}." for i in range(60))
    question = "Which river flows past town 140?"
    runner = llmc.load(qa.artifact)
    assert len(runner._task_model().tokenizer.windows(question, context)) > 1
    ours = runner.answer(question, context)
    theirs = qa_answer(qa, question, context)
    assert (ours["start"], ours["end"], ours["answer"]) == (theirs["start"], theirs["end"], theirs["answer"])
    assert ours["score"] == pytest.approx(theirs["score"], abs=1e-4)


def test_an_answer_found_in_several_windows_sums_its_scores(qa):
    """A word repeated through a long context is the best span of several windows: the pipeline
    counts it once, with the sum of their scores, at its first place."""
    from llmc.tasks.answer import _characters, best_span

    context, question = " ".join(["Paris"] * 700), "What is flowing?"
    runner = llmc.load(qa.artifact)
    model = runner._task_model()
    windows = model.tokenizer.windows(question, context)
    rows = model.rows(windows, 8)
    spans = [best_span(w, r["start_logits"], r["end_logits"], 15) for w, r in zip(windows, rows, strict=True)]
    texts = [context[slice(*_characters(w, s[0], s[1]))] for w, s in zip(windows, spans, strict=True)]
    ours = runner.answer(question, context)
    assert texts.count(ours["answer"]) > 1 and ours["score"] > max(s[2] for s in spans)  # summed
    theirs = qa_answer(qa, question, context)
    assert (ours["start"], ours["end"], ours["answer"]) == (theirs["start"], theirs["end"], theirs["answer"])
    assert ours["score"] == pytest.approx(theirs["score"], abs=1e-4)
